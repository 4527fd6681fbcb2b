//! Request bodies come from the internet: any bytes must give accepted
//! envelopes or reasons, never a panic; accepted records are envelopes.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice::collector::ingest::{ingest, BodyFormat, Clock, IngestRules, Ingested};

struct FixedClock;

impl Clock for FixedClock {
    fn now(&self) -> String {
        "2026-11-28T00:00:00.000Z".to_owned()
    }
    fn new_id(&self) -> String {
        "id".to_owned()
    }
}

fuzz_target!(|data: &[u8]| {
    let rules = IngestRules {
        max_event_bytes: 4096,
        max_events: 1000,
        partition_key_header: Some("session".into()),
        source: "web".into(),
    };
    for format in [BodyFormat::Json, BodyFormat::Ndjson] {
        if let Ok(Ingested::Accepted(records)) = ingest(&Bytes::copy_from_slice(data), format, &rules, &FixedClock) {
            for record in records {
                sluice_core::envelope::decode(&record.data).expect("accepted events make envelopes");
                assert!(record.data.len() <= 4096);
            }
        }
    }
});
