//! A view's keeper on embedded storage: one worker, one view (a count per
//! event type per minute, or a sum of `amount` per region), over sample
//! events already in a 4-shard stream. Reports events/s from the keeper's
//! start to the last event applied, and checks each was applied once.
//!
//! cargo bench -p sluice --bench view_keeper
//! (without --bench, as the test command runs it: a small run, checked)

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::views::{ViewConfig, Views};
use sluice_backends::local::{LocalBackend, LocalStreamOptions};
use sluice_client::{Producer, ProducerConfig};
use sluice_core::envelope::EnvelopeBuilder;
use sluice_core::sample::Sample;
use sluice_core::stream::PutRecord;
use sluice_core::{StreamBackend, TableBackend};
use sluice_telemetry::metrics;

// The allocator of the `sluice` binary that runs the keepers.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn view(name: &str, toml: &str) -> Arc<sluice::views::ViewSpec> {
    let config: ViewConfig =
        toml::from_str(&format!("name = \"{name}\"\nfrom = \"events\"\n{toml}")).unwrap();
    Arc::new(config.check("views[0]").unwrap())
}

#[tokio::main]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let events: u64 = if full { 400_000 } else { 4_000 };
    let dir = tempfile::tempdir().unwrap();
    let local = LocalBackend::open(dir.path(), LocalStreamOptions::default()).unwrap();
    let streams: Arc<dyn StreamBackend> = local.streams.clone();
    let tables: Arc<dyn TableBackend> = local.table.clone();
    streams.create_stream("events", 4).await.unwrap();
    let producer = Producer::start(streams.clone(), "events", ProducerConfig::default())
        .await
        .unwrap();
    // Envelopes as the collector writes them, an hour of the sample's time.
    let start = chrono::Utc::now().timestamp_millis() - 3_600_000;
    let sample: Vec<_> = Sample::starting_at(1, start)
        .take(events as usize)
        .collect();
    for chunk in sample.chunks(2000) {
        let records = chunk
            .iter()
            .map(|e| {
                let mut envelope = EnvelopeBuilder::with_capacity(512);
                envelope.header_str("type", e.kind);
                envelope.header_str("source", "web");
                envelope.header_str("event_id", &uuid::Uuid::now_v7().to_string());
                envelope.header_str(
                    "ts",
                    &chrono::DateTime::from_timestamp_millis(e.ts_ms)
                        .unwrap()
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                );
                for (name, value) in &e.headers {
                    envelope.header_value(name, value);
                }
                let payload = e.payload.to_string();
                PutRecord::new(
                    e.partition_key.as_str(),
                    envelope.finish(Some(payload.as_bytes())),
                )
            })
            .collect();
        producer.send(records).await.unwrap();
    }
    producer.close().await;

    for (name, spec) in [
        ("count-types", "kind = \"count\"\ngroup_by = \"type\"\nwindow = \"1m\""),
        ("sum-sales", "kind = \"sum\"\nfield = \"amount\"\ngroup_by = \"region\"\nwindow = \"1h\"\nmatch = { type = [\"purchase\"] }"),
    ] {
        let spec = view(name, spec);
        let expected = match name {
            "count-types" => events,
            _ => sample.iter().filter(|e| e.kind == "purchase").count() as u64,
        };
        let views = Arc::new(Views {
            specs: vec![spec],
            tables: tables.clone(),
            table: "views".into(),
        });
        let applied = metrics::VIEW_RECORDS.counter(&[("view", name), ("outcome", "applied")]);
        let started = Instant::now();
        let running = views
            .start(
                streams.clone(),
                "bench",
                Duration::from_secs(10),
                sluice_core::retry::Backoff::default(),
            )
            .await
            .unwrap();
        while applied.get() < expected {
            assert!(started.elapsed() < Duration::from_secs(600), "the view stopped at {}", applied.get());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        running.stop().await;
        assert_eq!(applied.get(), expected, "each event applied once");
        println!(
            "{name}: {events} events ({expected} in the view) in {elapsed:.2} s = {:.0} events/s",
            events as f64 / elapsed
        );
    }
}
