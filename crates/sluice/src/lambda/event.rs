//! The Kinesis event as Lambda delivers it, read in one pass: each record's
//! base64 data is decoded while the JSON is read, into 1 MiB chunks shared
//! by the batch, so the event text is scanned once, the records are slices
//! of a few allocations, and no record is copied on the way.
//!
//! Read leniently on purpose: a record with bad base64, a value of the wrong
//! type or a missing field must reach dead-letter on its own, not fail the
//! decoding of its whole batch (which Lambda would retry until the record
//! expires, stalling the shard). The one exception is `data` that is a
//! number, a boolean, null or an object: it is read as bytes to skip a UTF-8
//! check of every record, and serde_json refuses those types there. Lambda
//! always sends a string; should it not, the invocation fails with the
//! reason and the event source mapping's bisecting and on-failure
//! destination take over.

use std::fmt;
use std::ops::Range;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use sluice_core::stream::PartitionKey;

/// A Kinesis event: its records in order.
#[derive(Debug, Default)]
pub struct KinesisBatch {
    pub records: Vec<InputRecord>,
}

/// One record of the event: what the router needs of it.
#[derive(Debug)]
pub struct InputRecord {
    /// Empty when the event had none.
    pub partition_key: PartitionKey,
    /// As the event spelled it; empty when it had none.
    pub sequence_number: String,
    /// The decoded data, or what is wrong with it.
    pub data: Result<Bytes, String>,
    /// Milliseconds since the Unix epoch; 0 when unknown.
    pub arrival_ms: i64,
}

/// Where decoded data goes: chunks of at least [`Buffer::CHUNK`] bytes, so
/// a growing batch is never copied to a larger allocation.
#[derive(Default)]
struct Buffer {
    full: Vec<Bytes>,
    current: Vec<u8>,
}

/// A decoded record's place in a [`Buffer`]: chunk and range.
type Place = (usize, Range<usize>);

impl Buffer {
    const CHUNK: usize = 1 << 20;

    /// Decodes base64 `text` into the buffer.
    fn decode(&mut self, text: &[u8]) -> Result<Place, &'static str> {
        let engine = &base64_simd::STANDARD;
        let room = engine.estimated_decoded_length(text.len());
        if self.current.capacity() - self.current.len() < room {
            let next = Vec::with_capacity(room.max(Self::CHUNK));
            let full = std::mem::replace(&mut self.current, next);
            if !full.is_empty() {
                self.full.push(Bytes::from(full));
            }
        }
        let start = self.current.len();
        match engine.decode_append(text, &mut self.current) {
            Ok(()) => Ok((self.full.len(), start..self.current.len())),
            Err(_) => {
                self.current.truncate(start);
                Err("data is not base64")
            }
        }
    }

    fn freeze(mut self) -> Vec<Bytes> {
        self.full.push(Bytes::from(self.current));
        self.full
    }
}

/// A record while the event is read.
#[derive(Default)]
struct Partial {
    partition_key: PartitionKey,
    sequence_number: String,
    data: Option<Result<Place, &'static str>>,
    arrival_ms: i64,
}

impl Partial {
    fn finish(self, chunks: &[Bytes]) -> InputRecord {
        let data = match self.data {
            Some(Ok((chunk, range))) => Ok(chunks[chunk].slice(range)),
            Some(Err(problem)) => Err(problem.to_owned()),
            None => Err("no data".to_owned()),
        };
        InputRecord {
            partition_key: self.partition_key,
            sequence_number: self.sequence_number,
            data,
            arrival_ms: self.arrival_ms,
        }
    }
}

/// Visitor methods for every shape of value but the wanted ones: the value
/// is read past and `$value` is the answer.
macro_rules! otherwise {
    ($ty:ty, $value:expr) => {
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<$ty, A::Error> {
            IgnoredAny.visit_seq(seq)?;
            Ok($value)
        }

        fn visit_f64<E: de::Error>(self, _: f64) -> Result<$ty, E> {
            Ok($value)
        }

        fn visit_i64<E: de::Error>(self, _: i64) -> Result<$ty, E> {
            Ok($value)
        }

        fn visit_u64<E: de::Error>(self, _: u64) -> Result<$ty, E> {
            Ok($value)
        }

        fn visit_bool<E: de::Error>(self, _: bool) -> Result<$ty, E> {
            Ok($value)
        }

        fn visit_unit<E: de::Error>(self) -> Result<$ty, E> {
            Ok($value)
        }
    };
}

impl<'de> Deserialize<'de> for KinesisBatch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(BatchVisitor)
    }
}

/// A key of the event's objects, read as bytes: no UTF-8 check and no
/// copy (a key read as a string would be copied to track its path).
struct Field<T>(T);

/// The keys an object of the event has, by name.
trait Fields: Sized {
    fn named(name: &[u8]) -> Self;
}

impl<'de, T: Fields> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_bytes(FieldVisitor(std::marker::PhantomData))
    }
}

struct FieldVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Fields> Visitor<'de> for FieldVisitor<T> {
    type Value = Field<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_bytes<E: de::Error>(self, name: &[u8]) -> Result<Field<T>, E> {
        Ok(Field(T::named(name)))
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Field<T>, E> {
        self.visit_bytes(name.as_bytes())
    }
}

enum BatchField {
    Records,
    Other,
}

impl Fields for BatchField {
    fn named(name: &[u8]) -> Self {
        match name {
            b"Records" => BatchField::Records,
            _ => BatchField::Other,
        }
    }
}

enum RecordField {
    Kinesis,
    Other,
}

impl Fields for RecordField {
    fn named(name: &[u8]) -> Self {
        match name {
            b"kinesis" => RecordField::Kinesis,
            _ => RecordField::Other,
        }
    }
}

enum KinesisField {
    PartitionKey,
    SequenceNumber,
    Data,
    ApproximateArrivalTimestamp,
    Other,
}

impl Fields for KinesisField {
    fn named(name: &[u8]) -> Self {
        match name {
            b"partitionKey" => KinesisField::PartitionKey,
            b"sequenceNumber" => KinesisField::SequenceNumber,
            b"data" => KinesisField::Data,
            b"approximateArrivalTimestamp" => KinesisField::ApproximateArrivalTimestamp,
            _ => KinesisField::Other,
        }
    }
}

struct BatchVisitor;

impl<'de> Visitor<'de> for BatchVisitor {
    type Value = KinesisBatch;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a Kinesis event: an object with \"Records\"")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KinesisBatch, A::Error> {
        let mut buffer = Buffer::default();
        let mut partials = Vec::new();
        while let Some(Field(field)) = map.next_key::<Field<BatchField>>()? {
            match field {
                BatchField::Records => {
                    partials = map.next_value_seed(RecordsSeed {
                        buffer: &mut buffer,
                    })?
                }
                BatchField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let chunks = buffer.freeze();
        Ok(KinesisBatch {
            records: partials.into_iter().map(|p| p.finish(&chunks)).collect(),
        })
    }
}

/// The `Records` array; data is decoded into `buffer`.
struct RecordsSeed<'b> {
    buffer: &'b mut Buffer,
}

impl<'de> DeserializeSeed<'de> for RecordsSeed<'_> {
    type Value = Vec<Partial>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RecordsSeed<'_> {
    type Value = Vec<Partial>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of Kinesis records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut records = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(record) = seq.next_element_seed(RecordSeed {
            buffer: &mut *self.buffer,
        })? {
            records.push(record);
        }
        Ok(records)
    }
}

/// One element of `Records`: only its `kinesis` object is read. Anything but
/// an object reads as a record with nothing in it (it goes to dead-letter).
struct RecordSeed<'b> {
    buffer: &'b mut Buffer,
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_> {
    type Value = Partial;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Partial, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_> {
    type Value = Partial;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a Kinesis record")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Partial, A::Error> {
        let mut partial = Partial::default();
        while let Some(Field(field)) = map.next_key::<Field<RecordField>>()? {
            match field {
                RecordField::Kinesis => {
                    partial = map.next_value_seed(KinesisSeed {
                        buffer: &mut *self.buffer,
                    })?
                }
                RecordField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(partial)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Partial, E> {
        Ok(Partial::default())
    }

    otherwise!(Partial, Partial::default());
}

/// A record's `kinesis` object.
struct KinesisSeed<'b> {
    buffer: &'b mut Buffer,
}

impl<'de> DeserializeSeed<'de> for KinesisSeed<'_> {
    type Value = Partial;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Partial, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KinesisSeed<'_> {
    type Value = Partial;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the kinesis object of a record")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Partial, A::Error> {
        let mut partial = Partial::default();
        while let Some(Field(field)) = map.next_key::<Field<KinesisField>>()? {
            match field {
                KinesisField::PartitionKey => {
                    partial.partition_key = map
                        .next_value::<Lenient<PartitionKey>>()?
                        .0
                        .unwrap_or_default()
                }
                KinesisField::SequenceNumber => {
                    partial.sequence_number =
                        map.next_value::<Lenient<String>>()?.0.unwrap_or_default()
                }
                KinesisField::Data => {
                    partial.data = Some(map.next_value_seed(DataSeed {
                        buffer: &mut *self.buffer,
                    })?)
                }
                KinesisField::ApproximateArrivalTimestamp => {
                    let seconds = map.next_value::<Lenient<f64>>()?.0;
                    partial.arrival_ms = seconds.map_or(0, |s| (s * 1000.0) as i64);
                }
                KinesisField::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(partial)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Partial, E> {
        Ok(Partial::default())
    }

    otherwise!(Partial, Partial::default());
}

/// A record's `data`: base64 decoded straight into the batch's buffer. The
/// text is taken as bytes, so it is not checked as UTF-8 first (base64 is
/// ASCII, and the decoder refuses anything else).
struct DataSeed<'b> {
    buffer: &'b mut Buffer,
}

impl<'de> DeserializeSeed<'de> for DataSeed<'_> {
    type Value = Result<Place, &'static str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_bytes(self)
    }
}

impl<'de> Visitor<'de> for DataSeed<'_> {
    type Value = Result<Place, &'static str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("base64 text")
    }

    fn visit_bytes<E: de::Error>(self, text: &[u8]) -> Result<Self::Value, E> {
        Ok(self.buffer.decode(text))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        self.visit_bytes(text.as_bytes())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        IgnoredAny.visit_map(map)?;
        Ok(Err("data is not a string"))
    }

    otherwise!(Self::Value, Err("data is not a string"));
}

/// A value of type `T`, or `None` when the event holds something else there.
struct Lenient<T>(Option<T>);

/// What [`Lenient`] can read: a string or a number.
trait Scalar: Sized {
    fn from_text(text: &str) -> Option<Self>;
    fn from_number(number: f64) -> Option<Self>;
}

impl Scalar for PartitionKey {
    fn from_text(text: &str) -> Option<Self> {
        Some(text.into())
    }
    fn from_number(_: f64) -> Option<Self> {
        None
    }
}

impl Scalar for String {
    fn from_text(text: &str) -> Option<Self> {
        Some(text.to_owned())
    }
    fn from_number(_: f64) -> Option<Self> {
        None
    }
}

impl Scalar for f64 {
    fn from_text(_: &str) -> Option<Self> {
        None
    }
    fn from_number(number: f64) -> Option<Self> {
        Some(number)
    }
}

impl<'de, T: Scalar> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(LenientVisitor(std::marker::PhantomData))
    }
}

struct LenientVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Scalar> Visitor<'de> for LenientVisitor<T> {
    type Value = Lenient<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or a number")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Lenient<T>, E> {
        Ok(Lenient(T::from_text(text)))
    }

    fn visit_f64<E: de::Error>(self, number: f64) -> Result<Lenient<T>, E> {
        Ok(Lenient(T::from_number(number)))
    }

    fn visit_i64<E: de::Error>(self, number: i64) -> Result<Lenient<T>, E> {
        Ok(Lenient(T::from_number(number as f64)))
    }

    fn visit_u64<E: de::Error>(self, number: u64) -> Result<Lenient<T>, E> {
        Ok(Lenient(T::from_number(number as f64)))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Lenient<T>, A::Error> {
        IgnoredAny.visit_map(map)?;
        Ok(Lenient(None))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Lenient<T>, A::Error> {
        IgnoredAny.visit_seq(seq)?;
        Ok(Lenient(None))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Lenient<T>, E> {
        Ok(Lenient(None))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Lenient<T>, E> {
        Ok(Lenient(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(json: &str) -> KinesisBatch {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn reads_records_and_decodes_their_data_into_one_buffer() {
        let batch = read(
            r#"{"Records":[
                {"eventID":"x","kinesis":{"kinesisSchemaVersion":"1.0","partitionKey":"k1",
                 "sequenceNumber":"49590","data":"aGVsbG8=","approximateArrivalTimestamp":1764000000.5}},
                {"kinesis":{"partitionKey":"k\u00e9","sequenceNumber":"49591","data":"d29ybGQ="}}
            ],"extra":{"nested":[1,2]}}"#,
        );
        assert_eq!(batch.records.len(), 2);
        let first = &batch.records[0];
        assert_eq!(first.partition_key, "k1");
        assert_eq!(first.sequence_number, "49590");
        assert_eq!(first.data.as_deref(), Ok(&b"hello"[..]));
        assert_eq!(first.arrival_ms, 1_764_000_000_500);
        assert_eq!(batch.records[1].partition_key, "k\u{e9}");
        assert_eq!(batch.records[1].data.as_deref(), Ok(&b"world"[..]));
    }

    #[test]
    fn a_bad_record_is_read_as_one_bad_record() {
        let batch = read(
            r#"{"Records":[
                {"kinesis":{"partitionKey":"k","sequenceNumber":"1","data":"not base64!"}},
                {"kinesis":{"partitionKey":7,"sequenceNumber":["2"],"data":[1],"approximateArrivalTimestamp":"soon"}},
                {"kinesis":{"partitionKey":"k","sequenceNumber":"3","data":["x"]}},
                {"kinesis":"text"},
                {"kinesis":{"partitionKey":"k","sequenceNumber":"4"}},
                42,
                {"kinesis":{"partitionKey":"k","sequenceNumber":"5","data":"b2s="}}
            ]}"#,
        );
        let data: Vec<_> = batch.records.iter().map(|r| r.data.clone()).collect();
        assert_eq!(data[0], Err("data is not base64".to_owned()));
        assert_eq!(data[1], Err("data is not a string".to_owned()));
        assert_eq!(batch.records[1].partition_key, "");
        assert_eq!(batch.records[1].sequence_number, "");
        assert_eq!(batch.records[1].arrival_ms, 0);
        assert_eq!(data[2], Err("data is not a string".to_owned()));
        assert_eq!(data[3], Err("no data".to_owned()));
        assert_eq!(data[4], Err("no data".to_owned()));
        assert_eq!(data[5], Err("no data".to_owned()));
        assert_eq!(data[6].as_deref(), Ok(&b"ok"[..]));
    }

    #[test]
    fn data_that_is_a_number_fails_the_event() {
        // Read as bytes, `data` must be a string (or an array, read past);
        // Lambda always sends a string. The invocation fails and Lambda's
        // bisecting and on-failure destination take over.
        let event =
            r#"{"Records":[{"kinesis":{"partitionKey":"k","sequenceNumber":"1","data":12}}]}"#;
        let reader = &mut serde_json::Deserializer::from_str(event);
        let error = serde_path_to_error::deserialize::<_, KinesisBatch>(reader).unwrap_err();
        assert!(
            error.to_string().contains("expected base64 text"),
            "{error}"
        );
    }

    #[test]
    fn an_event_that_is_not_an_object_is_an_error() {
        assert!(serde_json::from_str::<KinesisBatch>("[1,2]").is_err());
        assert!(serde_json::from_str::<KinesisBatch>(r#"{"Records":"#).is_err());
        assert!(read("{}").records.is_empty());
    }
}
