//! Record envelope v1: `{"headers":{…},"payload":…}`.
//!
//! [`decode_headers`] reads only the headers when they come first, so its
//! cost does not grow with the payload; when they do not, it falls back to a
//! full parse. [`decode`] also checks the payload is one JSON value.
//! [`encode`] writes an envelope with `headers` first and the payload bytes
//! exactly as given.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Header names the collector sets; everything else is the sender's.
pub const RESERVED_HEADERS: [&str; 6] =
    ["type", "source", "event_id", "ts", "traceparent", "schema"];

/// A header value: a string, a number or a boolean.
#[derive(Clone, Debug, PartialEq)]
pub enum HeaderValue<'a> {
    Str(Cow<'a, str>),
    Num(f64),
    Bool(bool),
}

impl HeaderValue<'_> {
    pub fn into_owned(self) -> HeaderValue<'static> {
        match self {
            HeaderValue::Str(s) => HeaderValue::Str(Cow::Owned(s.into_owned())),
            HeaderValue::Num(n) => HeaderValue::Num(n),
            HeaderValue::Bool(b) => HeaderValue::Bool(b),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            HeaderValue::Str(s) => Some(s),
            _ => None,
        }
    }
}

impl fmt::Display for HeaderValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderValue::Str(s) => f.write_str(s),
            HeaderValue::Num(n) => write!(f, "{n}"),
            HeaderValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// An envelope's headers, in the order they were written. Names are unique.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Headers<'a> {
    entries: Vec<(Cow<'a, str>, HeaderValue<'a>)>,
}

impl<'a> Headers<'a> {
    pub fn get(&self, name: &str) -> Option<&HeaderValue<'a>> {
        self.entries
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &HeaderValue<'a>)> {
        self.entries.iter().map(|(k, v)| (k.as_ref(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The same headers, owning their text: to keep them apart from the
    /// record they were read from.
    pub fn into_owned(self) -> Headers<'static> {
        Headers {
            entries: self
                .entries
                .into_iter()
                .map(|(name, value)| (Cow::Owned(name.into_owned()), value.into_owned()))
                .collect(),
        }
    }
}

/// Why a record is not an envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not a JSON object")]
    NotAnObject,
    #[error("no headers object")]
    MissingHeaders,
    #[error("bad headers: {0}")]
    BadHeaders(String),
    #[error("not an envelope: {0}")]
    Invalid(String),
}

impl EnvelopeError {
    /// A short stable code for the reason, used in dead-letter headers and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            EnvelopeError::NotJson(_) => "not_json",
            EnvelopeError::NotAnObject => "not_an_object",
            EnvelopeError::MissingHeaders => "missing_headers",
            EnvelopeError::BadHeaders(_) => "bad_headers",
            EnvelopeError::Invalid(_) => "not_an_envelope",
        }
    }
}

/// A decoded envelope: its headers and the payload's raw bytes, if any.
#[derive(Debug, PartialEq)]
pub struct Envelope<'a> {
    pub headers: Headers<'a>,
    pub payload: Option<&'a [u8]>,
}

/// Reads the headers of an envelope. When `headers` is the first key only the
/// headers are parsed: the payload is not read, not even its last byte, so
/// the cost does not depend on its size. Otherwise the whole record is parsed.
pub fn decode_headers(data: &[u8]) -> Result<Headers<'_>, EnvelopeError> {
    let mut headers = Headers {
        entries: Vec::with_capacity(12),
    };
    decode_headers_into(data, &mut headers)?;
    Ok(headers)
}

/// [`decode_headers`] into `headers`, replacing what it held and keeping
/// its allocation: for a loop over the records of a batch.
pub fn decode_headers_into<'a>(
    data: &'a [u8],
    headers: &mut Headers<'a>,
) -> Result<(), EnvelopeError> {
    match fast_path(data, headers) {
        Some(result) => result.map(|_| ()),
        None => {
            *headers = slow_path(data)?.headers;
            Ok(())
        }
    }
}

/// Decodes a whole envelope, checking the payload is one JSON value.
pub fn decode(data: &[u8]) -> Result<Envelope<'_>, EnvelopeError> {
    let mut headers = Headers::default();
    let rest = match fast_path(data, &mut headers) {
        Some(result) => result?,
        None => return slow_path(data),
    };
    let Some(end) = trailing_brace(data) else {
        return slow_path(data);
    };
    match rest {
        Rest::End(at) if at == end => Ok(Envelope {
            headers,
            payload: None,
        }),
        Rest::End(_) => slow_path(data),
        Rest::Payload(start) => {
            if start >= end {
                return Err(EnvelopeError::Invalid("empty payload".into()));
            }
            let payload = trim_end(&data[start..end]);
            serde_json::from_slice::<&RawValue>(payload)
                .map_err(|e| EnvelopeError::Invalid(format!("payload: {e}")))?;
            Ok(Envelope {
                headers,
                payload: Some(payload),
            })
        }
    }
}

/// Writes an envelope: headers first, then the payload bytes unchanged. The
/// caller guarantees `payload` is one JSON value.
pub fn encode<'h, I>(headers: I, payload: Option<&[u8]>) -> Vec<u8>
where
    I: IntoIterator<Item = (&'h str, &'h serde_json::Value)>,
{
    let mut builder = EnvelopeBuilder::with_capacity(64 + payload.map_or(0, <[u8]>::len));
    for (name, value) in headers {
        builder.header_value(name, value);
    }
    builder.finish(payload)
}

/// Writes an envelope header by header, without building a JSON tree.
pub struct EnvelopeBuilder {
    out: Vec<u8>,
    empty: bool,
}

impl EnvelopeBuilder {
    pub fn with_capacity(capacity: usize) -> Self {
        let mut out = Vec::with_capacity(capacity.max(16));
        out.extend_from_slice(b"{\"headers\":{");
        Self { out, empty: true }
    }

    fn name(&mut self, name: &str) {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        self.string(name);
        self.out.push(b':');
    }

    /// A JSON string. Most names and values need no escape and are copied
    /// between quotes as they are.
    fn string(&mut self, text: &str) {
        // Without an early exit, so that the check runs many bytes a step.
        let plain = !text.bytes().fold(false, |escape, b| {
            escape | (b < 0x20) | (b == b'"') | (b == b'\\')
        });
        if plain {
            self.out.reserve(text.len() + 2);
            self.out.push(b'"');
            self.out.extend_from_slice(text.as_bytes());
            self.out.push(b'"');
        } else {
            // Writing a str into a Vec cannot fail.
            serde_json::to_writer(&mut self.out, text).expect("write a JSON string");
        }
    }

    /// A string header, escaped as JSON needs.
    pub fn header_str(&mut self, name: &str, value: &str) {
        self.name(name);
        self.string(value);
    }

    /// A header from a JSON value (the caller keeps to strings, numbers and booleans).
    pub fn header_value(&mut self, name: &str, value: &serde_json::Value) {
        self.name(name);
        serde_json::to_writer(&mut self.out, value).expect("write header value");
    }

    /// A header whose value is already JSON text of one string, number or
    /// boolean, copied as it is.
    pub fn header_raw(&mut self, name: &str, json: &[u8]) {
        self.name(name);
        self.out.extend_from_slice(json);
    }

    /// Closes the headers and appends the payload bytes unchanged.
    pub fn finish(mut self, payload: Option<&[u8]>) -> Vec<u8> {
        self.out.push(b'}');
        if let Some(payload) = payload {
            self.out.extend_from_slice(b",\"payload\":");
            self.out.extend_from_slice(payload);
        }
        self.out.push(b'}');
        self.out
    }
}

fn skip_ws(data: &[u8], mut pos: usize) -> usize {
    while pos < data.len() && matches!(data[pos], b' ' | b'\t' | b'\n' | b'\r') {
        pos += 1;
    }
    pos
}

fn expect(data: &[u8], pos: usize, literal: &[u8]) -> Option<usize> {
    data.get(pos..pos + literal.len())
        .filter(|found| *found == literal)
        .map(|_| pos + literal.len())
}

/// What follows the headers on the fast path.
enum Rest {
    /// The closing brace of the envelope is at this position.
    End(usize),
    /// The payload starts at this position.
    Payload(usize),
}

/// The header-only path, into `headers`. `None` means "headers are not
/// first": take the slow path.
fn fast_path<'a>(data: &'a [u8], headers: &mut Headers<'a>) -> Option<Result<Rest, EnvelopeError>> {
    let pos = skip_ws(data, 0);
    let pos = expect(data, pos, b"{")?;
    let pos = skip_ws(data, pos);
    let pos = expect(data, pos, b"\"headers\"")?;
    let pos = skip_ws(data, pos);
    let pos = expect(data, pos, b":")?;
    let pos = skip_ws(data, pos);
    if data.get(pos) != Some(&b'{') {
        return Some(Err(EnvelopeError::BadHeaders(
            "headers must be a JSON object".into(),
        )));
    }
    let end = match scan_headers(data, pos, &mut headers.entries) {
        Some(end) => end,
        None => {
            let mut stream =
                serde_json::Deserializer::from_slice(&data[pos..]).into_iter::<Headers>();
            match stream.next() {
                Some(Ok(parsed)) => {
                    *headers = parsed;
                    pos + stream.byte_offset()
                }
                Some(Err(e)) if e.is_data() => {
                    return Some(Err(EnvelopeError::BadHeaders(e.to_string())))
                }
                Some(Err(e)) => return Some(Err(EnvelopeError::NotJson(e.to_string()))),
                None => return Some(Err(EnvelopeError::NotJson("unexpected end".into()))),
            }
        }
    };
    let after = skip_ws(data, end);
    match data.get(after) {
        Some(b'}') => Some(Ok(Rest::End(after))),
        Some(b',') => {
            let pos = skip_ws(data, after + 1);
            let pos = expect(data, pos, b"\"payload\"")?;
            let pos = skip_ws(data, pos);
            let pos = expect(data, pos, b":")?;
            Some(Ok(Rest::Payload(skip_ws(data, pos))))
        }
        _ => None,
    }
}

/// How much of a record is checked as UTF-8 for the header scanner at
/// first: enough for the headers of almost every envelope, so the payload is
/// not read.
const SCANNED_PREFIX: usize = 384;

/// Reads a headers object at `pos` the way almost every envelope is
/// written: a flat object of plain keys, and string values without escapes,
/// numbers or booleans, into `entries` (cleared first). The position after
/// the object, or `None` for anything else (escapes, nesting, a duplicate
/// name, bad syntax), which the caller hands to serde_json for the same
/// answer or the precise error. Routing reads the headers of every record,
/// and this costs a fraction of a general JSON parse: strings are found
/// eight bytes at a time, and the text is checked as UTF-8 in one go, first
/// a prefix and, for headers longer than that, the whole record.
fn scan_headers<'a>(
    data: &'a [u8],
    pos: usize,
    entries: &mut Vec<(Cow<'a, str>, HeaderValue<'a>)>,
) -> Option<usize> {
    let prefix = &data[..data.len().min(pos + SCANNED_PREFIX)];
    let text = match std::str::from_utf8(prefix) {
        Ok(text) => text,
        // A character cut by the end of the prefix, or bad UTF-8 later on.
        Err(error) => std::str::from_utf8(&prefix[..error.valid_up_to()]).ok()?,
    };
    match scan_headers_in(text, pos, entries) {
        Some(end) => Some(end),
        None if text.len() < data.len() => {
            scan_headers_in(std::str::from_utf8(data).ok()?, pos, entries)
        }
        None => None,
    }
}

/// [`scan_headers`] over text already checked as UTF-8.
fn scan_headers_in<'a>(
    text: &'a str,
    pos: usize,
    entries: &mut Vec<(Cow<'a, str>, HeaderValue<'a>)>,
) -> Option<usize> {
    entries.clear();
    let data = text.as_bytes();
    let mut pos = skip_ws(data, expect(data, pos, b"{")?);
    if data.get(pos) == Some(&b'}') {
        return Some(pos + 1);
    }
    loop {
        let (name_start, name_end) = scan_string(data, pos)?;
        let name = text.get(name_start..name_end)?;
        pos = skip_ws(data, expect(data, skip_ws(data, name_end + 1), b":")?);
        let (value, next) = match *data.get(pos)? {
            b'"' => {
                let (start, end) = scan_string(data, pos)?;
                (
                    HeaderValue::Str(Cow::Borrowed(text.get(start..end)?)),
                    end + 1,
                )
            }
            b't' => (HeaderValue::Bool(true), expect(data, pos, b"true")?),
            b'f' => (HeaderValue::Bool(false), expect(data, pos, b"false")?),
            b'-' | b'0'..=b'9' => match scan_integer(data, pos) {
                Some(found) => found,
                None => scan_fraction(data, pos)?,
            },
            _ => return None,
        };
        // Pushed first, then checked: written straight from registers.
        entries.push((Cow::Borrowed(name), value));
        let (new, seen) = entries.split_last().expect("just pushed");
        if seen
            .iter()
            .any(|(other, _)| other.len() == name.len() && *other == new.0)
        {
            return None;
        }
        pos = skip_ws(data, next);
        match *data.get(pos)? {
            b',' => pos = skip_ws(data, pos + 1),
            b'}' => return Some(pos + 1),
            _ => return None,
        }
    }
}

/// A string without escapes or control characters at `pos` (its opening
/// quote): where its text starts and ends (the closing quote).
fn scan_string(data: &[u8], pos: usize) -> Option<(usize, usize)> {
    let start = expect(data, pos, b"\"")?;
    let mut end = crate::json::plain_ascii_end(data, start);
    if data.get(end)? & 0x80 != 0 {
        // Not ASCII: the rest bytewise.
        while !matches!(*data.get(end)?, b'"' | b'\\' | 0..=0x1f) {
            end += 1;
        }
    }
    (data[end] == b'"').then_some((start, end))
}

/// A JSON integer at `pos` that fits 64 bits, read as serde_json reads it
/// (an unsigned or a signed 64-bit integer, as f64), and the position after
/// it; `None` for anything else.
fn scan_integer(data: &[u8], pos: usize) -> Option<(HeaderValue<'static>, usize)> {
    let negative = data[pos] == b'-';
    let digits_from = pos + usize::from(negative);
    let mut end = digits_from;
    let mut magnitude: u64 = 0;
    while let Some(digit) = data.get(end).filter(|b| b.is_ascii_digit()) {
        magnitude = magnitude
            .checked_mul(10)?
            .checked_add(u64::from(digit - b'0'))?;
        end += 1;
    }
    let digits = end - digits_from;
    let leading_zero = digits > 1 && data[digits_from] == b'0';
    if digits == 0
        || leading_zero
        || (negative && magnitude == 0)
        || matches!(data.get(end), Some(b'.' | b'e' | b'E'))
    {
        return None;
    }
    let number = if negative {
        // As an i64: down to -2^63.
        if magnitude > 1 << 63 {
            return None;
        }
        -(magnitude as f64)
    } else {
        magnitude as f64
    };
    Some((HeaderValue::Num(number), end))
}

/// A JSON number with a fraction or an exponent at `pos`, read by
/// serde_json exactly as the slow path reads it, and the position after it.
fn scan_fraction(data: &[u8], pos: usize) -> Option<(HeaderValue<'static>, usize)> {
    let length = data[pos..]
        .iter()
        .take_while(|b| matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
        .count();
    let text = &data[pos..pos + length];
    if !text.iter().any(|b| matches!(b, b'.' | b'e' | b'E')) {
        return None;
    }
    match serde_json::from_slice::<HeaderValue>(text) {
        Ok(HeaderValue::Num(number)) => Some((HeaderValue::Num(number), pos + length)),
        _ => None,
    }
}

/// Position of the object's closing brace (the last non-space byte).
fn trailing_brace(data: &[u8]) -> Option<usize> {
    let last = data
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))?;
    (data[last] == b'}').then_some(last)
}

fn trim_end(bytes: &[u8]) -> &[u8] {
    let len = bytes
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .map_or(0, |p| p + 1);
    &bytes[..len]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FullEnvelope<'a> {
    #[serde(borrow)]
    headers: Option<Headers<'a>>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

fn slow_path(data: &[u8]) -> Result<Envelope<'_>, EnvelopeError> {
    match serde_json::from_slice::<FullEnvelope>(data) {
        Ok(FullEnvelope {
            headers: Some(headers),
            payload,
        }) => Ok(Envelope {
            headers,
            payload: payload.map(|raw| raw.get().as_bytes()),
        }),
        Ok(FullEnvelope { headers: None, .. }) => Err(EnvelopeError::MissingHeaders),
        Err(e) if e.is_syntax() || e.is_eof() => Err(EnvelopeError::NotJson(e.to_string())),
        Err(e) => {
            if data.get(skip_ws(data, 0)) != Some(&b'{') {
                Err(EnvelopeError::NotAnObject)
            } else if e.to_string().starts_with("header") {
                Err(EnvelopeError::BadHeaders(e.to_string()))
            } else {
                Err(EnvelopeError::Invalid(e.to_string()))
            }
        }
    }
}

/// A string that borrows from the input when it has no escapes.
pub struct MaybeBorrowed<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for MaybeBorrowed<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for StrVisitor<'a> {
            type Value = MaybeBorrowed<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(MaybeBorrowed(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MaybeBorrowed(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(MaybeBorrowed(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(StrVisitor(std::marker::PhantomData))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for HeaderValue<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValueVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for ValueVisitor<'a> {
            type Value = HeaderValue<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("header value: a string, number or boolean")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(HeaderValue::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(HeaderValue::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(HeaderValue::Str(Cow::Owned(v)))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                Ok(HeaderValue::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(HeaderValue::Num(v as f64))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(HeaderValue::Num(v as f64))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(HeaderValue::Num(v))
            }
        }
        deserializer.deserialize_any(ValueVisitor(std::marker::PhantomData))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Headers<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HeadersVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for HeadersVisitor<'a> {
            type Value = Headers<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("headers: a flat JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries: Vec<(Cow<'a, str>, HeaderValue<'a>)> =
                    Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(MaybeBorrowed(name)) = map.next_key()? {
                    let value = map
                        .next_value::<HeaderValue>()
                        .map_err(|e| de::Error::custom(format!("header {name:?}: {e}")))?;
                    let duplicate = entries.iter().any(|(key, _)| {
                        key.len() == name.len()
                            && key.as_bytes().first() == name.as_bytes().first()
                            && *key == name
                    });
                    if duplicate {
                        return Err(de::Error::custom(format!("header {name:?} appears twice")));
                    }
                    entries.push((name, value));
                }
                Ok(Headers { entries })
            }
        }
        deserializer.deserialize_map(HeadersVisitor(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The header scanner's answer: headers and the position after them.
    fn scan(data: &[u8]) -> Option<(Headers<'_>, usize)> {
        let mut entries = Vec::new();
        let end = scan_headers(data, 0, &mut entries)?;
        Some((Headers { entries }, end))
    }

    fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a HeaderValue<'a>> {
        headers.get(name)
    }

    #[test]
    fn round_trips_headers_and_payload_bytes() {
        let type_value = serde_json::json!("purchase");
        let amount = serde_json::json!(42.5);
        let payload = br#"{ "b": 1,  "a" : [1, 2] }"#;
        let data = encode([("type", &type_value), ("amount", &amount)], Some(payload));
        let envelope = decode(&data).unwrap();
        assert_eq!(
            header(&envelope.headers, "type"),
            Some(&HeaderValue::Str("purchase".into()))
        );
        assert_eq!(
            header(&envelope.headers, "amount"),
            Some(&HeaderValue::Num(42.5))
        );
        assert_eq!(envelope.payload, Some(&payload[..]));
    }

    #[test]
    fn header_only_path_does_not_read_the_payload() {
        // A broken payload, even a missing closing brace, is not seen by the
        // header-only path...
        let data = br#"{"headers":{"type":"click"},"payload":{not json at all"#;
        let headers = decode_headers(data).unwrap();
        assert_eq!(
            headers.get("type").and_then(HeaderValue::as_str),
            Some("click")
        );
        // ...but a full decode rejects it.
        assert!(decode(data).is_err());
        let closed = br#"{"headers":{"type":"click"},"payload":{not json at all}}"#;
        assert_eq!(decode(closed).unwrap_err().code(), "not_an_envelope");
    }

    #[test]
    fn headers_later_take_the_slow_path() {
        let data = br#"{"payload":[1,2,3],"headers":{"type":"click","n":3,"ok":true}}"#;
        let envelope = decode(data).unwrap();
        assert_eq!(envelope.headers.get("n"), Some(&HeaderValue::Num(3.0)));
        assert_eq!(envelope.headers.get("ok"), Some(&HeaderValue::Bool(true)));
        assert_eq!(envelope.payload, Some(&b"[1,2,3]"[..]));
    }

    #[test]
    fn escaped_strings_decode() {
        let data = br#"{"headers":{"ty\"pe":"a\u00e9b"}}"#;
        let headers = decode_headers(data).unwrap();
        assert_eq!(
            headers.get("ty\"pe").and_then(HeaderValue::as_str),
            Some("a\u{e9}b")
        );
    }

    #[test]
    fn typed_errors_for_records_that_are_not_envelopes() {
        let cases: [(&[u8], &str); 10] = [
            (b"not json", "not_json"),
            (b"", "not_json"),
            (b"[1,2]", "not_an_object"),
            (b"{\"payload\":1}", "missing_headers"),
            (b"{\"headers\":[1]}", "bad_headers"),
            (b"{\"headers\":{\"a\":{\"nested\":1}}}", "bad_headers"),
            (b"{\"headers\":{\"a\":1,\"a\":2}}", "bad_headers"),
            (b"{\"headers\":{\"\":1,\"\":2}}", "bad_headers"),
            (b"{\"headers\":{\"a\":null}}", "bad_headers"),
            (b"{\"headers\":{},\"extra\":1}", "not_an_envelope"),
        ];
        for (data, code) in cases {
            let err = decode(data).unwrap_err();
            assert_eq!(
                err.code(),
                code,
                "{:?}: {err}",
                String::from_utf8_lossy(data)
            );
            assert_eq!(decode_headers(data).unwrap_err().code(), code);
        }
        let invalid_utf8 = b"{\"headers\":{\"a\":\"\xff\"}}";
        assert!(decode(invalid_utf8).is_err());
    }

    #[test]
    fn truncated_records_are_errors_not_panics() {
        let type_value = serde_json::json!("purchase");
        let data = encode([("type", &type_value)], Some(b"{\"a\":[1,2,3]}"));
        for cut in 0..data.len() {
            assert!(decode(&data[..cut]).is_err(), "cut at {cut}");
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&data);
            let _ = decode_headers(&data);
        }

        #[test]
        fn encoded_string_headers_round_trip(
            pairs in proptest::collection::btree_map("[a-z_\"\\\\é]{1,12}", ".{0,20}", 0..8),
            payload in "[1-9][0-9]{0,9}",
        ) {
            let values: Vec<(String, serde_json::Value)> = pairs
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            let data = encode(values.iter().map(|(k, v)| (k.as_str(), v)), Some(payload.as_bytes()));
            let envelope = decode(&data).unwrap();
            prop_assert_eq!(envelope.headers.len(), pairs.len());
            for (k, v) in &pairs {
                prop_assert_eq!(envelope.headers.get(k).and_then(HeaderValue::as_str), Some(v.as_str()));
            }
            prop_assert_eq!(envelope.payload, Some(payload.as_bytes()));
        }

        /// Names and values are written as serde_json writes them, escapes
        /// and control characters included.
        #[test]
        fn string_headers_are_written_as_serde_json_writes_them(
            name in "[\\x00-\\x7f\u{e9}]{1,8}",
            value in "[\\x00-\\x7f\u{e9}\u{1F600}]{0,16}",
        ) {
            let mut builder = EnvelopeBuilder::with_capacity(0);
            builder.header_str(&name, &value);
            let written = String::from_utf8(builder.finish(None)).unwrap();
            let want = format!(
                "{{\"headers\":{{{}:{}}}}}",
                serde_json::to_string(&name).unwrap(),
                serde_json::to_string(&value).unwrap()
            );
            prop_assert_eq!(written, want);
        }

        /// The header scanner agrees with serde_json wherever it answers,
        /// and answers for the usual headers (plain strings, integers,
        /// booleans), so routing takes the fast way.
        #[test]
        fn header_scanner_agrees_with_serde_json(
            headers in proptest::collection::vec(
                (
                    "[a-z_\"\\\\\u{e9}\n]{1,8}",
                    prop_oneof![
                        "[ -~\u{e9}\u{1F600}]{0,12}".prop_map(serde_json::Value::from),
                        any::<i64>().prop_map(serde_json::Value::from),
                        any::<u64>().prop_map(serde_json::Value::from),
                        (-1e6f64..1e6).prop_map(serde_json::Value::from),
                        any::<bool>().prop_map(serde_json::Value::from),
                        Just(serde_json::json!(null)),
                        Just(serde_json::json!({"nested": 1})),
                    ],
                ),
                0..8,
            ),
            spaced in any::<bool>(),
        ) {
            let members: Vec<String> = headers
                .iter()
                .map(|(k, v)| format!("{}:{}", serde_json::to_string(k).unwrap(), v))
                .collect();
            let separator = if spaced { " ,\n " } else { "," };
            let text = format!("{{{}}}", members.join(separator));
            let scanned = scan(text.as_bytes());
            let parsed = serde_json::from_str::<Headers>(&text);
            if let Some((headers, end)) = &scanned {
                prop_assert_eq!(Some(headers), parsed.as_ref().ok());
                prop_assert_eq!(*end, text.len());
            }
            let plain = headers.iter().all(|(k, v)| {
                let plain_text = |t: &str| !t.contains(['"', '\\', '\n']);
                plain_text(k)
                    && match v {
                        serde_json::Value::String(t) => plain_text(t),
                        serde_json::Value::Number(_) => true,
                        serde_json::Value::Bool(_) => true,
                        _ => false,
                    }
            });
            let unique = headers.iter().map(|(k, _)| k).collect::<std::collections::HashSet<_>>().len() == headers.len();
            if plain && unique {
                prop_assert!(scanned.is_some(), "{} was not scanned", text);
            }
        }
    }

    #[test]
    fn header_scanner_reads_headers_longer_than_its_first_utf8_check() {
        let long = "\u{e9}".repeat(SCANNED_PREFIX);
        for value in [long.as_str(), &long[..200]] {
            let record =
                format!(r#"{{"headers":{{"type":"t","v":"{value}","n":2}},"payload":{{}}}}"#);
            let (headers, _) = scan(&record.as_bytes()[11..]).unwrap();
            assert_eq!(headers.get("v"), Some(&HeaderValue::Str(value.into())));
            assert_eq!(headers.get("n"), Some(&HeaderValue::Num(2.0)));
        }
        // Bytes that are not UTF-8 after the headers do not matter to them.
        let mut record = br#"{"headers":{"type":"t"},"payload":""#.to_vec();
        record.extend_from_slice(&[0xff; 600]);
        assert_eq!(
            decode_headers(&record).unwrap().get("type"),
            Some(&HeaderValue::Str("t".into()))
        );
    }

    #[test]
    fn header_scanner_reads_fractions_as_serde_json_does_and_leaves_odd_numbers_to_it() {
        for text in [
            r#"{"a":-0}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":1.5.2}"#,
            r#"{"a":18446744073709551616}"#,
        ] {
            assert!(scan(text.as_bytes()).is_none(), "{text}");
        }
        for (text, number) in [
            (r#"{"a":1.5}"#, 1.5),
            (r#"{"a":-301.42}"#, -301.42),
            (r#"{"a":1e3}"#, 1000.0),
            (r#"{"a":2.5E-3}"#, 0.0025),
        ] {
            let (headers, _) = scan(text.as_bytes()).unwrap();
            assert_eq!(headers.get("a"), Some(&HeaderValue::Num(number)), "{text}");
        }
        let (headers, _) = scan(br#"{ "a" : -12 , "b":true,"c":"x"}"#).unwrap();
        assert_eq!(headers.get("a"), Some(&HeaderValue::Num(-12.0)));
        assert_eq!(headers.get("b"), Some(&HeaderValue::Bool(true)));
        assert_eq!(headers.get("c"), Some(&HeaderValue::Str("x".into())));
    }
}
