//! The Kinesis Producer Library's aggregated record format, byte for byte.
//!
//! One Kinesis record can carry many user records:
//!
//! ```text
//! F3 89 9A C2 | protobuf AggregatedRecord | MD5 of the protobuf (16 bytes)
//! ```
//!
//! ```text
//! message AggregatedRecord {
//!   repeated string partition_key_table     = 1;
//!   repeated string explicit_hash_key_table = 2;
//!   repeated Record records                 = 3;
//! }
//! message Record {
//!   required uint64 partition_key_index     = 1;
//!   optional uint64 explicit_hash_key_index = 2;
//!   required bytes  data                    = 3;
//!   repeated Tag    tags                    = 4;   // read past, never written
//! }
//! ```
//!
//! As the KPL and KCL agree, a record without the magic, too short to hold
//! one, or whose MD5 does not match is a plain record. A record that passes
//! those checks but does not decode is corrupt: [`deaggregate`] says so
//! rather than guessing.
//!
//! Decoding is zero-copy: each user record's data is a slice of the Kinesis
//! record's bytes.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use md5::{Digest, Md5};

use crate::stream::PartitionKey;

/// The first four bytes of every aggregated record.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
const DIGEST_LEN: usize = 16;
/// Magic and digest: what an aggregate costs beyond its protobuf.
pub const OVERHEAD: usize = MAGIC.len() + DIGEST_LEN;

/// One user record inside an aggregate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    pub partition_key: PartitionKey,
    /// A decimal hash key, when the producer chose one.
    pub explicit_hash_key: Option<String>,
    pub data: Bytes,
}

/// Why a record that carries the magic and a matching digest is unreadable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("corrupt aggregated record: {0}")]
pub struct AggregateError(pub String);

fn corrupt(what: impl Into<String>) -> AggregateError {
    AggregateError(what.into())
}

/// True when `data` is framed as an aggregate (magic, room for a digest, and
/// a matching digest). Costs one MD5 over the record when the magic is there.
pub fn is_aggregate(data: &[u8]) -> bool {
    protobuf_of(data).is_some()
}

/// The protobuf part of an aggregate, when the framing and digest check out.
fn protobuf_of(data: &[u8]) -> Option<&[u8]> {
    if data.len() < OVERHEAD || data[..MAGIC.len()] != MAGIC {
        return None;
    }
    let (body, digest) = data[MAGIC.len()..].split_at(data.len() - OVERHEAD);
    (Md5::digest(body).as_slice() == digest).then_some(body)
}

/// The user records of an aggregated record; `Ok(None)` when `data` is a
/// plain record (no magic, too short, or a digest that does not match).
pub fn deaggregate(data: &Bytes) -> Result<Option<Vec<UserRecord>>, AggregateError> {
    let Some(body) = protobuf_of(data) else {
        return Ok(None);
    };
    let offset = MAGIC.len();
    let body = data.slice(offset..offset + body.len());
    let mut partition_keys = Vec::new();
    let mut hash_keys = Vec::new();
    // (partition key index, hash key index, data) in order.
    let mut entries = Vec::new();
    let mut reader = Reader::new(&body);
    while let Some((field, wire)) = reader.key()? {
        match (field, wire) {
            (1, LEN) => {
                partition_keys.push(PartitionKey::from(reader.string("partition key table")?))
            }
            (2, LEN) => hash_keys.push(reader.string("explicit hash key table")?),
            (3, LEN) => {
                let (start, end) = reader.bytes_range()?;
                entries.push(read_record(&body, start, end)?);
            }
            (_, wire) => reader.skip(wire)?,
        }
    }
    let mut records = Vec::with_capacity(entries.len());
    for (index, (pk, ehk, data)) in entries.into_iter().enumerate() {
        let partition_key = usize::try_from(pk)
            .ok()
            .and_then(|i| partition_keys.get(i))
            .ok_or_else(|| {
                corrupt(format!(
                    "record {index}: partition key index {pk} outside a table of {}",
                    partition_keys.len()
                ))
            })?
            .clone();
        let explicit_hash_key = match ehk {
            None => None,
            Some(i) => Some(
                usize::try_from(i)
                    .ok()
                    .and_then(|i| hash_keys.get(i))
                    .ok_or_else(|| {
                        corrupt(format!(
                            "record {index}: explicit hash key index {i} outside a table of {}",
                            hash_keys.len()
                        ))
                    })?
                    .clone(),
            ),
        };
        records.push(UserRecord {
            partition_key,
            explicit_hash_key,
            data,
        });
    }
    Ok(Some(records))
}

/// Decodes one `Record` message held in `body[start..end]`.
fn read_record(
    body: &Bytes,
    start: usize,
    end: usize,
) -> Result<(u64, Option<u64>, Bytes), AggregateError> {
    let message = &body[start..end];
    let mut reader = Reader::new(message);
    let (mut pk, mut ehk, mut data) = (None, None, None);
    while let Some((field, wire)) = reader.key()? {
        match (field, wire) {
            (1, VARINT) => pk = Some(reader.varint()?),
            (2, VARINT) => ehk = Some(reader.varint()?),
            (3, LEN) => {
                let (s, e) = reader.bytes_range()?;
                data = Some(body.slice(start + s..start + e));
            }
            (_, wire) => reader.skip(wire)?,
        }
    }
    Ok((
        pk.ok_or_else(|| corrupt("a record without a partition key index"))?,
        ehk,
        data.ok_or_else(|| corrupt("a record without data"))?,
    ))
}

const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const I32: u8 = 5;

/// A protobuf wire-format reader over a byte slice.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, AggregateError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| corrupt("truncated varint"))?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(corrupt("varint longer than 10 bytes"))
    }

    /// The next field number and wire type, or `None` at the end.
    fn key(&mut self) -> Result<Option<(u64, u8)>, AggregateError> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 {
            return Err(corrupt("field number 0"));
        }
        Ok(Some((field, (key & 7) as u8)))
    }

    /// The range of the next length-delimited value, relative to the buffer.
    fn bytes_range(&mut self) -> Result<(usize, usize), AggregateError> {
        let len = self.varint()?;
        let start = self.pos;
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| start.checked_add(len))
            .filter(|end| *end <= self.buf.len())
            .ok_or_else(|| corrupt("a length past the end of the record"))?;
        self.pos = end;
        Ok((start, end))
    }

    fn string(&mut self, what: &str) -> Result<String, AggregateError> {
        let (start, end) = self.bytes_range()?;
        std::str::from_utf8(&self.buf[start..end])
            .map(str::to_owned)
            .map_err(|_| corrupt(format!("{what}: not UTF-8")))
    }

    fn skip(&mut self, wire: u8) -> Result<(), AggregateError> {
        let width = match wire {
            VARINT => return self.varint().map(drop),
            LEN => return self.bytes_range().map(drop),
            I64 => 8,
            I32 => 4,
            other => return Err(corrupt(format!("unsupported wire type {other}"))),
        };
        if self.pos + width > self.buf.len() {
            return Err(corrupt("truncated fixed-width field"));
        }
        self.pos += width;
        Ok(())
    }
}

fn varint_len(value: u64) -> usize {
    // 1 byte per 7 bits, at least one.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(out: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

/// Size of a length-delimited field (field numbers here fit one key byte).
fn len_field(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// Builds one aggregated record from user records, knowing its exact encoded
/// size at every step so a caller can stop before a limit.
#[derive(Default)]
pub struct Aggregator {
    partition_keys: Vec<String>,
    partition_index: HashMap<String, u64>,
    hash_keys: Vec<String>,
    hash_index: HashMap<String, u64>,
    records: Vec<(u64, Option<u64>, Bytes)>,
    /// Encoded protobuf size so far.
    size: usize,
}

impl Aggregator {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Bytes of the finished aggregate (magic, protobuf and digest).
    pub fn encoded_len(&self) -> usize {
        OVERHEAD + self.size
    }

    /// What the aggregate's size would grow by with this record.
    pub fn growth(
        &self,
        partition_key: &str,
        explicit_hash_key: Option<&str>,
        data_len: usize,
    ) -> usize {
        let mut growth = 0;
        let pk_index = match self.partition_index.get(partition_key) {
            Some(i) => *i,
            None => {
                growth += len_field(partition_key.len());
                self.partition_keys.len() as u64
            }
        };
        let mut record = 1 + varint_len(pk_index) + len_field(data_len);
        if let Some(ehk) = explicit_hash_key {
            let index = match self.hash_index.get(ehk) {
                Some(i) => *i,
                None => {
                    growth += len_field(ehk.len());
                    self.hash_keys.len() as u64
                }
            };
            record += 1 + varint_len(index);
        }
        growth + len_field(record)
    }

    /// Adds a user record; order is kept.
    pub fn push(&mut self, partition_key: &str, explicit_hash_key: Option<&str>, data: Bytes) {
        self.size += self.growth(partition_key, explicit_hash_key, data.len());
        let pk = match self.partition_index.get(partition_key) {
            Some(i) => *i,
            None => {
                let i = self.partition_keys.len() as u64;
                self.partition_keys.push(partition_key.to_owned());
                self.partition_index.insert(partition_key.to_owned(), i);
                i
            }
        };
        let ehk = explicit_hash_key.map(|ehk| match self.hash_index.get(ehk) {
            Some(i) => *i,
            None => {
                let i = self.hash_keys.len() as u64;
                self.hash_keys.push(ehk.to_owned());
                self.hash_index.insert(ehk.to_owned(), i);
                i
            }
        });
        self.records.push((pk, ehk, data));
    }

    /// The partition key of the first record: the aggregate's own key, as
    /// the KPL does it.
    pub fn first_partition_key(&self) -> Option<&str> {
        let (pk, _, _) = self.records.first()?;
        self.partition_keys.get(*pk as usize).map(String::as_str)
    }

    /// Encodes the aggregate and empties the aggregator.
    pub fn finish(&mut self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        out.put_slice(&MAGIC);
        for key in &self.partition_keys {
            out.put_u8(1 << 3 | LEN);
            put_varint(&mut out, key.len() as u64);
            out.put_slice(key.as_bytes());
        }
        for key in &self.hash_keys {
            out.put_u8(2 << 3 | LEN);
            put_varint(&mut out, key.len() as u64);
            out.put_slice(key.as_bytes());
        }
        for (pk, ehk, data) in &self.records {
            let mut len = 1 + varint_len(*pk) + len_field(data.len());
            if let Some(ehk) = ehk {
                len += 1 + varint_len(*ehk);
            }
            out.put_u8(3 << 3 | LEN);
            put_varint(&mut out, len as u64);
            out.put_u8(1 << 3 | VARINT);
            put_varint(&mut out, *pk);
            if let Some(ehk) = ehk {
                out.put_u8(2 << 3 | VARINT);
                put_varint(&mut out, *ehk);
            }
            out.put_u8(3 << 3 | LEN);
            put_varint(&mut out, data.len() as u64);
            out.put_slice(data);
        }
        let digest = Md5::digest(&out[MAGIC.len()..]);
        out.put_slice(&digest);
        debug_assert_eq!(out.len(), self.encoded_len());
        *self = Self::default();
        out.freeze()
    }
}

#[cfg(test)]
mod tests;
