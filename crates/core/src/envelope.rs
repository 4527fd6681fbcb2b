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
    match fast_path(data) {
        Some(result) => result.map(|(headers, _)| headers),
        None => slow_path(data).map(|envelope| envelope.headers),
    }
}

/// Decodes a whole envelope, checking the payload is one JSON value.
pub fn decode(data: &[u8]) -> Result<Envelope<'_>, EnvelopeError> {
    let (headers, rest) = match fast_path(data) {
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
        // Writing a str into a Vec cannot fail.
        serde_json::to_writer(&mut self.out, name).expect("write header name");
        self.out.push(b':');
    }

    /// A string header, escaped as JSON needs.
    pub fn header_str(&mut self, name: &str, value: &str) {
        self.name(name);
        serde_json::to_writer(&mut self.out, value).expect("write header value");
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

/// The header-only path. `None` means "headers are not first": take the slow path.
fn fast_path(data: &[u8]) -> Option<Result<(Headers<'_>, Rest), EnvelopeError>> {
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
    let (headers, end) = match scan_headers(data, pos) {
        Some(found) => found,
        None => {
            let mut stream =
                serde_json::Deserializer::from_slice(&data[pos..]).into_iter::<Headers>();
            match stream.next() {
                Some(Ok(headers)) => (headers, pos + stream.byte_offset()),
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
        Some(b'}') => Some(Ok((headers, Rest::End(after)))),
        Some(b',') => {
            let pos = skip_ws(data, after + 1);
            let pos = expect(data, pos, b"\"payload\"")?;
            let pos = skip_ws(data, pos);
            let pos = expect(data, pos, b":")?;
            Some(Ok((headers, Rest::Payload(skip_ws(data, pos)))))
        }
        _ => None,
    }
}

/// Reads a headers object at `pos` the way almost every envelope is
/// written: a flat object of plain keys, and string values without escapes,
/// integers or booleans. The headers and the position after the object, or
/// `None` for anything else (escapes, fractions, nesting, a duplicate name,
/// bad syntax), which the caller hands to serde_json for the same answer or
/// the precise error. Routing reads the headers of every record, and this
/// costs a fraction of a general JSON parse.
fn scan_headers(data: &[u8], pos: usize) -> Option<(Headers<'_>, usize)> {
    let mut pos = skip_ws(data, expect(data, pos, b"{")?);
    let mut entries: Vec<(Cow<'_, str>, HeaderValue<'_>)> = Vec::with_capacity(12);
    if data.get(pos) == Some(&b'}') {
        return Some((Headers { entries }, pos + 1));
    }
    loop {
        let (name, next) = scan_string(data, pos)?;
        pos = skip_ws(data, expect(data, skip_ws(data, next), b":")?);
        let (value, next) = match *data.get(pos)? {
            b'"' => {
                let (text, next) = scan_string(data, pos)?;
                (HeaderValue::Str(Cow::Borrowed(text)), next)
            }
            b't' => (HeaderValue::Bool(true), expect(data, pos, b"true")?),
            b'f' => (HeaderValue::Bool(false), expect(data, pos, b"false")?),
            b'-' | b'0'..=b'9' => scan_integer(data, pos)?,
            _ => return None,
        };
        if entries.iter().any(|(key, _)| key == name) {
            return None;
        }
        entries.push((Cow::Borrowed(name), value));
        pos = skip_ws(data, next);
        match *data.get(pos)? {
            b',' => pos = skip_ws(data, pos + 1),
            b'}' => return Some((Headers { entries }, pos + 1)),
            _ => return None,
        }
    }
}

/// A string without escapes or control characters at `pos` (its opening
/// quote), and the position after its closing quote.
fn scan_string(data: &[u8], pos: usize) -> Option<(&str, usize)> {
    let start = expect(data, pos, b"\"")?;
    let mut end = start;
    // Eight bytes at a time while they are plain ASCII: no quote, backslash,
    // control character or byte of a multi-byte character.
    while let Some(chunk) = data.get(end..end + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        if has_zero_byte(word ^ splat(b'"'))
            || has_zero_byte(word ^ splat(b'\\'))
            || has_byte_below(word, 0x20)
            || word & splat(0x80) != 0
        {
            break;
        }
        end += 8;
    }
    loop {
        match *data.get(end)? {
            b'"' => break,
            b'\\' | 0..=0x1f => return None,
            _ => end += 1,
        }
    }
    let text = std::str::from_utf8(&data[start..end]).ok()?;
    Some((text, end + 1))
}

const fn splat(byte: u8) -> u64 {
    u64::from_ne_bytes([byte; 8])
}

fn has_zero_byte(word: u64) -> bool {
    word.wrapping_sub(splat(0x01)) & !word & splat(0x80) != 0
}

/// Whether any byte of `word` is below `limit` (at most 0x80).
fn has_byte_below(word: u64, limit: u8) -> bool {
    word.wrapping_sub(splat(limit)) & !word & splat(0x80) != 0
}

/// A JSON integer at `pos` that fits 64 bits, read as serde_json reads it.
fn scan_integer(data: &[u8], pos: usize) -> Option<(HeaderValue<'_>, usize)> {
    let digits_from = pos + usize::from(data[pos] == b'-');
    let digits = data[digits_from..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let end = digits_from + digits;
    let leading_zero = digits > 1 && data[digits_from] == b'0';
    let negative_zero = data[pos] == b'-' && digits == 1 && data[digits_from] == b'0';
    if digits == 0
        || leading_zero
        || negative_zero
        || matches!(data.get(end), Some(b'.' | b'e' | b'E'))
    {
        return None;
    }
    let text = std::str::from_utf8(&data[pos..end]).ok()?;
    let number = if data[pos] == b'-' {
        text.parse::<i64>().ok()? as f64
    } else {
        text.parse::<u64>().ok()? as f64
    };
    Some((HeaderValue::Num(number), end))
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
struct MaybeBorrowed<'a>(Cow<'a, str>);

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
            let scanned = scan_headers(text.as_bytes(), 0);
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
                        serde_json::Value::Number(n) => !n.is_f64(),
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
    fn header_scanner_leaves_unusual_numbers_to_serde_json() {
        for text in [
            r#"{"a":-0}"#,
            r#"{"a":1.5}"#,
            r#"{"a":1e3}"#,
            r#"{"a":01}"#,
            r#"{"a":18446744073709551616}"#,
        ] {
            assert!(scan_headers(text.as_bytes(), 0).is_none(), "{text}");
        }
        let (headers, _) = scan_headers(br#"{ "a" : -12 , "b":true,"c":"x"}"#, 0).unwrap();
        assert_eq!(headers.get("a"), Some(&HeaderValue::Num(-12.0)));
        assert_eq!(headers.get("b"), Some(&HeaderValue::Bool(true)));
        assert_eq!(headers.get("c"), Some(&HeaderValue::Str("x".into())));
    }
}
