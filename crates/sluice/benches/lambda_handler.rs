//! CPU cost of the Lambda router per record, without the network: read the
//! Kinesis event JSON as `lambda_runtime` hands it to the function (through
//! serde_path_to_error, base64 data decoded on the way), route with the example rules of
//! `sluice.toml`, and hand every output to the producers, which batch it for
//! a stream backend that acknowledges at once. Batches of 100 and 10,000
//! records of 1 KiB and 10,000 of 300 B (the shared sample events, padded or
//! as they are), with plain and with aggregated outputs.
//!
//! cargo bench -p sluice --bench lambda_handler

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice::config::Config;
use sluice::lambda::{KinesisBatch, LambdaRouter};
use sluice_core::hash::even_ranges;
use sluice_core::stream::*;
use sluice_core::{SequenceNumber, StreamBackend};

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
/// field of a real Kinesis event included.
fn event(count: usize, size: usize) -> Vec<u8> {
    let records: Vec<serde_json::Value> = sample::records(size, count)
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
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

fn bench(c: &mut Criterion) {
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../sluice.toml")).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("lambda_handler");
    for aggregate in [false, true] {
        let mut text = example.clone();
        if aggregate {
            let plain = Config::parse(&text, "sluice.toml").unwrap();
            for stream in plain.rules().streams() {
                text.push_str(&format!("\n[outputs.{stream}]\naggregate = true\n"));
            }
        }
        let config = Config::parse(&text, "sluice.toml").unwrap();
        let router = {
            let _entered = runtime.enter();
            LambdaRouter::new(&config, Arc::new(Acknowledging), Duration::ZERO)
        };
        let name = if aggregate {
            "aggregated_outputs"
        } else {
            "plain_outputs"
        };
        for (count, size) in [(100usize, 1024usize), (10_000, 1024), (10_000, 300)] {
            let json = event(count, size);
            group.throughput(Throughput::Elements(count as u64));
            let id = BenchmarkId::new(name, format!("{count}x{size}B"));
            group.bench_with_input(id, &json, |b, json| {
                b.iter(|| {
                    runtime.block_on(async {
                        // Read as lambda_runtime reads an event for the function.
                        let reader = &mut serde_json::Deserializer::from_slice(json);
                        let input: KinesisBatch = serde_path_to_error::deserialize(reader).unwrap();
                        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                        let (summary, failed) = router.route(&input, deadline).await;
                        assert!(failed.is_none());
                        summary
                    })
                })
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
