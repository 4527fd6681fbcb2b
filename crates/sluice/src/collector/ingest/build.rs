//! Checking one event as a sender posted it and building its envelope:
//! required and allowed fields, header names and values within their
//! limits, the payload kept byte for byte. Text is borrowed from the body
//! wherever it has no escapes to undo.

use std::borrow::Cow;

use sluice_core::envelope::MaybeBorrowed;

use super::*;

/// An event as sent. Each top-level field is kept as its raw JSON (`null`
/// included, so that it is told apart from a missing field) and checked
/// in [`build`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IncomingEvent<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "present")]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    headers: Option<RawHeaders<'a>>,
    #[serde(borrow, default, deserialize_with = "present")]
    partition_key: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    event_id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    ts: Option<&'a RawValue>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

/// A field that is there, as its raw JSON, `null` too.
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// The text of a raw JSON value that is a string, else `None`.
fn string_of(raw: &RawValue) -> Option<Cow<'_, str>> {
    raw.get().starts_with('"').then(|| {
        serde_json::from_str::<MaybeBorrowed>(raw.get())
            .map(|MaybeBorrowed(text)| text)
            .ok()
    })?
}

/// The sender's headers: names and the raw JSON text of each value, in the
/// order sent. Values are copied into the envelope as written.
#[derive(Default)]
pub(super) struct RawHeaders<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for RawHeaders<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = RawHeaders<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of headers")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Self::Value, M::Error> {
                let mut headers: Vec<(Cow<'a, str>, &'a RawValue)> = Vec::new();
                while let Some(MaybeBorrowed(name)) = map.next_key::<MaybeBorrowed<'a>>()? {
                    if headers.len() == MAX_HEADERS {
                        return Err(serde::de::Error::custom(format!(
                            "more than {MAX_HEADERS} headers"
                        )));
                    }
                    let value: &'a RawValue = map.next_value()?;
                    if headers.iter().any(|(n, _)| *n == name) {
                        return Err(serde::de::Error::custom(format!(
                            "header `{name}` appears twice"
                        )));
                    }
                    headers.push((name, value));
                }
                Ok(RawHeaders(headers))
            }
        }
        deserializer.deserialize_map(Visit(std::marker::PhantomData))
    }
}

impl RawHeaders<'_> {
    fn get(&self, name: &str) -> Option<&RawValue> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }
}

/// Whether a JSON text nests arrays and objects more than `max` deep.
pub(super) fn nests_deeper_than(json: &[u8], max: usize) -> bool {
    // Nothing nests deeper than its count of opening brackets, and most
    // payloads have a few: counting them is quicker than reading strings.
    if memchr::memchr2_iter(b'[', b'{', json).take(max + 1).count() <= max {
        return false;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in json {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

pub(super) fn bad(reason: impl Into<String>) -> (u16, String) {
    (400, reason.into())
}

pub(super) fn short_string<'a>(
    raw: &'a RawValue,
    field: &str,
    max: usize,
) -> Result<Cow<'a, str>, (u16, String)> {
    match string_of(raw) {
        Some(s) if !s.is_empty() && s.chars().count() <= max => Ok(s),
        Some(_) => Err(bad(format!("`{field}` must be 1 to {max} characters"))),
        None => Err(bad(format!("`{field}` must be a string"))),
    }
}

/// An event's record, and the `event_id` its sender gave, if any.
pub(super) type Built<'a> = (PutRecord, Option<Cow<'a, str>>);

/// Checks one event as sent and builds its record.
pub(super) fn build<'a>(
    text: &'a [u8],
    rules: &IngestRules,
    clock: &dyn Clock,
    extras: &Extras,
) -> Result<Built<'a>, (u16, String)> {
    // No size check before parsing: whitespace and `partition_key` are not
    // part of the envelope, so only the envelope's size can be held to the
    // limit (the body's size bounds the parsing).
    // UTF-8 is checked once here, so that parsing from `str` checks no
    // string or raw value again.
    let text = std::str::from_utf8(text).map_err(|e| {
        bad(format!(
            "not valid JSON: the text is not UTF-8 (at byte {})",
            e.valid_up_to()
        ))
    })?;
    let event: IncomingEvent = serde_json::from_str(text).map_err(|e| {
        if e.is_data() {
            bad(format!("not a valid event: {e}"))
        } else {
            bad(format!("not valid JSON: {e}"))
        }
    })?;
    let kind = short_string(
        event.kind.ok_or_else(|| bad("missing `type`"))?,
        "type",
        MAX_NAME_CHARS,
    )?;
    let sender_headers = event.headers.unwrap_or_default();
    for (name, value) in &sender_headers.0 {
        if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
            return Err(bad(format!(
                "header names must be 1 to {MAX_NAME_CHARS} characters"
            )));
        }
        if matches!(name.as_ref(), "type" | "event_id" | "ts") {
            return Err(bad(format!(
                "header `{name}` is set from the top-level `{name}` field"
            )));
        }
        let raw = value.get();
        match raw.as_bytes()[0] {
            b'"' if raw.len() > MAX_HEADER_VALUE_BYTES => {
                return Err(bad(format!(
                    "header `{name}` is longer than {MAX_HEADER_VALUE_BYTES} bytes"
                )))
            }
            b'"' | b't' | b'f' => {}
            // Parsed as the envelope decoder will, so that no accepted event
            // carries a number the router cannot read (such as 1e999).
            b'-' | b'0'..=b'9' => {
                if serde_json::from_str::<f64>(raw).is_err() {
                    return Err(bad(format!("header `{name}`: number out of range")));
                }
            }
            _ => {
                return Err(bad(format!(
                    "header `{name}` must be a string, number or boolean"
                )))
            }
        }
    }
    if let Some(payload) = event.payload {
        if nests_deeper_than(payload.get().as_bytes(), MAX_PAYLOAD_DEPTH) {
            return Err(bad(format!(
                "payload nests deeper than {MAX_PAYLOAD_DEPTH} levels"
            )));
        }
    }
    let sender_id = match event.event_id {
        Some(value) => Some(short_string(value, "event_id", MAX_NAME_CHARS)?),
        None => None,
    };
    let event_id = sender_id
        .clone()
        .unwrap_or_else(|| Cow::Owned(clock.new_id()));
    let ts = match event.ts.map(string_of) {
        Some(Some(text)) => normalize_ts(&text)
            .ok_or_else(|| bad(format!("`ts` {text:?} is not an RFC 3339 time")))?,
        Some(None) => return Err(bad("`ts` must be an RFC 3339 string")),
        None => clock.now(),
    };
    let partition_key = match event.partition_key {
        Some(value) => short_string(value, "partition_key", MAX_PARTITION_KEY_CHARS)?.into_owned(),
        None => rules
            .partition_key_header
            .as_ref()
            .and_then(|h| sender_headers.get(h))
            .map(|raw| {
                serde_json::from_str::<String>(raw.get()).unwrap_or_else(|_| raw.get().to_owned())
            })
            .filter(|k| !k.is_empty() && k.chars().count() <= MAX_PARTITION_KEY_CHARS)
            .unwrap_or_else(|| event_id.clone().into_owned()),
    };
    let payload = event.payload.map(|raw| raw.get().as_bytes());
    let mut envelope = EnvelopeBuilder::with_capacity(text.len() + 128);
    envelope.header_str("type", &kind);
    let site_header = |name: &str| {
        extras
            .site_headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    };
    match (site_header("source"), sender_headers.get("source")) {
        (Some(source), _) => envelope.header_raw("source", source),
        (None, Some(source)) => envelope.header_raw("source", source.get().as_bytes()),
        (None, None) => envelope.header_str("source", &rules.source),
    }
    envelope.header_str("event_id", &event_id);
    envelope.header_str("ts", &ts);
    if let Some(tp) = extras
        .traceparent
        .filter(|_| sender_headers.get("traceparent").is_none())
    {
        envelope.header_str("traceparent", tp);
    }
    let stored_address = extras.client_address.is_some();
    for (name, value) in sender_headers.0.iter().filter(|(n, _)| {
        n != "source" && site_header(n).is_none() && !(stored_address && n == "client_address")
    }) {
        envelope.header_raw(name, value.get().as_bytes());
    }
    for (name, value) in extras.site_headers.iter().filter(|(n, _)| n != "source") {
        envelope.header_raw(name, value);
    }
    if let Some(address) = extras.client_address {
        envelope.header_str("client_address", address);
    }
    let data = envelope.finish(payload);
    if data.len() > rules.max_event_bytes {
        return Err((
            413,
            format!(
                "event makes a {}-byte record; the limit is {}",
                data.len(),
                rules.max_event_bytes
            ),
        ));
    }
    Ok((PutRecord::new(partition_key, data), sender_id))
}
