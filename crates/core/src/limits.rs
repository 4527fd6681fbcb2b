//! Service limits shared by every backend, named once (the Kinesis limits).

/// Most records in one PutRecords call.
pub const MAX_RECORDS_PER_PUT: usize = 500;
/// Most bytes (data plus partition keys) in one PutRecords call.
pub const MAX_BYTES_PER_PUT: usize = 5 * 1024 * 1024;
/// Most bytes of one record's data.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Longest partition key, in characters.
pub const MAX_PARTITION_KEY_CHARS: usize = 256;
/// Most records one GetRecords call returns.
pub const MAX_GET_RECORDS: usize = 10_000;
/// Most bytes one GetRecords call returns.
pub const MAX_GET_BYTES: usize = 10 * 1024 * 1024;
/// Bytes a record costs in a PutRecords call besides its data (its key).
pub fn put_entry_bytes(partition_key: &str, data_len: usize) -> usize {
    partition_key.len() + data_len
}
