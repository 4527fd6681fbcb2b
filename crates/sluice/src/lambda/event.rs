//! The Kinesis event as Lambda delivers it, read straight into stream
//! records: each record's base64 data is decoded into one buffer for the
//! whole batch (taken back for the next event by [`EventReader`]), keys and
//! sequence numbers are copied once, and nothing else of the event is kept.
//!
//! The event is read by a small scanner made for this one shape, straight
//! from the invocation's body (see [`super::invocation`]): fields it does not
//! need are skipped with a word-at-a-time or vectorised search for the end
//! of their strings, instead of being tokenised and visited field by field.
//! Once two records agree, the rest are read by their shape (see
//! [`Shape`]). Routing costs a couple of microseconds a record, and reading
//! the event is a large part of that.
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
#[derive(Debug, Default, PartialEq)]
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
        EventReader::default().read(json)
    }

    /// [`KinesisBatch::parse`] without learning the records' shape: every
    /// record read field by field. Slower; the answer `parse` must give.
    pub fn parse_field_by_field(json: &[u8]) -> Result<Self, EventError> {
        let mut reader = Reader::new(json, Vec::new());
        reader.shapes = false;
        reader.event()?;
        Ok(reader.finish().0)
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

/// Reads the event: the scanner's position, the records so far and their
/// decoded data.
struct Reader<'a> {
    scanner: Scanner<'a>,
    /// Every record's decoded data, back to back. Base64 is 4/3 of the bytes
    /// it stands for, so the data never outgrows the capacity taken at the
    /// start: nothing is copied as the batch grows.
    decoded: Vec<u8>,
    batch: KinesisBatch,
    /// Where the data of each of `batch.records` lies in `decoded`.
    spans: Vec<Range<usize>>,
    /// The same for `batch.rejected` (empty when it did not decode).
    rejected_spans: Vec<Range<usize>>,
    /// Position in the event of the next record.
    position: u32,
    /// The first records as read field by field, to learn their shape from.
    learnt: Vec<(Range<usize>, Vec<Hole>)>,
    /// The shape of the records, once learnt.
    shape: Option<Shape>,
    /// Whether to learn shapes at all (tests compare both ways).
    shapes: bool,
}

/// The fields of one record while it is read.
#[derive(Default)]
struct Fields {
    partition_key: Option<PartitionKey>,
    sequence_number: Option<Result<SequenceNumber, String>>,
    data: Option<Result<Range<usize>, &'static str>>,
    arrival_ms: i64,
}

/// The fields of a record the router reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    PartitionKey,
    SequenceNumber,
    Data,
    Arrival,
}

/// Where a record read field by field has a value: one of the [`Field`]s,
/// or one read past.
#[derive(Debug)]
struct Hole {
    span: Range<usize>,
    field: Option<Field>,
}

/// The shape of the event's records, learnt from its first two: Lambda
/// writes every record of a batch alike, the same keys in the same order
/// and most values the same (event source, region, stream ARN, schema
/// version). Reading a record of that shape compares the parts that are
/// the same with one memory comparison each and reads only the values that
/// vary, instead of finding where each key and value ends; the answer is
/// the one reading field by field gives, and a record of any other shape is
/// read field by field.
#[derive(Debug)]
struct Shape {
    segments: Vec<Segment>,
}

#[derive(Debug)]
enum Segment {
    /// Bytes as they are in the second record (a range of the event).
    Literal(Range<usize>),
    /// A string read past.
    SkipString,
    /// A number read past.
    SkipNumber,
    /// A value taken.
    Field(Field),
}

impl Shape {
    /// The shape two records share, if they do: the same text around the
    /// same holes. A value read past that is the same in both becomes part
    /// of the literal text.
    fn learn(
        data: &[u8],
        (first, first_holes): &(Range<usize>, Vec<Hole>),
        (second, second_holes): &(Range<usize>, Vec<Hole>),
    ) -> Option<Shape> {
        if first_holes.len() != second_holes.len() {
            return None;
        }
        let mut segments = Vec::new();
        let mut literal_from = second.start;
        let (mut at_first, mut at_second) = (first.start, second.start);
        for (a, b) in first_holes.iter().zip(second_holes) {
            if a.field != b.field || data[at_first..a.span.start] != data[at_second..b.span.start] {
                return None;
            }
            (at_first, at_second) = (a.span.end, b.span.end);
            if a.field.is_none() && data[a.span.clone()] == data[b.span.clone()] {
                continue;
            }
            // A value read past is read past in every record only where any
            // value would be (it could be a record, or its `kinesis`, which
            // are read when they are objects): so only strings and numbers
            // vary, and a record matches only with the same kind there.
            let segment = match (b.field, data.get(b.span.start)) {
                (Some(field), _) => Segment::Field(field),
                (None, Some(b'"')) => Segment::SkipString,
                (None, Some(b'-' | b'0'..=b'9')) => Segment::SkipNumber,
                (None, _) => return None,
            };
            if literal_from < b.span.start {
                segments.push(Segment::Literal(literal_from..b.span.start));
            }
            segments.push(segment);
            literal_from = b.span.end;
        }
        if data[at_first..first.end] != data[at_second..second.end] {
            return None;
        }
        if literal_from < second.end {
            segments.push(Segment::Literal(literal_from..second.end));
        }
        Some(Shape { segments })
    }
}

impl<'a> Reader<'a> {
    /// A reader of `json` that decodes data into `decoded` (emptied), or
    /// into a new buffer when that one cannot hold all of it.
    fn new(json: &'a [u8], mut decoded: Vec<u8>) -> Self {
        let capacity = json.len() / 4 * 3 + 3;
        decoded.clear();
        if decoded.capacity() < capacity {
            // Fresh rather than grown: the old bytes need no copy.
            decoded = Vec::with_capacity(capacity);
        }
        Self {
            scanner: Scanner { data: json, pos: 0 },
            decoded,
            batch: KinesisBatch::default(),
            spans: Vec::new(),
            rejected_spans: Vec::new(),
            position: 0,
            learnt: Vec::new(),
            shape: None,
            shapes: true,
        }
    }

    /// The event object; only its `Records` are read.
    fn event(&mut self) -> Result<(), EventError> {
        self.scanner.eat(b'{')?;
        if !self.scanner.close(b'}') {
            loop {
                let key = self.scanner.string()?;
                self.scanner.eat(b':')?;
                if key.is(b"Records") {
                    self.records()?;
                } else {
                    self.scanner.skip_value()?;
                }
                if !self.scanner.more(b'}')? {
                    break;
                }
            }
        }
        self.scanner.end()
    }

    fn records(&mut self) -> Result<(), EventError> {
        if self.scanner.peek() != Some(b'[') {
            return Err(EventError::Malformed("\"Records\" is not an array"));
        }
        self.scanner.pos += 1;
        if self.scanner.close(b']') {
            return Ok(());
        }
        let room = self.scanner.data.len() / 1024;
        self.batch.records.reserve(room);
        self.batch.positions.reserve(room);
        self.spans.reserve(room);
        loop {
            self.record()?;
            if !self.scanner.more(b']')? {
                return Ok(());
            }
        }
    }

    /// One element of `Records`: only its `kinesis` object is read. Anything
    /// but an object reads as a record with nothing in it (it goes to
    /// dead-letter). Once the shape of the records is known, a record of that
    /// shape is read by it; any other, field by field.
    fn record(&mut self) -> Result<(), EventError> {
        self.scanner.skip_ws();
        let start = self.scanner.pos;
        if let Some(shape) = self.shape.take() {
            let fields = self.read_shaped(&shape);
            self.shape = Some(shape);
            if let Some(fields) = fields {
                self.push(fields);
                return Ok(());
            }
            self.scanner.pos = start;
        }
        let mut holes =
            (self.shapes && self.shape.is_none() && self.learnt.len() < 2).then(Vec::new);
        let mut fields = Fields::default();
        if self.scanner.peek() == Some(b'{') {
            self.scanner.pos += 1;
            if !self.scanner.close(b'}') {
                loop {
                    let key = self.scanner.string()?;
                    self.scanner.eat(b':')?;
                    if key.is(b"kinesis") && self.scanner.peek() == Some(b'{') {
                        self.kinesis(&mut fields, holes.as_mut())?;
                    } else {
                        self.skip(holes.as_mut())?;
                    }
                    if !self.scanner.more(b'}')? {
                        break;
                    }
                }
            }
        } else {
            self.skip(holes.as_mut())?;
        }
        self.push(fields);
        if let Some(holes) = holes {
            self.learnt.push((start..self.scanner.pos, holes));
            if let [first, second] = &self.learnt[..] {
                self.shape = Shape::learn(self.scanner.data, first, second);
            }
        }
        Ok(())
    }

    /// Reads past a value nothing is taken from, noting where it was.
    fn skip(&mut self, holes: Option<&mut Vec<Hole>>) -> Result<(), EventError> {
        self.scanner.skip_ws();
        let start = self.scanner.pos;
        self.scanner.skip_value()?;
        if let Some(holes) = holes {
            holes.push(Hole {
                span: start..self.scanner.pos,
                field: None,
            });
        }
        Ok(())
    }

    /// A record's `kinesis` object (at its opening brace).
    fn kinesis(
        &mut self,
        fields: &mut Fields,
        mut holes: Option<&mut Vec<Hole>>,
    ) -> Result<(), EventError> {
        self.scanner.pos += 1;
        if self.scanner.close(b'}') {
            return Ok(());
        }
        loop {
            let key = self.scanner.string()?;
            self.scanner.eat(b':')?;
            let field = match &*key.unescaped() {
                b"partitionKey" => Some(Field::PartitionKey),
                b"sequenceNumber" => Some(Field::SequenceNumber),
                b"data" => Some(Field::Data),
                b"approximateArrivalTimestamp" => Some(Field::Arrival),
                _ => None,
            };
            match field {
                Some(field) => {
                    self.scanner.skip_ws();
                    let start = self.scanner.pos;
                    self.field(field, fields)?;
                    if let Some(holes) = holes.as_mut() {
                        holes.push(Hole {
                            span: start..self.scanner.pos,
                            field: Some(field),
                        });
                    }
                }
                None => self.skip(holes.as_deref_mut())?,
            }
            if !self.scanner.more(b'}')? {
                return Ok(());
            }
        }
    }

    /// The value of one field of a record's `kinesis` object.
    fn field(&mut self, field: Field, fields: &mut Fields) -> Result<(), EventError> {
        match field {
            Field::PartitionKey => {
                fields.partition_key = self.scanner.string_value()?.and_then(|text| {
                    std::str::from_utf8(&text.unescaped())
                        .ok()
                        .map(PartitionKey::from)
                })
            }
            Field::SequenceNumber => {
                fields.sequence_number = self.scanner.string_value()?.map(|text| {
                    let text = text.unescaped();
                    SequenceNumber::from_digits(&text)
                        .ok_or_else(|| String::from_utf8_lossy(&text).into_owned())
                })
            }
            Field::Data => {
                fields.data = Some(match self.scanner.string_value()? {
                    Some(text) => self.decode(&text.unescaped()),
                    None => Err("data is not a string"),
                })
            }
            Field::Arrival => {
                fields.arrival_ms = self.scanner.number_value()?.map_or(0, |n| n.millis());
            }
        }
        Ok(())
    }

    /// A record read by its shape: its literal parts compared, its varying
    /// values read as [`Reader::record`] reads them. `None` (and nothing
    /// kept of it) when the record has another shape.
    fn read_shaped(&mut self, shape: &Shape) -> Option<Fields> {
        let data = self.scanner.data;
        let decoded = self.decoded.len();
        let mut fields = Fields::default();
        let matched = shape.segments.iter().all(|segment| match segment {
            Segment::Literal(range) => {
                let literal = &data[range.clone()];
                let at = self.scanner.pos;
                let same = data.get(at..at + literal.len()) == Some(literal);
                self.scanner.pos += if same { literal.len() } else { 0 };
                same
            }
            Segment::SkipString => {
                self.scanner.peek() == Some(b'"') && self.scanner.string().is_ok()
            }
            Segment::SkipNumber => {
                matches!(self.scanner.peek(), Some(b'-' | b'0'..=b'9'))
                    && self.scanner.scalar().is_ok()
            }
            Segment::Field(field) => self.field(*field, &mut fields).is_ok(),
        });
        // The record must end where the shape does: text the shape ends
        // with (a value the two records shared) may begin a longer one.
        let matched = matched && matches!(self.scanner.peek(), Some(b',' | b']'));
        if matched {
            Some(fields)
        } else {
            self.decoded.truncate(decoded);
            None
        }
    }

    /// Decodes base64 `text` after the data decoded so far.
    fn decode(&mut self, text: &[u8]) -> Result<Range<usize>, &'static str> {
        let start = self.decoded.len();
        match base64_simd::STANDARD.decode_append(text, &mut self.decoded) {
            Ok(()) => Ok(start..self.decoded.len()),
            Err(_) => {
                self.decoded.truncate(start);
                Err("data is not base64")
            }
        }
    }

    /// A record read: into the batch whole, or as rejected with its reason.
    fn push(&mut self, fields: Fields) {
        let position = self.position;
        self.position += 1;
        let key = fields.partition_key.filter(|key| !key.is_empty());
        match (fields.sequence_number, key, fields.data) {
            (Some(Ok(sequence_number)), Some(partition_key), Some(Ok(span))) => {
                self.batch.records.push(Record {
                    sequence_number,
                    partition_key,
                    data: Bytes::new(),
                    arrival_ms: fields.arrival_ms,
                });
                self.batch.positions.push(position);
                self.spans.push(span);
            }
            (sequence, key, data) => {
                let (sequence_number, reason) = match sequence {
                    None => (String::new(), Some("no sequence number".to_owned())),
                    Some(Ok(number)) => (number.as_str().to_owned(), None),
                    Some(Err(text)) => {
                        let reason = format!("sequence number {text:?} is not a decimal number");
                        (text, Some(reason))
                    }
                };
                let (span, data_problem) = match data {
                    Some(Ok(span)) => (span, None),
                    Some(Err(problem)) => (0..0, Some(problem.to_owned())),
                    None => (0..0, Some("no data".to_owned())),
                };
                let reason = reason
                    .or(data_problem)
                    .or(key.is_none().then(|| "no partition key".to_owned()))
                    .expect("a rejected record has a reason");
                self.batch.rejected.push(Rejected {
                    position,
                    partition_key: key.unwrap_or_default(),
                    sequence_number,
                    data: Bytes::new(),
                    reason,
                });
                self.rejected_spans.push(span);
            }
        }
    }

    /// The batch, each record given its data, and the buffer they are
    /// slices of.
    fn finish(self) -> (KinesisBatch, Bytes) {
        let decoded = Bytes::from(self.decoded);
        let mut batch = self.batch;
        for (record, span) in batch.records.iter_mut().zip(self.spans) {
            record.data = decoded.slice(span);
        }
        for (rejected, span) in batch.rejected.iter_mut().zip(self.rejected_spans) {
            rejected.data = decoded.slice(span);
        }
        (batch, decoded)
    }
}

/// Reads Kinesis events one after another, as a warm function does, and
/// takes the memory of the last event's data back for the next once no
/// record refers to it any more: reusing it spares the allocator, and the
/// kernel the mapping and zeroing of fresh pages, on every invocation.
#[derive(Debug, Default)]
pub struct EventReader {
    spare: Option<Bytes>,
}

impl EventReader {
    /// Larger buffers are given back (a Lambda event is at most 6 MB, so
    /// its data at most 4.5 MB).
    const KEPT_BYTES: usize = 16 << 20;

    /// [`KinesisBatch::parse`], reusing the last event's buffer if it can.
    pub fn read(&mut self, json: &[u8]) -> Result<KinesisBatch, EventError> {
        let buffer = match self.spare.take().map(Bytes::try_into_mut) {
            Some(Ok(unused)) => Vec::from(unused),
            _ => Vec::new(),
        };
        let mut reader = Reader::new(json, buffer);
        reader.event()?;
        let (batch, decoded) = reader.finish();
        self.spare = (decoded.len() <= Self::KEPT_BYTES).then_some(decoded);
        Ok(batch)
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
        let point = text.iter().position(|&b| b == b'.').unwrap_or(text.len());
        let (whole, fraction) = (&text[..point], text.get(point + 1..).unwrap_or(&[]));
        let usual = (1..=12).contains(&whole.len())
            && sluice_core::json::all_digits(whole)
            && (point == text.len()
                || (!fraction.is_empty() && sluice_core::json::all_digits(fraction)));
        if usual {
            let mut ms = 0i64;
            for &digit in whole {
                ms = ms * 10 + i64::from(digit - b'0');
            }
            for i in 0..3 {
                ms = ms * 10 + fraction.get(i).map_or(0, |&digit| i64::from(digit - b'0'));
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
    #[inline]
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.data.get(self.pos) {
            self.pos += 1;
        }
    }

    /// The next byte after whitespace.
    #[inline]
    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.data.get(self.pos).copied()
    }

    #[inline]
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
    #[inline]
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
    #[inline]
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

    /// Reads past one value of any kind.
    #[inline]
    fn skip_value(&mut self) -> Result<(), EventError> {
        match self.peek() {
            Some(b'"') => self.string().map(drop),
            Some(b'{' | b'[') => self.skip_nested(),
            Some(b',' | b':' | b'}' | b']') | None => Err(MALFORMED),
            Some(_) => self.scalar(),
        }
    }

    /// Reads past a number, `true`, `false` or `null` (or what stands in
    /// their place): an error when there is none.
    fn scalar(&mut self) -> Result<(), EventError> {
        let start = self.pos;
        self.skip_scalar();
        match self.pos > start {
            true => Ok(()),
            false => Err(MALFORMED),
        }
    }

    /// Reads past an object or an array, nested ones without recursion.
    fn skip_nested(&mut self) -> Result<(), EventError> {
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
                _ => self.scalar()?,
            }
            if depth == 0 {
                return Ok(());
            }
        }
    }

    /// Whether the next byte closes the object or array (`close`), read
    /// past if so.
    #[inline]
    fn close(&mut self, close: u8) -> bool {
        let closing = self.peek() == Some(close);
        self.pos += usize::from(closing);
        closing
    }

    /// After a member or element: whether another follows (a comma), or
    /// the object or array ends (`close`).
    #[inline]
    fn more(&mut self, close: u8) -> Result<bool, EventError> {
        match self.peek() {
            Some(b',') => {
                self.pos += 1;
                Ok(true)
            }
            Some(b) if b == close => {
                self.pos += 1;
                Ok(false)
            }
            _ => Err(MALFORMED),
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

    #[test]
    fn the_data_buffer_is_reused_once_its_records_are_gone() {
        let event =
            br#"{"Records":[{"kinesis":{"partitionKey":"k","sequenceNumber":"1","data":"b2s="}}]}"#;
        let mut reader = EventReader::default();
        let first = reader.read(event).unwrap();
        let held = first.records[0].data.clone();
        drop(first);
        // A record of it is still held: a new buffer.
        let second = reader.read(event).unwrap();
        assert_ne!(second.records[0].data.as_ptr(), held.as_ptr());
        let at = second.records[0].data.as_ptr();
        drop((held, second));
        let third = reader.read(event).unwrap();
        assert_eq!(
            third.records[0].data.as_ptr(),
            at,
            "the last buffer, reused"
        );
        assert_eq!(&third.records[0].data[..], b"ok");
    }

    #[test]
    fn a_record_longer_than_the_shape_is_read_field_by_field() {
        // The first two teach the shape `1`; the third only begins with it.
        for event in [
            &br#"{"Records":[1,1,12,{"kinesis":{"partitionKey":"k","sequenceNumber":"4","data":"b2s="}}]}"#[..],
            b"{\"Records\":[\xff,\xff,\xff\xff],\"Records\":",
        ] {
            assert_eq!(
                KinesisBatch::parse(event),
                KinesisBatch::parse_field_by_field(event)
            );
        }
        let batch = read(
            r#"{"Records":[1,1,12,{"kinesis":{"partitionKey":"k","sequenceNumber":"4","data":"b2s="}}]}"#,
        );
        assert_eq!(batch.rejected.len(), 3);
        assert_eq!(batch.records.len(), 1);
        assert_eq!(batch.position(0), 3);
    }

    #[test]
    fn records_of_one_shape_are_read_by_it() {
        let records: Vec<String> = (0..5)
            .map(|i| {
                format!(
                    r#"{{"kinesis":{{"kinesisSchemaVersion":"1.0","partitionKey":"k{i}","sequenceNumber":"4959{i}","data":"b2s=","approximateArrivalTimestamp":1764000000.{i}}},"eventSource":"aws:kinesis","eventID":"shardId-000000000000:4959{i}","awsRegion":"eu-west-1"}}"#
                )
            })
            .collect();
        let event = format!(r#"{{"Records":[{}]}}"#, records.join(","));
        let mut reader = Reader::new(event.as_bytes(), Vec::new());
        reader.event().unwrap();
        let shape = reader.shape.as_ref().expect("a shape is learnt");
        let varying = shape
            .segments
            .iter()
            .filter(|s| !matches!(s, Segment::Literal(_)))
            .count();
        // partitionKey, sequenceNumber, data, arrival and eventID vary.
        assert_eq!(varying, 5, "{shape:?}");
        let (batch, _) = reader.finish();
        assert_eq!(
            batch,
            KinesisBatch::parse_field_by_field(event.as_bytes()).unwrap()
        );
        assert_eq!(batch.records[4].partition_key, "k4");
        assert_eq!(batch.records[4].arrival_ms, 1_764_000_000_400);
    }

    proptest::proptest! {
        /// Whatever the records look like, reading by shape gives what
        /// reading field by field gives.
        #[test]
        fn shapes_read_what_fields_read(
            records in proptest::collection::vec(
                (0usize..14, "[a-z0-9]{0,6}", 0u32..5, proptest::bool::weighted(0.2)),
                0..12,
            ),
        ) {
            let mut texts: Vec<String> = records
                .iter()
                .map(|(variant, value, n, odd)| {
                    let region = if *odd { "us-east-1" } else { "eu-west-1" };
                    let data = match n { 0 => "b2s=", 1 => "aGVsbG8=", 2 => "not base64", 3 => "", _ => "d29ybGQ=" };
                    match variant {
                        0..=5 => format!(
                            r#"{{"kinesis":{{"partitionKey":"{value}","sequenceNumber":"4959{n}","data":"{data}","approximateArrivalTimestamp":17640000{n}.5}},"eventID":"s:{value}{n}","awsRegion":"{region}"}}"#
                        ),
                        6 => format!(
                            r#"{{"eventID":"s:{n}","kinesis":{{"sequenceNumber":"4959{n}","partitionKey":"{value}","data":"{data}"}},"awsRegion":"{region}"}}"#
                        ),
                        7 => format!(
                            r#"{{"kinesis":{{"partitionKey":{n},"sequenceNumber":"4959{n}","data":"{data}","approximateArrivalTimestamp":17640000{n}.5}},"eventID":{n},"awsRegion":"{region}"}}"#
                        ),
                        8 => format!(
                            r#"{{"kinesis":"{value}","eventID":"s:{value}{n}","awsRegion":"{region}"}}"#
                        ),
                        9 => format!(r#""{value}""#),
                        // Bare numbers: one may begin another.
                        11 => format!("{n}"),
                        12 => format!("{n}{n}"),
                        10 => format!(
                            r#"{{"kinesis":{{"partitionKey":"{value}","sequenceNumber":"4959{n}","data":"{data}","approximateArrivalTimestamp":17640000{n}.5}},"eventID":{{"nested":[{n}]}},"awsRegion":"{region}"}}"#
                        ),
                        _ => format!(
                            r#"{{ "kinesis" : {{"partitionKey":"{value}A","sequenceNumber":"4959{n}","data":"{data}","approximateArrivalTimestamp":17640000{n}.5}},"eventID":"s:{value}{n}","awsRegion":"{region}"}}"#
                        ),
                    }
                })
                .collect();
            // The first record twice, so a shape is learnt from it and
            // tried on every record after.
            if let Some(first) = texts.first().cloned() {
                texts.insert(1, first);
            }
            let event = format!(r#"{{"Records":[{}]}}"#, texts.join(","));
            let shaped = KinesisBatch::parse(event.as_bytes());
            let by_field = KinesisBatch::parse_field_by_field(event.as_bytes());
            proptest::prop_assert_eq!(shaped, by_field, "{}", event);
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
