//! The sample website events (`sluice_core::sample`) as the collector wraps
//! them, for the benchmarks (this file is included by benchmarks of other
//! crates too).

use bytes::Bytes;
use serde_json::Value;
use sluice_core::stream::Record;
use sluice_core::SequenceNumber;
use sluice_core::{envelope, sample};

/// Up to `limit` sample events as envelopes, each padded to `size` bytes.
pub fn records(size: usize, limit: usize) -> Vec<Record> {
    sample::Sample::new(sample::DEFAULT_SEED)
        .take(limit)
        .enumerate()
        .map(|(i, event)| {
            let event: Value = serde_json::from_str(&event.to_json()).unwrap();
            let mut headers = vec![
                ("type".to_owned(), event["type"].clone()),
                ("source".to_owned(), Value::from("web")),
                (
                    "event_id".to_owned(),
                    Value::from(format!("0193a0b1-7c2d-7e3f-8a4b-{i:012}")),
                ),
                ("ts".to_owned(), event["ts"].clone()),
            ];
            for (k, v) in event["headers"].as_object().unwrap() {
                headers.push((k.clone(), v.clone()));
            }
            let payload = serde_json::to_string(&event["payload"]).unwrap();
            let head = envelope::encode(headers.iter().map(|(k, v)| (k.as_str(), v)), Some(b"{}"));
            let pad = size.saturating_sub(head.len() + payload.len() + 20);
            let padded = format!(r#"{{"event":{payload},"pad":"{}"}}"#, "x".repeat(pad));
            let data = envelope::encode(
                headers.iter().map(|(k, v)| (k.as_str(), v)),
                Some(padded.as_bytes()),
            );
            Record {
                sequence_number: SequenceNumber::from_u64(i as u64 + 1),
                partition_key: event["partition_key"].as_str().unwrap().into(),
                data: Bytes::from(data),
                arrival_ms: 0,
            }
        })
        .collect()
}
