//! The router as one pure function: a batch of inbound records in, the
//! records for each output stream out. The Lambda function and the
//! self-hosted worker are adapters around [`route_batch`].
//!
//! Only headers are read; payload bytes pass through unchanged, and each
//! output keeps its record's partition key, so order per key carries over.
//! KPL aggregates are opened: each user record inside is routed on its own,
//! in order, with its own partition key.

use std::borrow::Cow;

use base64::Engine;
use bytes::Bytes;

use crate::aggregate::{self, AggregateError};
use crate::envelope::{decode_headers_into, EnvelopeError, Headers};
use crate::limits::MAX_RECORD_BYTES;
use crate::rules::{Decision, RuleSet};
use crate::stream::{PartitionKey, PutRecord, Record};

/// Most upstream contexts a batch gathers (and continues with spans).
pub const MAX_TRACE_CONTEXTS: usize = 128;

/// How much of a record a dead-letter entry keeps.
pub const DEAD_LETTER_KEEP_BYTES: usize = 256 * 1024;

/// Why a record went to dead-letter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeadLetterReason {
    NotEnvelope(EnvelopeError),
    TooLarge {
        size: usize,
        limit: usize,
    },
    /// A KPL aggregate whose digest matches but whose content does not decode.
    BadAggregate(AggregateError),
    /// A record the transport could not hand over whole (bad base64, no
    /// sequence number): what is wrong.
    BadRecord(String),
}

impl DeadLetterReason {
    pub fn code(&self) -> &'static str {
        match self {
            DeadLetterReason::NotEnvelope(e) => e.code(),
            DeadLetterReason::TooLarge { .. } => "too_large",
            DeadLetterReason::BadAggregate(_) => "bad_aggregate",
            DeadLetterReason::BadRecord(_) => "bad_record",
        }
    }

    pub fn detail(&self) -> String {
        match self {
            DeadLetterReason::NotEnvelope(e) => e.to_string(),
            DeadLetterReason::TooLarge { size, limit } => {
                format!("{size} bytes is over the {limit}-byte router limit")
            }
            DeadLetterReason::BadAggregate(e) => e.to_string(),
            DeadLetterReason::BadRecord(what) => what.clone(),
        }
    }
}

/// Options of the pure router.
#[derive(Clone, Debug)]
pub struct RouterOptions {
    /// Name of the stream records are read from, recorded in dead-letter headers.
    pub source_stream: String,
    /// Records larger than this go to dead-letter.
    pub max_record_bytes: usize,
    /// Gather the batch's distinct `traceparent` headers (when spans are
    /// exported; otherwise the lookup is skipped).
    pub trace_context: bool,
}

impl RouterOptions {
    pub fn new(source_stream: impl Into<String>) -> Self {
        Self {
            source_stream: source_stream.into(),
            max_record_bytes: MAX_RECORD_BYTES,
            trace_context: false,
        }
    }
}

/// What one batch produced.
#[derive(Debug, Default)]
pub struct RoutedBatch {
    /// Records per output stream, indexed like [`RuleSet::streams`], each in
    /// input order.
    pub outputs: Vec<Vec<PutRecord>>,
    /// For each output record, the index of the input record it came from.
    pub sources: Vec<Vec<u32>>,
    /// Records each route matched, indexed like [`RuleSet::route_names`].
    pub per_route: Vec<u64>,
    pub unmatched: u64,
    /// Dead-lettered records by reason code.
    pub dead_letters: Vec<(&'static str, u64)>,
    /// The distinct `traceparent` headers of the batch, in order of first
    /// appearance, at most [`MAX_TRACE_CONTEXTS`]: the contexts the router
    /// continues.
    pub traceparents: Vec<String>,
}

impl RoutedBatch {
    fn count_dead_letter(&mut self, code: &'static str) {
        match self.dead_letters.iter_mut().find(|(c, _)| *c == code) {
            Some((_, n)) => *n += 1,
            None => self.dead_letters.push((code, 1)),
        }
    }
}

/// One routable unit: a plain record, or one user record of an aggregate.
pub struct Unit<'a> {
    pub record: &'a Record,
    /// Index of `record` in the batch.
    pub source: u32,
    /// Position inside the aggregate, for an aggregated user record.
    pub sub_sequence: Option<u32>,
    pub partition_key: PartitionKey,
    pub data: Cow<'a, Bytes>,
}

/// Opens the KPL aggregates of a batch: the units to route, in order, and
/// the aggregates that could not be opened (by index into `records`).
pub fn units(records: &[Record]) -> (Vec<Unit<'_>>, Vec<(usize, AggregateError)>) {
    let mut units = Vec::with_capacity(records.len());
    let mut corrupt = Vec::new();
    for (index, record) in records.iter().enumerate() {
        let opened = if record.data.starts_with(&aggregate::MAGIC) {
            aggregate::deaggregate(&record.data)
        } else {
            Ok(None)
        };
        match opened {
            Ok(None) => units.push(Unit {
                record,
                source: index as u32,
                sub_sequence: None,
                partition_key: record.partition_key.clone(),
                data: Cow::Borrowed(&record.data),
            }),
            Ok(Some(inside)) => {
                units.extend(inside.into_iter().enumerate().map(|(sub, user)| Unit {
                    record,
                    source: index as u32,
                    sub_sequence: Some(sub as u32),
                    partition_key: user.partition_key,
                    data: Cow::Owned(user.data),
                }))
            }
            Err(error) => corrupt.push((index, error)),
        }
    }
    (units, corrupt)
}

/// Routes a batch of records.
pub fn route_batch(rules: &RuleSet, options: &RouterOptions, records: &[Record]) -> RoutedBatch {
    let mut batch = RoutedBatch {
        outputs: Vec::with_capacity(rules.streams().len()),
        per_route: vec![0; rules.route_names().len()],
        ..RoutedBatch::default()
    };
    let (units, corrupt) = units(records);
    // First decide where each unit goes, then fill outputs sized exactly.
    let mut placements: Vec<(u32, Result<u16, DeadLetterReason>)> =
        Vec::with_capacity(units.len() + units.len() / 2);
    let mut counts = vec![0usize; rules.streams().len()];
    counts[rules.dead_letter_stream()] += corrupt.len();
    let (mut targets, mut matched) = (Vec::new(), Vec::new());
    // One allocation for every record's headers.
    let mut headers = Headers::default();
    for (index, unit) in units.iter().enumerate() {
        let decoded = if unit.data.len() > options.max_record_bytes {
            Err(DeadLetterReason::TooLarge {
                size: unit.data.len(),
                limit: options.max_record_bytes,
            })
        } else {
            decode_headers_into(&unit.data, &mut headers).map_err(DeadLetterReason::NotEnvelope)
        };
        match decoded {
            Ok(()) => {
                let gathering =
                    options.trace_context && batch.traceparents.len() < MAX_TRACE_CONTEXTS;
                if let Some(crate::envelope::HeaderValue::Str(tp)) =
                    gathering.then(|| headers.get("traceparent")).flatten()
                {
                    if batch.traceparents.last().map(String::as_str) != Some(tp.as_ref())
                        && !batch.traceparents.iter().any(|seen| seen == tp.as_ref())
                    {
                        batch.traceparents.push(tp.to_string());
                    }
                }
                if rules.route(&headers, &mut targets, &mut matched) == Decision::Unmatched {
                    batch.unmatched += 1;
                }
                for &route in &matched {
                    batch.per_route[route] += 1;
                }
                for &stream in &targets {
                    counts[stream] += 1;
                    placements.push((index as u32, Ok(stream as u16)));
                }
            }
            Err(reason) => {
                batch.count_dead_letter(reason.code());
                counts[rules.dead_letter_stream()] += 1;
                placements.push((index as u32, Err(reason)));
            }
        }
    }
    batch
        .outputs
        .extend(counts.iter().map(|n| Vec::with_capacity(*n)));
    batch
        .sources
        .extend(counts.iter().map(|n| Vec::with_capacity(*n)));
    let dead_letter_stream = rules.dead_letter_stream();
    for (index, error) in corrupt {
        let record = &records[index];
        let reason = DeadLetterReason::BadAggregate(error);
        batch.count_dead_letter(reason.code());
        let unit = Unit {
            record,
            source: index as u32,
            sub_sequence: None,
            partition_key: record.partition_key.clone(),
            data: Cow::Borrowed(&record.data),
        };
        batch.outputs[dead_letter_stream].push(dead_letter(options, &unit, &reason));
        batch.sources[dead_letter_stream].push(index as u32);
    }
    for (index, placement) in placements {
        let unit = &units[index as usize];
        let (stream, record) = match placement {
            Ok(stream) => (
                stream as usize,
                PutRecord {
                    partition_key: unit.partition_key.clone(),
                    explicit_hash_key: None,
                    data: unit.data.clone().into_owned(),
                },
            ),
            Err(reason) => (dead_letter_stream, dead_letter(options, unit, &reason)),
        };
        batch.outputs[stream].push(record);
        batch.sources[stream].push(unit.source);
    }
    batch
}

/// The dead-letter envelope for a unit: the reason in its headers, the
/// original bytes (up to [`DEAD_LETTER_KEEP_BYTES`]) base64-encoded in its payload.
pub fn dead_letter(
    options: &RouterOptions,
    unit: &Unit<'_>,
    reason: &DeadLetterReason,
) -> PutRecord {
    let kept = &unit.data[..unit.data.len().min(DEAD_LETTER_KEEP_BYTES)];
    let mut headers = serde_json::json!({
        "type": "dead_letter",
        "reason": reason.code(),
        "detail": truncate(&reason.detail(), 512),
        "source_stream": options.source_stream,
        "source_sequence": unit.record.sequence_number.as_str(),
    });
    if let Some(sub) = unit.sub_sequence {
        headers["source_sub_sequence"] = sub.into();
    }
    let payload = serde_json::json!({
        "original_base64": base64::engine::general_purpose::STANDARD.encode(kept),
        "original_size": unit.data.len(),
        "truncated": kept.len() < unit.data.len(),
    });
    let payload = serde_json::to_vec(&payload).expect("serialize payload");
    let headers = headers.as_object().expect("object");
    let data =
        crate::envelope::encode(headers.iter().map(|(k, v)| (k.as_str(), v)), Some(&payload));
    PutRecord {
        partition_key: unit.partition_key.clone(),
        explicit_hash_key: None,
        data: Bytes::from(data),
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{decode, HeaderValue};
    use crate::rules::{DeadLetter, Route, Unmatched};
    use crate::SequenceNumber;

    fn record(seq: u64, key: &str, data: &[u8]) -> Record {
        Record {
            sequence_number: SequenceNumber::from_u64(seq),
            partition_key: key.into(),
            data: Bytes::copy_from_slice(data),
            arrival_ms: 0,
        }
    }

    fn rules() -> RuleSet {
        let routes: Vec<Route> = toml::from_str::<toml::Table>(
            r#"
[[routes]]
name = "purchases"
match = { type = ["purchase"] }
to = ["transactions"]
"#,
        )
        .unwrap()["routes"]
            .clone()
            .try_into()
            .unwrap();
        RuleSet::new(&routes, &Unmatched::default(), &DeadLetter::default())
    }

    #[test]
    fn distinct_trace_contexts_are_gathered_in_order_up_to_the_bound() {
        let rules = rules();
        let records: Vec<Record> = (0..MAX_TRACE_CONTEXTS as u64 + 50)
            .flat_map(|i| {
                let data = format!(
                    r#"{{"headers":{{"traceparent":"00-{:032x}-{:016x}-01","type":"click"}},"payload":{{}}}}"#,
                    i + 1,
                    i + 1
                );
                // Each context twice in a row, as a request of two events.
                [record(2 * i, "k", data.as_bytes()), record(2 * i + 1, "k", data.as_bytes())]
            })
            .collect();
        let mut options = RouterOptions::new("inbound");
        assert!(route_batch(&rules, &options, &records)
            .traceparents
            .is_empty());
        options.trace_context = true;
        let gathered = route_batch(&rules, &options, &records).traceparents;
        assert_eq!(gathered.len(), MAX_TRACE_CONTEXTS);
        assert_eq!(gathered[0], format!("00-{:032x}-{:016x}-01", 1, 1));
        assert_eq!(
            gathered[MAX_TRACE_CONTEXTS - 1],
            format!("00-{:032x}-{:016x}-01", 128, 128)
        );
    }

    #[test]
    fn routes_pass_bytes_and_keys_through_in_order() {
        let rules = rules();
        let records = vec![
            record(
                1,
                "u-1",
                br#"{"headers":{"type":"purchase"},"payload":{"n":1}}"#,
            ),
            record(2, "u-2", br#"{"headers":{"type":"click"},"payload":1}"#),
            record(
                3,
                "u-1",
                br#"{"headers":{"type":"purchase"},"payload":{"n":2}}"#,
            ),
        ];
        let batch = route_batch(&rules, &RouterOptions::new("inbound"), &records);
        let transactions = &batch.outputs[0];
        assert_eq!(transactions.len(), 2);
        assert_eq!(transactions[0].data, records[0].data);
        assert_eq!(transactions[1].data, records[2].data);
        assert_eq!(transactions[1].partition_key, "u-1");
        assert_eq!(
            batch.outputs[rules.unmatched_stream()][0].data,
            records[1].data
        );
        assert_eq!(batch.per_route, [2]);
        assert_eq!(batch.unmatched, 1);
    }

    #[test]
    fn bad_records_go_to_dead_letter_with_their_reason() {
        let rules = rules();
        let options = RouterOptions {
            source_stream: "inbound".into(),
            max_record_bytes: 64,
            trace_context: false,
        };
        let big = format!(
            r#"{{"headers":{{"type":"purchase"}},"payload":"{}"}}"#,
            "x".repeat(100)
        );
        let records = vec![
            record(7, "k", b"\xff not json"),
            record(8, "k", big.as_bytes()),
        ];
        let batch = route_batch(&rules, &options, &records);
        let dead = &batch.outputs[rules.dead_letter_stream()];
        assert_eq!(dead.len(), 2);
        let first = decode(&dead[0].data).unwrap();
        assert_eq!(
            first.headers.get("reason"),
            Some(&HeaderValue::Str("not_json".into()))
        );
        assert_eq!(
            first.headers.get("source_sequence"),
            Some(&HeaderValue::Str("7".into()))
        );
        let payload: serde_json::Value = serde_json::from_slice(first.payload.unwrap()).unwrap();
        let original = base64::engine::general_purpose::STANDARD
            .decode(payload["original_base64"].as_str().unwrap())
            .unwrap();
        assert_eq!(original, b"\xff not json");
        let second = decode(&dead[1].data).unwrap();
        assert_eq!(
            second.headers.get("reason"),
            Some(&HeaderValue::Str("too_large".into()))
        );
        assert_eq!(batch.dead_letters, [("not_json", 1), ("too_large", 1)]);
    }

    #[test]
    fn aggregates_are_opened_and_each_user_record_routed() {
        use crate::aggregate::{Aggregator, MAGIC};
        use md5::{Digest, Md5};
        let rules = rules();
        let mut aggregator = Aggregator::new();
        aggregator.push(
            "u-1",
            None,
            Bytes::from_static(br#"{"headers":{"type":"purchase"},"payload":1}"#),
        );
        aggregator.push("u-2", None, Bytes::from_static(b"not an envelope"));
        aggregator.push(
            "u-1",
            None,
            Bytes::from_static(br#"{"headers":{"type":"purchase"},"payload":2}"#),
        );
        let aggregate = aggregator.finish();
        // A valid digest over a body that is not an AggregatedRecord.
        let mut corrupt = MAGIC.to_vec();
        corrupt.extend_from_slice(&[0x1a, 0x7f]);
        corrupt.extend_from_slice(&Md5::digest([0x1a, 0x7f]));
        let records = vec![
            record(1, "u-1", &aggregate),
            record(2, "u-3", br#"{"headers":{"type":"click"}}"#),
            record(3, "u-4", &corrupt),
        ];
        let batch = route_batch(&rules, &RouterOptions::new("inbound"), &records);
        let transactions = &batch.outputs[0];
        assert_eq!(transactions.len(), 2);
        assert_eq!(
            &transactions[0].data[..],
            br#"{"headers":{"type":"purchase"},"payload":1}"#
        );
        assert_eq!(
            &transactions[1].data[..],
            br#"{"headers":{"type":"purchase"},"payload":2}"#
        );
        assert!(transactions.iter().all(|r| r.partition_key == "u-1"));
        assert_eq!(batch.sources[0], [0, 0], "both came from the aggregate");
        assert_eq!(batch.sources[rules.unmatched_stream()], [1]);
        let mut dead_sources = batch.sources[rules.dead_letter_stream()].clone();
        dead_sources.sort();
        assert_eq!(dead_sources, [0, 2]);
        assert_eq!(batch.outputs[rules.unmatched_stream()].len(), 1);
        let dead: Vec<_> = batch.outputs[rules.dead_letter_stream()]
            .iter()
            .map(|r| decode(&r.data).unwrap().headers)
            .collect();
        assert_eq!(dead.len(), 2);
        let by_reason = |code: &str| {
            dead.iter()
                .find(|h| h.get("reason") == Some(&HeaderValue::Str(code.into())))
                .unwrap_or_else(|| panic!("no {code} in {dead:?}"))
        };
        let inside = by_reason("not_json");
        assert_eq!(
            inside.get("source_sequence"),
            Some(&HeaderValue::Str("1".into()))
        );
        assert_eq!(
            inside.get("source_sub_sequence"),
            Some(&HeaderValue::Num(1.0))
        );
        let bad = by_reason("bad_aggregate");
        assert_eq!(
            bad.get("source_sequence"),
            Some(&HeaderValue::Str("3".into()))
        );
        let mut reasons = batch.dead_letters.clone();
        reasons.sort();
        assert_eq!(reasons, [("bad_aggregate", 1), ("not_json", 1)]);
    }
}
