//! The stream backend trait, shaped like Kinesis Data Streams: streams of
//! shards over hash-key ranges, PutRecords with a result per record, shard
//! iterators, and split/merge with parent/child lineage.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use bytes::Bytes;

use crate::retry::Retryable;
use crate::sequence::SequenceNumber;

/// A partition key, shared: a record's key is copied once when it is read,
/// however many outputs, calls and retries carry it afterwards. Its MD5
/// (the hash key that picks its shard) is worked out once too, when first
/// asked for: the producer and the embedded streams both need it.
#[derive(Clone, Default)]
pub struct PartitionKey(Arc<Key>);

#[derive(Default)]
struct Key {
    text: Box<str>,
    hash: OnceLock<u128>,
}

impl PartitionKey {
    pub fn as_str(&self) -> &str {
        &self.0.text
    }

    /// The hash key Kinesis gives this partition key.
    pub fn hash(&self) -> u128 {
        *self
            .0
            .hash
            .get_or_init(|| crate::hash::partition_hash(&self.0.text))
    }
}

impl Deref for PartitionKey {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for PartitionKey {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for PartitionKey {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<Box<str>> for PartitionKey {
    fn from(text: Box<str>) -> Self {
        Self(Arc::new(Key {
            text,
            hash: OnceLock::new(),
        }))
    }
}

impl From<&str> for PartitionKey {
    fn from(key: &str) -> Self {
        Self::from(Box::<str>::from(key))
    }
}

impl From<String> for PartitionKey {
    fn from(key: String) -> Self {
        Self::from(key.into_boxed_str())
    }
}

impl From<&String> for PartitionKey {
    fn from(key: &String) -> Self {
        Self::from(key.as_str())
    }
}

impl PartialEq for PartitionKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for PartitionKey {}

impl std::hash::Hash for PartitionKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialOrd for PartitionKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PartitionKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl PartialEq<str> for PartitionKey {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for PartitionKey {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for PartitionKey {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl fmt::Debug for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl serde::Serialize for PartitionKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for PartitionKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <std::borrow::Cow<'de, str>>::deserialize(deserializer).map(|key| Self::from(key.as_ref()))
    }
}

impl fmt::Display for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One record to put.
#[derive(Clone, Debug, PartialEq)]
pub struct PutRecord {
    pub partition_key: PartitionKey,
    /// Overrides the MD5 of the partition key when set.
    pub explicit_hash_key: Option<u128>,
    pub data: Bytes,
}

impl PutRecord {
    pub fn new(partition_key: impl Into<PartitionKey>, data: impl Into<Bytes>) -> Self {
        Self {
            partition_key: partition_key.into(),
            explicit_hash_key: None,
            data: data.into(),
        }
    }

    /// The hash key that picks this record's shard.
    pub fn hash_key(&self) -> u128 {
        self.explicit_hash_key
            .unwrap_or_else(|| self.partition_key.hash())
    }
}

/// Why one entry of a PutRecords call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PutFailure {
    /// ProvisionedThroughputExceededException: retry later.
    #[error("throughput exceeded: {0}")]
    Throttled(String),
    /// InternalFailure: retry.
    #[error("internal failure: {0}")]
    Internal(String),
    /// Anything else the service reported for the entry.
    #[error("{code}: {message}")]
    Other { code: String, message: String },
}

impl Retryable for PutFailure {
    fn is_retryable(&self) -> bool {
        matches!(self, PutFailure::Throttled(_) | PutFailure::Internal(_))
    }
}

/// The outcome of one entry of a PutRecords call, in request order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutResult {
    Ok {
        shard_id: String,
        sequence_number: SequenceNumber,
    },
    Failed(PutFailure),
}

/// A shard as ListShards describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    pub shard_id: String,
    pub parent_shard_id: Option<String>,
    pub adjacent_parent_shard_id: Option<String>,
    /// Inclusive hash-key range.
    pub hash_key_range: (u128, u128),
    pub starting_sequence_number: SequenceNumber,
    /// Set once the shard is closed by a split or merge.
    pub ending_sequence_number: Option<SequenceNumber>,
}

impl Shard {
    pub fn is_open(&self) -> bool {
        self.ending_sequence_number.is_none()
    }

    pub fn parents(&self) -> impl Iterator<Item = &str> {
        self.parent_shard_id
            .iter()
            .chain(self.adjacent_parent_shard_id.iter())
            .map(String::as_str)
    }
}

/// Where a shard iterator starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartPosition {
    TrimHorizon,
    Latest,
    AtSequence(SequenceNumber),
    AfterSequence(SequenceNumber),
    /// Milliseconds since the Unix epoch.
    AtTimestamp(i64),
}

/// A record read from a shard.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub sequence_number: SequenceNumber,
    pub partition_key: PartitionKey,
    pub data: Bytes,
    /// Milliseconds since the Unix epoch when the stream accepted it.
    pub arrival_ms: i64,
}

/// One GetRecords answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GetRecordsOutput {
    pub records: Vec<Record>,
    /// `None` once a closed shard has been read to its end.
    pub next_iterator: Option<String>,
    pub millis_behind_latest: Option<u64>,
    /// The children of a shard read to its end, when the backend knows them.
    pub child_shards: Vec<String>,
}

/// What DescribeStreamSummary says, plus a record count when the backend
/// can tell it cheaply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSummary {
    pub name: String,
    pub open_shards: usize,
    pub retention_hours: u32,
    pub record_count: Option<u64>,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StreamError {
    #[error("stream {0} not found")]
    StreamNotFound(String),
    #[error("shard {shard} of stream {stream} not found")]
    ShardNotFound { stream: String, shard: String },
    #[error("stream {0} already exists")]
    AlreadyExists(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("shard iterator expired or invalid: {0}")]
    ExpiredIterator(String),
    #[error("throttled: {0}")]
    Throttled(String),
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// Credentials missing or refused, or the action not allowed: fixing it
    /// takes a person, not a retry.
    #[error("access denied ({0}); check the AWS credentials and the IAM policy")]
    AccessDenied(String),
    #[error("storage error: {0}")]
    Storage(String),
}

impl Retryable for StreamError {
    fn is_retryable(&self) -> bool {
        matches!(
            self,
            StreamError::Throttled(_) | StreamError::Unavailable(_)
        )
    }
}

/// A Kinesis-shaped stream store. Every implementation passes the stream
/// conformance suite in `sluice-backends`.
#[async_trait]
pub trait StreamBackend: Send + Sync {
    /// Creates a stream of `shards` shards covering the hash-key space evenly.
    async fn create_stream(&self, name: &str, shards: u32) -> Result<(), StreamError>;
    async fn delete_stream(&self, name: &str) -> Result<(), StreamError>;
    async fn list_streams(&self) -> Result<Vec<String>, StreamError>;
    async fn describe_stream(&self, name: &str) -> Result<StreamSummary, StreamError>;
    /// All shards, open and closed, parents before children.
    async fn list_shards(&self, name: &str) -> Result<Vec<Shard>, StreamError>;
    /// Puts up to 500 records; the answer has one result per record, in order.
    async fn put_records(
        &self,
        name: &str,
        records: Vec<PutRecord>,
    ) -> Result<Vec<PutResult>, StreamError>;
    async fn get_shard_iterator(
        &self,
        name: &str,
        shard_id: &str,
        start: StartPosition,
    ) -> Result<String, StreamError>;
    async fn get_records(
        &self,
        iterator: &str,
        limit: usize,
    ) -> Result<GetRecordsOutput, StreamError>;
    /// Closes `shard_id` and opens two children split at `new_starting_hash_key`.
    async fn split_shard(
        &self,
        name: &str,
        shard_id: &str,
        new_starting_hash_key: u128,
    ) -> Result<(), StreamError>;
    /// Closes two adjacent shards and opens one child covering both.
    async fn merge_shards(
        &self,
        name: &str,
        shard_id: &str,
        adjacent_shard_id: &str,
    ) -> Result<(), StreamError>;

    /// The shortest time between two GetRecords calls on one shard that
    /// the backend allows (Kinesis: 5 calls per second per shard).
    fn min_read_interval(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

/// Checks a PutRecords request against the service limits, as Kinesis
/// rejects the whole call when one is broken.
pub fn validate_put(records: &[PutRecord]) -> Result<(), StreamError> {
    use crate::limits::*;
    if records.is_empty() || records.len() > MAX_RECORDS_PER_PUT {
        return Err(StreamError::InvalidArgument(format!(
            "a PutRecords call takes 1 to {MAX_RECORDS_PER_PUT} records, not {}",
            records.len()
        )));
    }
    let mut total = 0usize;
    for (index, record) in records.iter().enumerate() {
        let key_chars = record.partition_key.chars().count();
        if key_chars == 0 || key_chars > MAX_PARTITION_KEY_CHARS {
            return Err(StreamError::InvalidArgument(format!(
                "record {index}: partition key must be 1 to {MAX_PARTITION_KEY_CHARS} characters"
            )));
        }
        if record.data.len() > MAX_RECORD_BYTES {
            return Err(StreamError::InvalidArgument(format!(
                "record {index}: {} bytes is over the {MAX_RECORD_BYTES}-byte record limit",
                record.data.len()
            )));
        }
        total += put_entry_bytes(&record.partition_key, record.data.len());
    }
    if total > MAX_BYTES_PER_PUT {
        return Err(StreamError::InvalidArgument(format!(
            "{total} bytes is over the {MAX_BYTES_PER_PUT}-byte PutRecords limit"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_key_hashes_once_and_compares_as_its_text() {
        let key = PartitionKey::from("user-42");
        let copy = key.clone();
        assert_eq!(key.hash(), crate::hash::partition_hash("user-42"));
        assert_eq!(copy.hash(), key.hash(), "copies share the hash");
        assert!(Arc::ptr_eq(&key.0, &copy.0));
        let record = PutRecord::new(key.clone(), Bytes::from_static(b"x"));
        assert_eq!(record.hash_key(), key.hash());
        let explicit = PutRecord {
            explicit_hash_key: Some(7),
            ..record
        };
        assert_eq!(explicit.hash_key(), 7);

        let mut keys: Vec<PartitionKey> = ["b", "a", "c"].map(PartitionKey::from).to_vec();
        keys.sort();
        assert_eq!(keys, ["a", "b", "c"]);
        let set: std::collections::HashSet<PartitionKey> = keys.into_iter().collect();
        assert!(set.contains("b"), "found by its text");
        assert_eq!(format!("{key:?} {key}"), "\"user-42\" user-42");
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(serde_json::from_str::<PartitionKey>(&json).unwrap(), key);
    }
}
