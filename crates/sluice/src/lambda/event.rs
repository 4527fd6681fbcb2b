//! The Kinesis event as Lambda delivers it, read straight into stream
//! records: each record's base64 data is decoded into 1 MiB chunks shared by
//! the batch, keys and sequence numbers are copied once, and nothing else of
//! the event is kept.
//!
//! The event is read by a small scanner made for this one shape, straight
//! from the invocation's body (see [`super::invocation`]): fields it does not
//! need are skipped with a word-at-a-time or vectorised search for the end
//! of their strings, instead of being tokenised and visited field by field.
//! Routing costs a couple of microseconds a record, and reading the event
//! is a large part of that.
//!
//! Read leniently on purpose: a record with bad base64, a value of the wrong
//! type or a missing field must reach dead-letter on its own, not fail the
//! decoding of its whole batch (which Lambda would retry until the record
//! expires, stalling the shard). Only an event that is not JSON, not an
//! object, or whose `Records` is not an array fails the invocation.

use std::fmt;
use std::ops::Range;

use bytes::Bytes;

use sluice_core::stream::{PartitionKey, Record};
use sluice_core::SequenceNumber;

/// A Kinesis event: its records in order, those that decoded and those that
/// did not.
#[derive(Debug, Default)]
pub struct KinesisBatch {
    /// The records that decoded, in event order.
    pub records: Vec<Record>,
    /// Event position of each of `records`.
    positions: Vec<u32>,
    /// The records that did not, in event order.
    pub rejected: Vec<Rejected>,
}

/// A record of the event that could not be handed over whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// Position in the event.
    pub position: u32,
    /// Empty when the event had none.
    pub partition_key: PartitionKey,
    /// As the event spelled it; empty when it had none.
    pub sequence_number: String,
    /// The decoded data, when it decoded.
    pub data: Bytes,
    /// What is wrong.
    pub reason: String,
}

impl KinesisBatch {
    /// Records in the event, decoded or not.
    pub fn len(&self) -> usize {
        self.records.len() + self.rejected.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Event position of `records[index]`.
    pub fn position(&self, index: usize) -> u32 {
        self.positions[index]
    }

    /// The sequence number of the record at `position` in the event, as the
    /// event spelled it.
    pub fn sequence_number(&self, position: u32) -> &str {
        match self.positions.binary_search(&position) {
            Ok(index) => self.records[index].sequence_number.as_str(),
            Err(_) => self
                .rejected
                .iter()
                .find(|r| r.position == position)
                .map_or("", |r| r.sequence_number.as_str()),
        }
    }

    /// Reads an event from its JSON text. Lambda sends valid JSON; for text
    /// that is not, the answer is an error or some reading of it, never a
    /// panic or a hang.
    pub fn parse(json: &[u8]) -> Result<Self, EventError> {
        let mut scanner = Scanner { data: json, pos: 0 };
        let mut reader = Reader::default();
        scanner.object(|scanner, key| {
            if key.is(b"Records") {
                if scanner.peek() != Some(b'[') {
                    return Err(EventError::Malformed("\"Records\" is not an array"));
                }
                scanner.array(|scanner| reader.record(scanner))
            } else {
                scanner.skip_value()
            }
        })?;
        scanner.end()?;
        Ok(reader.finish())
    }
}

/// Why an invocation has no event to route.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("not a Kinesis event: {0}")]
    Malformed(&'static str),
    #[error("the invocation's event was not read: the runtime needs the ReadKinesisEvents layer")]
    NotRead,
}

impl EventError {
    pub(super) const NOT_READ: EventError = EventError::NotRead;
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

/// What the event holds, gathered while it is read.
#[derive(Default)]
struct Reader {
    buffer: Buffer,
    records: Vec<Partial>,
}

/// A record while the event is read.
#[derive(Default)]
struct Partial {
    partition_key: Option<PartitionKey>,
    sequence_number: Option<Result<SequenceNumber, String>>,
    data: Option<Result<Place, &'static str>>,
    arrival_ms: i64,
}

impl Reader {
    /// One element of `Records`: only its `kinesis` object is read. Anything
    /// but an object reads as a record with nothing in it (it goes to
    /// dead-letter).
    fn record(&mut self, scanner: &mut Scanner<'_>) -> Result<(), EventError> {
        let mut partial = Partial::default();
        if scanner.peek() == Some(b'{') {
            scanner.object(|scanner, key| {
                if key.is(b"kinesis") && scanner.peek() == Some(b'{') {
                    scanner.object(|scanner, key| self.field(scanner, key, &mut partial))
                } else {
                    scanner.skip_value()
                }
            })?;
        } else {
            scanner.skip_value()?;
        }
        self.records.push(partial);
        Ok(())
    }

    /// One field of a record's `kinesis` object.
    fn field(
        &mut self,
        scanner: &mut Scanner<'_>,
        key: Text<'_>,
        partial: &mut Partial,
    ) -> Result<(), EventError> {
        let name = key.bytes();
        match &*name {
            b"partitionKey" => {
                partial.partition_key = scanner.string_value()?.and_then(|text| {
                    let text = text.unescaped();
                    std::str::from_utf8(&text).ok().map(PartitionKey::from)
                })
            }
            b"sequenceNumber" => {
                partial.sequence_number = scanner.string_value()?.map(|text| {
                    let text = text.unescaped();
                    SequenceNumber::from_digits(&text)
                        .ok_or_else(|| String::from_utf8_lossy(&text).into_owned())
                })
            }
            b"data" => {
                partial.data = Some(match scanner.string_value()? {
                    Some(text) => self.buffer.decode(&text.unescaped()),
                    None => Err("data is not a string"),
                })
            }
            b"approximateArrivalTimestamp" => {
                partial.arrival_ms = scanner.number_value()?.map_or(0, |n| n.millis());
            }
            _ => scanner.skip_value()?,
        }
        Ok(())
    }

    fn finish(self) -> KinesisBatch {
        let chunks = self.buffer.freeze();
        let mut batch = KinesisBatch {
            records: Vec::with_capacity(self.records.len()),
            positions: Vec::with_capacity(self.records.len()),
            rejected: Vec::new(),
        };
        for (position, partial) in self.records.into_iter().enumerate() {
            let position = position as u32;
            let data = match partial.data {
                Some(Ok((chunk, range))) => Ok(chunks[chunk].slice(range)),
                Some(Err(problem)) => Err(problem.to_owned()),
                None => Err("no data".to_owned()),
            };
            let key = partial.partition_key.filter(|key| !key.is_empty());
            match (partial.sequence_number, key, data) {
                (Some(Ok(sequence_number)), Some(partition_key), Ok(data)) => {
                    batch.records.push(Record {
                        sequence_number,
                        partition_key,
                        data,
                        arrival_ms: partial.arrival_ms,
                    });
                    batch.positions.push(position);
                }
                (sequence, key, data) => {
                    let (sequence_number, reason) = match sequence {
                        None => (String::new(), Some("no sequence number".to_owned())),
                        Some(Ok(number)) => (number.as_str().to_owned(), None),
                        Some(Err(text)) => {
                            let reason =
                                format!("sequence number {text:?} is not a decimal number");
                            (text, Some(reason))
                        }
                    };
                    let (data, data_problem) = match data {
                        Ok(data) => (data, None),
                        Err(problem) => (Bytes::new(), Some(problem)),
                    };
                    let reason = reason
                        .or(data_problem)
                        .or(key.is_none().then(|| "no partition key".to_owned()))
                        .expect("a rejected record has a reason");
                    batch.rejected.push(Rejected {
                        position,
                        partition_key: key.unwrap_or_default(),
                        sequence_number,
                        data,
                        reason,
                    });
                }
            }
        }
        batch
    }
}

/// A JSON string's text between its quotes, as written.
#[derive(Clone, Copy)]
struct Text<'a> {
    raw: &'a [u8],
    escaped: bool,
}

impl<'a> Text<'a> {
    /// Whether the text is `name` (names are compared as written, escapes
    /// resolved when there are any).
    fn is(&self, name: &[u8]) -> bool {
        match self.escaped {
            false => self.raw == name,
            true => *self.unescaped() == *name,
        }
    }

    fn bytes(&self) -> std::borrow::Cow<'a, [u8]> {
        self.unescaped()
    }

    /// The text with its escapes resolved (serde_json resolves them when
    /// there are any; the fast case borrows).
    fn unescaped(&self) -> std::borrow::Cow<'a, [u8]> {
        if !self.escaped {
            return std::borrow::Cow::Borrowed(self.raw);
        }
        let mut quoted = Vec::with_capacity(self.raw.len() + 2);
        quoted.push(b'"');
        quoted.extend_from_slice(self.raw);
        quoted.push(b'"');
        match serde_json::from_slice::<String>(&quoted) {
            Ok(text) => std::borrow::Cow::Owned(text.into_bytes()),
            // Invalid escapes (only in text serde_json has not checked):
            // the text as written.
            Err(_) => std::borrow::Cow::Borrowed(self.raw),
        }
    }
}

impl fmt::Debug for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.raw))
    }
}

/// A JSON number of seconds since the Unix epoch, as written.
struct Seconds<'a>(&'a [u8]);

impl Seconds<'_> {
    /// Whole milliseconds (towards zero); 0 for what is not a number. The
    /// usual form, digits with up to three decimals after the point, is
    /// read exactly; others through f64.
    fn millis(&self) -> i64 {
        let text = self.0;
        let (whole, fraction) = match text.iter().position(|&b| b == b'.') {
            Some(point) => (&text[..point], &text[point + 1..]),
            None => (text, &b""[..]),
        };
        let digits = |part: &[u8]| !part.is_empty() && part.iter().all(u8::is_ascii_digit);
        if digits(whole) && whole.len() <= 12 && (fraction.is_empty() || digits(fraction)) {
            let number = |part: &[u8]| part.iter().fold(0i64, |n, &b| n * 10 + i64::from(b - b'0'));
            let mut millis = &fraction[..fraction.len().min(3)];
            let mut scale = 1000;
            let mut ms = number(whole) * 1000;
            while let [digit, rest @ ..] = millis {
                scale /= 10;
                ms += i64::from(digit - b'0') * scale;
                millis = rest;
            }
            return ms;
        }
        std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.parse::<f64>().ok())
            .map_or(0, |seconds| (seconds * 1000.0) as i64)
    }
}

/// Reads JSON text made of the values this event has. Every step checks
/// bounds; on text that is not valid JSON it errs or reads something, but
/// never panics and always ends.
struct Scanner<'a> {
    data: &'a [u8],
    pos: usize,
}

const MALFORMED: EventError = EventError::Malformed("malformed JSON");

impl<'a> Scanner<'a> {
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.data.get(self.pos) {
            self.pos += 1;
        }
    }

    /// The next byte after whitespace.
    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.data.get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> Result<(), EventError> {
        match self.peek() {
            Some(b) if b == byte => {
                self.pos += 1;
                Ok(())
            }
            _ => Err(MALFORMED),
        }
    }

    /// Only whitespace is left.
    fn end(&mut self) -> Result<(), EventError> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(MALFORMED),
        }
    }

    /// A string at the current position (its opening quote).
    fn string(&mut self) -> Result<Text<'a>, EventError> {
        self.eat(b'"')?;
        let start = self.pos;
        let mut escaped = false;
        loop {
            self.pos =
                sluice_core::json::quote_or_backslash(self.data, self.pos).ok_or(MALFORMED)?;
            if self.data[self.pos] == b'"' {
                let raw = &self.data[start..self.pos];
                self.pos += 1;
                return Ok(Text { raw, escaped });
            }
            // A backslash and the character it escapes (the four hex digits
            // of \u hold no quote or backslash).
            escaped = true;
            self.pos += 2;
            if self.pos > self.data.len() {
                return Err(MALFORMED);
            }
        }
    }

    /// A string value, or `None` (read past) for any other value.
    fn string_value(&mut self) -> Result<Option<Text<'a>>, EventError> {
        if self.peek() == Some(b'"') {
            self.string().map(Some)
        } else {
            self.skip_value().map(|()| None)
        }
    }

    /// A number value, or `None` (read past) for any other value.
    fn number_value(&mut self) -> Result<Option<Seconds<'a>>, EventError> {
        match self.peek() {
            Some(b'-' | b'0'..=b'9') => {
                let start = self.pos;
                self.skip_scalar();
                Ok(Some(Seconds(&self.data[start..self.pos])))
            }
            _ => self.skip_value().map(|()| None),
        }
    }

    /// A number, `true`, `false` or `null`: up to the next delimiter.
    fn skip_scalar(&mut self) {
        while let Some(b) = self.data.get(self.pos) {
            if matches!(
                b,
                b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r' | b'"' | b'{' | b'['
            ) {
                break;
            }
            self.pos += 1;
        }
    }

    /// Reads past one value of any kind, nested ones without recursion.
    fn skip_value(&mut self) -> Result<(), EventError> {
        let mut depth = 0usize;
        loop {
            match self.peek().ok_or(MALFORMED)? {
                b'"' => {
                    self.string()?;
                }
                b'{' | b'[' => {
                    depth += 1;
                    self.pos += 1;
                }
                b'}' | b']' => {
                    depth = depth.checked_sub(1).ok_or(MALFORMED)?;
                    self.pos += 1;
                }
                b',' | b':' if depth > 0 => self.pos += 1,
                b',' | b':' => return Err(MALFORMED),
                _ => {
                    let start = self.pos;
                    self.skip_scalar();
                    if self.pos == start {
                        return Err(MALFORMED);
                    }
                }
            }
            if depth == 0 {
                return Ok(());
            }
        }
    }

    /// An object: `member` reads each member's value, given its key.
    fn object<F>(&mut self, mut member: F) -> Result<(), EventError>
    where
        F: FnMut(&mut Self, Text<'a>) -> Result<(), EventError>,
    {
        self.eat(b'{')?;
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            let key = self.string()?;
            self.eat(b':')?;
            member(self, key)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(MALFORMED),
            }
        }
    }

    /// An array: `element` reads each element.
    fn array<F>(&mut self, mut element: F) -> Result<(), EventError>
    where
        F: FnMut(&mut Self) -> Result<(), EventError>,
    {
        self.eat(b'[')?;
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            element(self)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(MALFORMED),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(json: &str) -> KinesisBatch {
        KinesisBatch::parse(json.as_bytes()).unwrap()
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
        assert_eq!(batch.len(), 2);
        assert!(batch.rejected.is_empty());
        let first = &batch.records[0];
        assert_eq!(first.partition_key, "k1");
        assert_eq!(first.sequence_number.as_str(), "49590");
        assert_eq!(&first.data[..], b"hello");
        assert_eq!(first.arrival_ms, 1_764_000_000_500);
        assert_eq!(batch.records[1].partition_key, "k\u{e9}");
        assert_eq!(&batch.records[1].data[..], b"world");
        assert_eq!(batch.sequence_number(1), "49591");
    }

    #[test]
    fn escapes_in_names_and_values_are_resolved() {
        // JSON may escape any character; "\/" is a common one in base64.
        let batch = read(
            r#"{"Rec\u006frds":[{"kinesis":{"partition\u004bey":"a\"b\\c",
                "sequenceNumber":"4\u0039","data":"\/w=="}}]}"#,
        );
        assert!(batch.rejected.is_empty(), "{:?}", batch.rejected);
        let record = &batch.records[0];
        assert_eq!(record.partition_key, "a\"b\\c");
        assert_eq!(record.sequence_number.as_str(), "49");
        assert_eq!(&record.data[..], [0xff]);
    }

    #[test]
    fn a_bad_record_is_read_as_one_bad_record() {
        let batch = read(
            r#"{"Records":[
                {"kinesis":{"partitionKey":"k","sequenceNumber":"1","data":"not base64!"}},
                {"kinesis":{"partitionKey":7,"sequenceNumber":["2"],"data":[1],"approximateArrivalTimestamp":"soon"}},
                {"kinesis":{"partitionKey":"k","sequenceNumber":"3","data":{"x":1}}},
                {"kinesis":"text"},
                {"kinesis":{"partitionKey":"k","sequenceNumber":"4"}},
                42,
                {"kinesis":{"partitionKey":"k","sequenceNumber":"6","data":12}},
                {"kinesis":{"partitionKey":"","sequenceNumber":"7","data":"b2s="}},
                {"kinesis":{"partitionKey":"k","sequenceNumber":"x8","data":"b2s="}},
                {"kinesis":{"partitionKey":"k","sequenceNumber":"9","data":"b2s="}}
            ]}"#,
        );
        let reasons: Vec<(u32, &str)> = batch
            .rejected
            .iter()
            .map(|r| (r.position, r.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                (0, "data is not base64"),
                (1, "no sequence number"),
                (2, "data is not a string"),
                (3, "no sequence number"),
                (4, "no data"),
                (5, "no sequence number"),
                (6, "data is not a string"),
                (7, "no partition key"),
                (8, "sequence number \"x8\" is not a decimal number"),
            ]
        );
        assert_eq!(batch.rejected[0].sequence_number, "1");
        assert_eq!(batch.rejected[0].partition_key, "k");
        assert_eq!(batch.rejected[1].partition_key, "");
        assert_eq!(batch.rejected[7].data, Bytes::from_static(b"ok"));
        assert_eq!(batch.sequence_number(8), "x8");
        assert_eq!(batch.records.len(), 1);
        assert_eq!(&batch.records[0].data[..], b"ok");
        assert_eq!(batch.position(0), 9);
        assert_eq!(batch.sequence_number(9), "9");
    }

    #[test]
    fn an_event_that_is_not_an_object_is_an_error() {
        for text in [
            "[1,2]",
            r#"{"Records":"#,
            r#"{"Records":{}}"#,
            r#"{"Records":[] x"#,
        ] {
            assert!(KinesisBatch::parse(text.as_bytes()).is_err(), "{text}");
        }
        assert!(read("{}").is_empty());
        assert!(read(r#"{"Records":[]}"#).is_empty());
    }

    #[test]
    fn arrival_times_are_read_to_the_millisecond() {
        let cases: [(&[u8], i64); 8] = [
            (b"1764000000.5", 1_764_000_000_500),
            (b"1764000000.987654", 1_764_000_000_987),
            (b"1764000000", 1_764_000_000_000),
            (b"1764000000.05", 1_764_000_000_050),
            (b"1.7640000005e9", 1_764_000_000_500),
            (b"-1.5", -1_500),
            (b"-", 0),
            (b"x", 0),
        ];
        for (text, millis) in cases {
            assert_eq!(
                Seconds(text).millis(),
                millis,
                "{}",
                String::from_utf8_lossy(text)
            );
        }
    }

    /// Bytes that are not valid JSON never make the scanner panic or loop.
    #[test]
    fn the_scanner_ends_on_any_text() {
        let samples: [&[u8]; 12] = [
            b"",
            b"{",
            b"{\"Records\":[",
            b"{\"Records\":[{\"kinesis\":{\"data\":\"\\",
            b"{\"Records\":[{\"kinesis\":{\"data\":\"abc",
            b"{\"Records\":[}}}]]]",
            b"{\"Records\":[{\"kinesis\":{\"approximateArrivalTimestamp\":-}}]}",
            b"{\"a\":::}",
            b"{\"a\":tru",
            b"\"\\u12",
            b"{\"Records\":[{\"kinesis\":{\"partitionKey\":\"\xff\xfe\",\"sequenceNumber\":\"1\",\"data\":\"\"}}]}",
            b"]]]]",
        ];
        for sample in samples {
            let _ = KinesisBatch::parse(sample);
        }
    }
}
