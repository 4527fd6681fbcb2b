//! CPU cost of the Lambda router per record, without the network: read the
//! Kinesis event JSON from the invocation's body as the function does
//! (base64 data decoded on the way), route with the example rules of
//! `sluice.toml`, and hand every output to the producers, which batch it for
//! a stream backend that acknowledges at once. Batches of 100 and 10,000
//! records of 1 KiB and 10,000 of 300 B (the shared sample events, padded or
//! as they are), with plain and with aggregated outputs.
//!
//! The time measured is the CPU time of the thread that reads and routes
//! (the runtime is a current-thread one), not the wall clock: what the
//! function is billed for, and not stretched when another process takes
//! the core. Telemetry's export threads are not in it.
//!
//! cargo bench -p sluice --bench lambda_handler

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice::config::Config;
use sluice::lambda::{EventReader, LambdaRouter};
use sluice_core::hash::even_ranges;
use sluice_core::stream::*;
use sluice_core::{SequenceNumber, StreamBackend};

// The allocator of the function's binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../../core/benches/support/sample.rs"]
mod sample;

/// Acknowledges every write at once; four open shards per stream.
struct Acknowledging;

#[async_trait]
impl StreamBackend for Acknowledging {
    async fn create_stream(&self, _: &str, _: u32) -> Result<(), StreamError> {
        Ok(())
    }
    async fn delete_stream(&self, _: &str) -> Result<(), StreamError> {
        Ok(())
    }
    async fn list_streams(&self) -> Result<Vec<String>, StreamError> {
        Ok(Vec::new())
    }
    async fn describe_stream(&self, name: &str) -> Result<StreamSummary, StreamError> {
        Err(StreamError::StreamNotFound(name.into()))
    }
    async fn list_shards(&self, _: &str) -> Result<Vec<Shard>, StreamError> {
        Ok(even_ranges(4)
            .into_iter()
            .enumerate()
            .map(|(i, range)| Shard {
                shard_id: format!("shardId-{i:012}"),
                parent_shard_id: None,
                adjacent_parent_shard_id: None,
                hash_key_range: range,
                starting_sequence_number: SequenceNumber::from_u64(0),
                ending_sequence_number: None,
            })
            .collect())
    }
    async fn put_records(
        &self,
        _: &str,
        records: Vec<PutRecord>,
    ) -> Result<Vec<PutResult>, StreamError> {
        Ok(records
            .iter()
            .map(|_| PutResult::Ok {
                shard_id: "shardId-000000000000".into(),
                sequence_number: SequenceNumber::from_u64(1),
            })
            .collect())
    }
    async fn get_shard_iterator(
        &self,
        name: &str,
        _: &str,
        _: StartPosition,
    ) -> Result<String, StreamError> {
        Err(StreamError::StreamNotFound(name.into()))
    }
    async fn get_records(&self, _: &str, _: usize) -> Result<GetRecordsOutput, StreamError> {
        Err(StreamError::ExpiredIterator("none".into()))
    }
    async fn split_shard(&self, name: &str, _: &str, _: u128) -> Result<(), StreamError> {
        Err(StreamError::StreamNotFound(name.into()))
    }
    async fn merge_shards(&self, name: &str, _: &str, _: &str) -> Result<(), StreamError> {
        Err(StreamError::StreamNotFound(name.into()))
    }
}

/// The event JSON Lambda would deliver for `count` sample records, every
/// field of a real Kinesis event included. One record in `traced_every`
/// carries a sampled `traceparent` of its own, as the collector writes it
/// for single-event requests while spans are exported: 1 is every request
/// sampled (the router's worst case), 100 is 1% head sampling (unsampled
/// requests carry no context); 0 is none.
fn event(count: usize, size: usize, traced_every: usize) -> Vec<u8> {
    let records: Vec<serde_json::Value> = sample::records(size, count)
        .into_iter()
        .enumerate()
        .map(|(i, mut r)| {
            if traced_every > 0 && i % traced_every == 0 {
                let header = format!(
                    r#"{{"headers":{{"traceparent":"00-{:032x}-{:016x}-01","#,
                    i + 1,
                    i + 1
                );
                let text = std::str::from_utf8(&r.data).unwrap();
                r.data = text.replacen(r#"{"headers":{"#, &header, 1).into();
            }
            serde_json::json!({
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": format!("shardId-000000000000:4959{i:052}"),
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": "arn:aws:iam::123456789012:role/sluice-router",
                "awsRegion": "eu-west-1",
                "eventSourceARN": "arn:aws:kinesis:eu-west-1:123456789012:stream/sluice-inbound",
                "kinesis": {
                    "kinesisSchemaVersion": "1.0",
                    "partitionKey": r.partition_key,
                    "sequenceNumber": format!("4959{i:052}"),
                    "data": base64::engine::general_purpose::STANDARD.encode(&r.data),
                    "approximateArrivalTimestamp": 1764000000.5
                }
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "Records": records })).unwrap()
}

/// Routes each batch size through a router on `config`, as `name`.
fn measure(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    runtime: &tokio::runtime::Runtime,
    name: &str,
    config: &Config,
    traced_every: usize,
) {
    let router = {
        let _entered = runtime.enter();
        LambdaRouter::new(config, Arc::new(Acknowledging), Duration::ZERO)
    };
    for (count, size) in [(100usize, 1024usize), (10_000, 1024), (10_000, 300)] {
        let json = event(count, size, traced_every);
        group.throughput(Throughput::Elements(count as u64));
        let id = BenchmarkId::new(name, format!("{count}x{size}B"));
        // One reader for all invocations, as in the function.
        let mut reader = EventReader::default();
        group.bench_with_input(id, &json, |b, json| {
            b.iter_custom(|iterations| {
                let start = thread_cpu_time();
                for _ in 0..iterations {
                    let summary = runtime.block_on(async {
                        // Read as the function reads each invocation's body.
                        let input = reader.read(json).unwrap();
                        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                        let (summary, failed) = router.route(&input, deadline).await;
                        assert!(failed.is_none());
                        summary
                    });
                    std::hint::black_box(summary);
                }
                thread_cpu_time() - start
            })
        });
    }
}

/// CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// An OTLP/HTTP endpoint on loopback that takes every request.
fn otlp_sink() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let app = axum::Router::new().fallback(|_: axum::body::Bytes| async { "" });
            axum::serve(listener, app).await.unwrap();
        });
    });
    format!("http://{address}")
}

fn bench(c: &mut Criterion) {
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../sluice.toml")).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("lambda_handler");
    let plain = Config::parse(&example, "sluice.toml").unwrap();
    let mut aggregated = example.clone();
    for stream in plain.rules().streams() {
        aggregated.push_str(&format!("\n[outputs.{stream}]\naggregate = true\n"));
    }
    let aggregated = Config::parse(&aggregated, "sluice.toml").unwrap();
    measure(&mut group, &runtime, "plain_outputs", &plain, 0);
    measure(&mut group, &runtime, "aggregated_outputs", &aggregated, 0);

    // Telemetry on, as the function runs with an OTLP endpoint set: metrics
    // and spans exported to a local sink (on its own thread). With every
    // request sampled, each record has a context of its own and the router
    // starts a span for each (up to 128 a batch); with 1% sampling, one
    // record in 100 does. The flush before each answer (a network wait) is
    // not counted.
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_sink());
    std::env::set_var("OTEL_METRIC_EXPORT_INTERVAL", "1000");
    let telemetry = sluice_telemetry::Telemetry::start("sluice-bench");
    assert!(sluice_telemetry::trace::enabled());
    let traced = [("all_sampled", 1), ("1pct_sampled", 100)];
    for (sampling, every) in traced {
        let name = format!("plain_outputs_telemetry_{sampling}");
        measure(&mut group, &runtime, &name, &plain, every);
    }
    telemetry.shutdown();
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
