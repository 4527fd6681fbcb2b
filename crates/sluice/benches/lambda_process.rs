//! The `sluice-router-lambda` process behind a local Lambda Runtime API:
//! cold start (process start until it asks for its first event), peak
//! memory after a 10,000-record batch of 1 KiB records, and the aggregation
//! ratio of 300-byte events written to an aggregated output. Writes go to
//! the Kinesis API server named by SLUICE_TEST_KINESALITE (or
//! SLUICE_TEST_MOTO); `scripts/bench-lambda` starts one and runs this.
//!
//! Without `--bench` (as the test command runs benchmarks) it makes one
//! cold start and one small invocation, and checks the answers.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use sluice::lambda::runtime_api::{Outcome, RuntimeApi};
use sluice_backends::conformance;
use sluice_backends::conformance::servers::{endpoint, kinesis};
use sluice_core::stream::StartPosition;
use sluice_core::StreamBackend;

#[path = "../../core/benches/support/sample.rs"]
mod sample;

fn kinesis_endpoint() -> String {
    std::env::var("SLUICE_TEST_KINESALITE")
        .unwrap_or_else(|_| endpoint("SLUICE_TEST_MOTO", "Kinesis API (moto or kinesalite)"))
}

fn spawn(api: &RuntimeApi, rules: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sluice-router-lambda"))
        .env("AWS_LAMBDA_RUNTIME_API", api.address.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "sluice-router")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/sluice-router")
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ENDPOINT_URL_KINESIS", kinesis_endpoint())
        .env("SLUICE_RULES", rules)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start sluice-router-lambda")
}

fn event(size: usize, count: usize) -> Vec<u8> {
    let records: Vec<serde_json::Value> = sample::records(size, count)
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            serde_json::json!({"eventSource": "aws:kinesis", "kinesis": {
                "partitionKey": r.partition_key,
                "sequenceNumber": format!("4959{i:052}"),
                "data": base64::engine::general_purpose::STANDARD.encode(&r.data),
                "approximateArrivalTimestamp": 1764000000.5}})
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "Records": records })).unwrap()
}

async fn invoke(api: &RuntimeApi, payload: Vec<u8>) {
    match api.invoke(payload, Duration::from_secs(120)).await {
        Some(Outcome::Response(body)) => {
            let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                answer["batchItemFailures"],
                serde_json::json!([]),
                "{answer}"
            );
        }
        other => panic!("no answer: {other:?}"),
    }
}

/// VmHWM of a process, in KiB.
fn peak_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Kinesis records and user records in a stream.
async fn count(streams: &Arc<dyn StreamBackend>, stream: &str) -> (usize, usize) {
    let mut records = 0;
    for shard in streams.list_shards(stream).await.unwrap() {
        let (read, _) = conformance::stream::read_shard(
            streams,
            stream,
            &shard.shard_id,
            StartPosition::TrimHorizon,
        )
        .await;
        records += read.len();
    }
    (
        records,
        conformance::stream::read_all(streams, stream).await.len(),
    )
}

#[tokio::main]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let prefix = format!("bench-lambda-{}", std::process::id());
    let streams: Arc<dyn StreamBackend> = Arc::new(kinesis(&kinesis_endpoint()));
    for name in ["all", "dead"] {
        streams
            .create_stream(&format!("{prefix}-{name}"), 4)
            .await
            .unwrap();
    }
    let rules = format!(
        "[unmatched]\nto = \"{prefix}-all\"\n[dead_letter]\nto = \"{prefix}-dead\"\n[outputs.{prefix}-all]\naggregate = true\n"
    );

    // Cold start: from spawning the process to its first request for an event.
    let runs = if full { 20 } else { 1 };
    let mut starts = Vec::new();
    for _ in 0..runs {
        let api = RuntimeApi::start().await.unwrap();
        let begun = Instant::now();
        let mut child = spawn(&api, &rules);
        let ready = api.first_poll().await;
        starts.push(ready.into_std().duration_since(begun));
        let _ = child.kill();
        let _ = child.wait();
    }
    starts.sort();
    println!(
        "cold start: median {:.1} ms, slowest {:.1} ms ({runs} starts)",
        starts[runs / 2].as_secs_f64() * 1e3,
        starts[runs - 1].as_secs_f64() * 1e3
    );

    let api = RuntimeApi::start().await.unwrap();
    let mut child = spawn(&api, &rules);
    let (batch, size) = if full { (10_000, 1024) } else { (100, 1024) };
    let began = Instant::now();
    invoke(&api, event(size, batch)).await;
    println!(
        "{batch} records of {size} B: answered in {:.0} ms; peak memory {} KiB",
        began.elapsed().as_secs_f64() * 1e3,
        peak_kib(child.id())
    );
    if full {
        let before = count(&streams, &format!("{prefix}-all")).await;
        invoke(&api, event(300, 10_000)).await;
        let after = count(&streams, &format!("{prefix}-all")).await;
        let (records, users) = (after.0 - before.0, after.1 - before.1);
        println!(
            "aggregation, 10,000 sample events of about 300 B: {users} events in {records} Kinesis records = {:.0} per record",
            users as f64 / records as f64
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}
