//! Turning a request body into envelopes: one JSON event, a JSON array of
//! them, or NDJSON. Each event is checked on its own; the request is taken
//! whole or not at all, so a sender never has to work out which half of a
//! batch landed.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use sluice_core::envelope::EnvelopeBuilder;
use sluice_core::limits::MAX_PARTITION_KEY_CHARS;
use sluice_core::stream::PutRecord;

mod build;
mod split;

use build::build;
use split::split;

/// Most headers an event may carry.
pub const MAX_HEADERS: usize = 64;
/// Longest header name or event id.
pub const MAX_NAME_CHARS: usize = 128;
/// Longest string header value, as JSON text.
pub const MAX_HEADER_VALUE_BYTES: usize = 1024;
/// Deepest nesting of arrays and objects a payload may have, so that
/// consumers with a recursive parser can read every payload.
pub const MAX_PAYLOAD_DEPTH: usize = 64;

/// How the body is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFormat {
    /// `application/json`: one event object, or an array of them.
    Json,
    /// `application/x-ndjson` (or jsonl): one event per line.
    Ndjson,
    /// `text/plain`, what beacons and CORS-simple requests send: a JSON
    /// array of events when it starts with `[`, else NDJSON (a one-line
    /// event is NDJSON of one line).
    Text,
}

impl BodyFormat {
    /// The format for a Content-Type value, or `None` if unsupported.
    pub fn from_content_type(value: &str) -> Option<Self> {
        let essence = value.split(';').next().unwrap_or("").trim();
        let is = |name: &str| essence.eq_ignore_ascii_case(name);
        if is("application/json") {
            Some(BodyFormat::Json)
        } else if is("application/x-ndjson")
            || is("application/ndjson")
            || is("application/jsonl")
            || is("application/x-jsonlines")
        {
            Some(BodyFormat::Ndjson)
        } else if is("text/plain") {
            Some(BodyFormat::Text)
        } else {
            None
        }
    }
}

/// Settings the ingest checks use.
#[derive(Clone, Debug)]
pub struct IngestRules {
    pub max_event_bytes: usize,
    pub max_events: usize,
    pub partition_key_header: Option<String>,
    pub source: String,
}

/// Why one event was refused.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Rejection {
    /// Position of the event in the request (0-based; the line for NDJSON).
    pub index: usize,
    /// 400 for a bad event, 413 for one too large.
    pub status: u16,
    pub reason: String,
}

/// Why a whole body was refused before looking at events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyError {
    Empty,
    NotJson(String),
    NotEventOrArray,
    TooManyEvents { count: usize, limit: usize },
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Empty => f.write_str("the body holds no events"),
            BodyError::NotJson(e) => write!(f, "the body is not valid JSON: {e}"),
            BodyError::NotEventOrArray => {
                f.write_str("a JSON body is one event object or an array of them")
            }
            BodyError::TooManyEvents { count, limit } => {
                write!(f, "{count} events in one request; the limit is {limit}")
            }
        }
    }
}

/// The outcome of checking a body.
#[derive(Debug)]
pub enum Ingested {
    /// Every event is good: the records to write, in order.
    Accepted(Vec<PutRecord>),
    /// Some events are bad: nothing is written. `received` counts them all.
    Rejected {
        rejections: Vec<Rejection>,
        received: usize,
    },
}

/// What a request adds to each of its events.
#[derive(Clone, Copy, Debug, Default)]
pub struct Extras<'a> {
    /// The request's trace context, written into every event that does not
    /// carry its own (from the page that sent it).
    pub traceparent: Option<&'a str>,
    /// The sending site's headers (name, JSON text): they replace a
    /// sender's header of the same name.
    pub site_headers: &'a [(String, Vec<u8>)],
    /// Written as the `client_address` header, for sites that ask for it.
    pub client_address: Option<&'a str>,
}

/// Checks a body and builds the records to write. `clock` gives the event
/// time and id for events without them.
pub fn ingest(
    body: &Bytes,
    format: BodyFormat,
    rules: &IngestRules,
    clock: &dyn Clock,
) -> Result<Ingested, BodyError> {
    ingest_with(body, format, rules, clock, &Extras::default(), None)
}

/// As [`ingest`], with what the request adds to its events. With
/// `sender_ids`, the `event_id` each accepted event was sent with (`None`
/// where the collector made one) is pushed there, in order.
pub fn ingest_with(
    body: &Bytes,
    format: BodyFormat,
    rules: &IngestRules,
    clock: &dyn Clock,
    extras: &Extras,
    mut sender_ids: Option<&mut Vec<Option<String>>>,
) -> Result<Ingested, BodyError> {
    let events = split(body, format)?;
    if events.len() > rules.max_events {
        return Err(BodyError::TooManyEvents {
            count: events.len(),
            limit: rules.max_events,
        });
    }
    let received = events.len();
    let mut records = Vec::with_capacity(received);
    let mut rejections = Vec::new();
    for (index, text) in events {
        match build(text, rules, clock, extras) {
            Ok((record, sender_id)) => {
                records.push(record);
                if let Some(ids) = sender_ids.as_deref_mut() {
                    ids.push(sender_id.map(std::borrow::Cow::into_owned));
                }
            }
            Err((status, reason)) => rejections.push(Rejection {
                index,
                status,
                reason,
            }),
        }
    }
    Ok(if rejections.is_empty() {
        Ingested::Accepted(records)
    } else {
        Ingested::Rejected {
            rejections,
            received,
        }
    })
}

/// Where event times and ids come from, for events that lack them.
pub trait Clock {
    /// The time now, RFC 3339 in UTC with milliseconds.
    fn now(&self) -> String;
    /// A new event id.
    fn new_id(&self) -> String;
}

/// The real clock: the system time and UUIDv7 ids.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> String {
        format_ts(chrono::Utc::now())
    }
    /// A UUIDv7: the time in milliseconds, then 74 random bits from the
    /// thread's generator (seeded from the system, never a call per id).
    fn new_id(&self) -> String {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let random: [u8; 10] = rand::random();
        uuid::Builder::from_unix_timestamp_millis(millis, &random)
            .into_uuid()
            .to_string()
    }
}

/// RFC 3339 in, UTC with milliseconds out.
pub fn normalize_ts(text: &str) -> Option<String> {
    if is_normal_ts(text) {
        return Some(text.to_owned());
    }
    let parsed = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    Some(format_ts(parsed.with_timezone(&chrono::Utc)))
}

/// Whether a time is already as [`normalize_ts`] writes it
/// (`YYYY-MM-DDTHH:MM:SS.mmmZ`, a real date, no leap second): what the
/// tracker and most senders send, kept without parsing and formatting.
fn is_normal_ts(text: &str) -> bool {
    let b = text.as_bytes();
    let shape = b"dddd-dd-ddTdd:dd:dd.dddZ";
    if b.len() != shape.len()
        || !b.iter().zip(shape).all(|(&c, &s)| match s {
            b'd' => c.is_ascii_digit(),
            _ => c == s,
        })
    {
        return false;
    }
    let num = |at: usize, len: usize| {
        b[at..at + len]
            .iter()
            .fold(0u32, |n, &c| n * 10 + u32::from(c - b'0'))
    };
    num(11, 2) < 24
        && num(14, 2) < 60
        && num(17, 2) < 60
        && chrono::NaiveDate::from_ymd_opt(num(0, 4) as i32, num(5, 2), num(8, 2)).is_some()
}

pub fn format_ts(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::envelope::{decode, HeaderValue};

    #[test]
    fn system_ids_are_distinct_uuid_v7_in_time_order() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let ids: Vec<uuid::Uuid> = (0..10_000)
            .map(|_| SystemClock.new_id().parse().unwrap())
            .collect();
        assert!(ids.iter().all(|id| id.get_version_num() == 7));
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        let millis = |id: &uuid::Uuid| {
            let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
            secs * 1000 + u64::from(nanos) / 1_000_000
        };
        assert!(millis(&ids[0]) >= before);
        assert!(ids.windows(2).all(|w| millis(&w[0]) <= millis(&w[1])));
    }

    fn rules() -> IngestRules {
        IngestRules {
            max_event_bytes: 1024,
            max_events: 100,
            partition_key_header: Some("session".into()),
            source: "web".into(),
        }
    }

    struct FixedClock;
    impl Clock for FixedClock {
        fn now(&self) -> String {
            "2026-11-28T12:00:00.000Z".into()
        }
        fn new_id(&self) -> String {
            "0193-id".into()
        }
    }

    fn accept(body: &str, format: BodyFormat) -> Vec<PutRecord> {
        match ingest(&Bytes::from(body.to_owned()), format, &rules(), &FixedClock).unwrap() {
            Ingested::Accepted(records) => records,
            Ingested::Rejected { rejections: r, .. } => panic!("rejected: {r:?}"),
        }
    }

    fn reject(body: &str, format: BodyFormat) -> Vec<Rejection> {
        match ingest(&Bytes::from(body.to_owned()), format, &rules(), &FixedClock).unwrap() {
            Ingested::Accepted(_) => panic!("accepted {body}"),
            Ingested::Rejected { rejections: r, .. } => r,
        }
    }

    #[test]
    fn builds_envelopes_with_reserved_headers_first_and_payload_bytes_kept() {
        let body = r#"{"type":"purchase","headers":{"region":"eu","amount":12.5},"partition_key":"u-1","ts":"2026-11-28T13:40:05.123+01:00","payload":{ "b" : [1, 2.50] }}"#;
        let records = accept(body, BodyFormat::Json);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].partition_key, "u-1");
        let env = decode(&records[0].data).unwrap();
        let names: Vec<&str> = env.headers.iter().map(|(n, _)| n).collect();
        assert_eq!(names[..4], ["type", "source", "event_id", "ts"]);
        assert_eq!(
            env.headers.get("ts"),
            Some(&HeaderValue::Str("2026-11-28T12:40:05.123Z".into()))
        );
        assert_eq!(
            env.headers.get("event_id"),
            Some(&HeaderValue::Str("0193-id".into()))
        );
        assert_eq!(env.headers.get("amount"), Some(&HeaderValue::Num(12.5)));
        assert_eq!(env.payload, Some(&br#"{ "b" : [1, 2.50] }"#[..]));
    }

    #[test]
    fn fields_with_escapes_are_read_and_null_fields_are_refused_by_name() {
        let records = accept(
            r#"{"type":"a\u0062c","event_id":"id\"1","headers":{"n\u0061me":"v"}}"#,
            BodyFormat::Json,
        );
        let env = decode(&records[0].data).unwrap();
        assert_eq!(
            env.headers.get("type"),
            Some(&HeaderValue::Str("abc".into()))
        );
        assert_eq!(
            env.headers.get("event_id"),
            Some(&HeaderValue::Str("id\"1".into()))
        );
        assert_eq!(env.headers.get("name"), Some(&HeaderValue::Str("v".into())));
        assert_eq!(records[0].partition_key, "id\"1");
        for (body, reason) in [
            (r#"{"type":null}"#, "`type` must be a string"),
            (
                r#"{"type":"a","ts":null}"#,
                "`ts` must be an RFC 3339 string",
            ),
            (
                r#"{"type":"a","event_id":5}"#,
                "`event_id` must be a string",
            ),
            (
                r#"{"type":"a","partition_key":null}"#,
                "`partition_key` must be a string",
            ),
            (r#"{"type":""}"#, "`type` must be 1 to"),
        ] {
            let rejections = reject(body, BodyFormat::Json);
            assert!(
                rejections[0].reason.contains(reason),
                "{body}: {} should say {reason}",
                rejections[0].reason
            );
        }
    }

    #[test]
    fn header_values_are_copied_as_written_and_duplicates_refused() {
        let records = accept(
            r#"{"type":"a","headers":{"big":1E+2,"s":"caf\u00e9","source":"app"}}"#,
            BodyFormat::Json,
        );
        let text = String::from_utf8(records[0].data.to_vec()).unwrap();
        assert!(text.contains(r#""big":1E+2"#), "{text}");
        assert!(text.contains(r#""s":"caf\u00e9""#), "{text}");
        assert!(
            text.starts_with(r#"{"headers":{"type":"a","source":"app","event_id""#),
            "{text}"
        );
        let rejections = reject(r#"{"type":"a","headers":{"x":1,"x":2}}"#, BodyFormat::Json);
        assert!(
            rejections[0].reason.contains("appears twice"),
            "{rejections:?}"
        );
        // Found by fuzzing: valid JSON, but beyond what a reader can hold.
        let rejections = reject(
            r#"{"type":"a","headers":{"n":35999e999}}"#,
            BodyFormat::Json,
        );
        assert!(
            rejections[0].reason.contains("number out of range"),
            "{rejections:?}"
        );
        let rejections = reject(r#"{"type":"a","headers":{"x":null}}"#, BodyFormat::Json);
        assert!(
            rejections[0].reason.contains("string, number or boolean"),
            "{rejections:?}"
        );
    }

    #[test]
    fn arrays_and_ndjson_carry_many_events() {
        let array = r#"[{"type":"a"}, {"type":"b","headers":{"session":"s-9"}}]"#;
        let records = accept(array, BodyFormat::Json);
        assert_eq!(records.len(), 2);
        assert_eq!(
            records[0].partition_key, "0193-id",
            "event id when nothing else"
        );
        assert_eq!(records[1].partition_key, "s-9", "the configured header");
        let ndjson = "{\"type\":\"a\"}\r\n\n{\"type\":\"b\",\"event_id\":\"e-2\"}\n";
        let records = accept(ndjson, BodyFormat::Ndjson);
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].partition_key, "e-2");
    }

    #[test]
    fn each_bad_event_gets_its_reason_and_nothing_is_taken() {
        let big = format!(r#"{{"type":"a","payload":"{}"}}"#, "x".repeat(2000));
        let body = [
            r#"{"type":"ok"}"#,
            r#"{"type":"ok""#,
            r#"{"payload":1}"#,
            r#"{"type":"a","colour":"red"}"#,
            r#"{"type":"a","headers":{"nested":{"x":1}}}"#,
            r#"{"type":"a","headers":{"type":"b"}}"#,
            r#"{"type":"a","ts":"yesterday"}"#,
            r#"{"type":7}"#,
            &big,
            "[1,2]",
        ]
        .join("\n");
        let rejections = reject(&body, BodyFormat::Ndjson);
        let reasons: Vec<(usize, u16, &str)> = rejections
            .iter()
            .map(|r| (r.index, r.status, r.reason.as_str()))
            .collect();
        let expect = [
            (1, 400, "not valid JSON"),
            (2, 400, "missing `type`"),
            (3, 400, "unknown field `colour`"),
            (4, 400, "must be a string, number or boolean"),
            (5, 400, "set from the top-level"),
            (6, 400, "not an RFC 3339 time"),
            (7, 400, "`type` must be a string"),
            (8, 413, "limit is 1024"),
            (9, 400, "not a valid event"),
        ];
        assert_eq!(reasons.len(), expect.len(), "{reasons:?}");
        for ((index, status, reason), (ei, es, er)) in reasons.iter().zip(expect) {
            assert_eq!((*index, *status), (ei, es), "{reason}");
            assert!(reason.contains(er), "{reason} should say {er}");
        }
    }

    #[test]
    fn whole_bodies_that_are_not_events_are_refused() {
        let r = rules();
        let check = |body: &[u8], format| {
            ingest(&Bytes::copy_from_slice(body), format, &r, &FixedClock).unwrap_err()
        };
        assert_eq!(check(b"", BodyFormat::Json), BodyError::Empty);
        assert_eq!(check(b"  \n ", BodyFormat::Ndjson), BodyError::Empty);
        assert_eq!(check(b"[]", BodyFormat::Json), BodyError::Empty);
        assert_eq!(check(b"42", BodyFormat::Json), BodyError::NotEventOrArray);
        assert!(matches!(
            check(b"[{\"type\":\"a\"},", BodyFormat::Json),
            BodyError::NotJson(_)
        ));
        assert!(matches!(
            check(b"\xff\xfe", BodyFormat::Json),
            BodyError::NotJson(_)
        ));
        let many = "{\"type\":\"a\"}\n".repeat(101);
        assert_eq!(
            check(many.as_bytes(), BodyFormat::Ndjson),
            BodyError::TooManyEvents {
                count: 101,
                limit: 100
            }
        );
    }

    #[test]
    fn deep_payloads_and_invalid_utf8_are_rejected_per_event() {
        let deep = format!(
            r#"{{"type":"a","payload":{}{}}}"#,
            "[".repeat(300),
            "]".repeat(300)
        );
        let rejections = reject(&deep, BodyFormat::Ndjson);
        assert_eq!(rejections[0].status, 400);
        assert!(
            rejections[0].reason.contains("nests deeper than 64"),
            "{:?}",
            rejections[0]
        );
        let one_too_deep = format!(
            r#"{{"type":"a","payload":{}{}}}"#,
            "[".repeat(65),
            "]".repeat(65)
        );
        assert_eq!(reject(&one_too_deep, BodyFormat::Ndjson)[0].status, 400);
        let nested_ok = format!(
            r#"{{"type":"a","payload":{}"[{{]\"}}"{}}}"#,
            "[".repeat(64),
            "]".repeat(64)
        );
        assert_eq!(
            accept(&nested_ok, BodyFormat::Ndjson).len(),
            1,
            "brackets inside strings do not count"
        );
        // A whole body nested far deeper than any limit is refused, not a crash.
        let deep_body = format!("[{}{}]", "[".repeat(100_000), "]".repeat(100_000));
        let outcome = ingest(
            &Bytes::from(deep_body),
            BodyFormat::Json,
            &rules(),
            &FixedClock,
        );
        assert!(!matches!(outcome, Ok(Ingested::Accepted(_))));
        let body = Bytes::from_static(b"{\"type\":\"a\xff\"}");
        let Ingested::Rejected { rejections: r, .. } =
            ingest(&body, BodyFormat::Ndjson, &rules(), &FixedClock).unwrap()
        else {
            panic!("accepted invalid UTF-8");
        };
        assert_eq!(r[0].status, 400);
    }

    #[test]
    fn content_types() {
        assert_eq!(
            BodyFormat::from_content_type("application/json; charset=utf-8"),
            Some(BodyFormat::Json)
        );
        assert_eq!(
            BodyFormat::from_content_type("Application/X-NDJSON"),
            Some(BodyFormat::Ndjson)
        );
        assert_eq!(
            BodyFormat::from_content_type("text/plain;charset=UTF-8"),
            Some(BodyFormat::Text)
        );
        assert_eq!(BodyFormat::from_content_type("text/html"), None);
        assert_eq!(BodyFormat::from_content_type(""), None);
    }

    #[test]
    fn text_bodies_are_ndjson_or_a_json_array() {
        let ndjson = "{\"type\":\"a\"}\n{\"type\":\"b\"}\n";
        let array = " [{\"type\":\"a\"},{\"type\":\"b\"}]";
        for body in [ndjson, array] {
            match ingest(&Bytes::from(body), BodyFormat::Text, &rules(), &FixedClock).unwrap() {
                Ingested::Accepted(records) => assert_eq!(records.len(), 2, "{body}"),
                Ingested::Rejected { rejections: r, .. } => panic!("{body}: {r:?}"),
            }
        }
    }

    #[test]
    fn site_headers_replace_the_senders_and_the_address_is_stored_only_when_asked() {
        let body = Bytes::from(
            "{\"type\":\"click\",\"event_id\":\"e-1\",\"headers\":{\"site\":\"forged\",\"region\":\"eu\",\"client_address\":\"1.2.3.4\"}}",
        );
        let site_headers = vec![
            ("site".to_owned(), b"\"shop\"".to_vec()),
            ("source".to_owned(), b"\"shop-web\"".to_vec()),
        ];
        let extras = Extras {
            traceparent: None,
            site_headers: &site_headers,
            client_address: Some("203.0.113.9"),
        };
        let mut ids = Vec::new();
        let Ingested::Accepted(records) = ingest_with(
            &body,
            BodyFormat::Json,
            &rules(),
            &FixedClock,
            &extras,
            Some(&mut ids),
        )
        .unwrap() else {
            panic!("rejected")
        };
        assert_eq!(ids, [Some("e-1".to_owned())]);
        let envelope = decode(&records[0].data).unwrap();
        let text = |name: &str| match envelope.headers.get(name) {
            Some(HeaderValue::Str(s)) => s.clone(),
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(text("site"), "shop");
        assert_eq!(text("source"), "shop-web");
        assert_eq!(text("region"), "eu");
        assert_eq!(text("client_address"), "203.0.113.9");
        assert_eq!(
            std::str::from_utf8(&records[0].data)
                .unwrap()
                .matches("\"site\"")
                .count(),
            1,
            "each header once"
        );
        // Without the site asking, the collector stores no address (the
        // sender's own header of that name is the sender's data).
        let plain = Extras {
            client_address: None,
            ..extras
        };
        let Ingested::Accepted(records) =
            ingest_with(&body, BodyFormat::Json, &rules(), &FixedClock, &plain, None).unwrap()
        else {
            panic!("rejected")
        };
        assert_eq!(
            decode(&records[0].data)
                .unwrap()
                .headers
                .get("client_address"),
            Some(&HeaderValue::Str("1.2.3.4".into()))
        );
    }

    /// Times already in the normal form are kept as sent; every other
    /// text goes through the parser. Both give what the parser alone gives.
    fn parsed(text: &str) -> Option<String> {
        let at = chrono::DateTime::parse_from_rfc3339(text).ok()?;
        Some(format_ts(at.with_timezone(&chrono::Utc)))
    }

    #[test]
    fn times_in_the_normal_form_are_kept_and_others_normalised() {
        for (text, want) in [
            ("2026-11-28T14:00:00.016Z", Some("2026-11-28T14:00:00.016Z")),
            ("2024-02-29T23:59:59.999Z", Some("2024-02-29T23:59:59.999Z")),
            ("2026-02-29T10:00:00.000Z", None),
            ("2026-04-31T10:00:00.000Z", None),
            ("2026-13-01T10:00:00.000Z", None),
            ("2026-11-28T24:00:00.000Z", None),
            ("2026-11-28T14:60:00.000Z", None),
            ("2026-11-28T14:00:00.016z", Some("2026-11-28T14:00:00.016Z")),
            (
                "2026-11-28T15:00:00.016+01:00",
                Some("2026-11-28T14:00:00.016Z"),
            ),
            ("2026-11-28T14:00:00Z", Some("2026-11-28T14:00:00.000Z")),
        ] {
            assert_eq!(normalize_ts(text).as_deref(), want, "{text}");
            assert_eq!(normalize_ts(text), parsed(text), "{text}");
        }
    }

    proptest::proptest! {
        #[test]
        fn the_normal_form_shortcut_agrees_with_the_parser(
            year in 0u32..10_000,
            month in 0u32..14,
            day in 0u32..33,
            hour in 0u32..26,
            minute in 0u32..62,
            second in 0u32..62,
            millis in 0u32..1000,
        ) {
            let text = format!(
                "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z"
            );
            proptest::prop_assert_eq!(normalize_ts(&text), parsed(&text), "{}", text);
        }
    }
}
