//! The `sluice-router-lambda` binary, run for real behind a local Lambda
//! Runtime API, fed Kinesis events as Lambda sends them (base64 data, plain
//! and KPL-aggregated records, several shards), writing to the moto server
//! that ./scripts/test starts.

mod support;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::kinesis::{KinesisEvent, KinesisEventRecord};
use bytes::Bytes;
use md5::{Digest, Md5};
use serde_json::Value;
use sluice::lambda::runtime_api::{Outcome, RuntimeApi};
use sluice_backends::conformance;
use sluice_backends::conformance::servers::{kinesis, moto};
use sluice_core::aggregate::{Aggregator, MAGIC};
use sluice_core::envelope::{decode, HeaderValue};
use sluice_core::StreamBackend;

/// A record of a test event.
struct In {
    shard: &'static str,
    sequence: String,
    key: String,
    /// Base64 text as Lambda would send it (or not).
    data: String,
}

fn record(shard: &'static str, sequence: u64, key: &str, data: &[u8]) -> In {
    use base64::Engine;
    In {
        shard,
        sequence: format!("4959{sequence:052}"),
        key: key.into(),
        data: base64::engine::general_purpose::STANDARD.encode(data),
    }
}

fn envelope(kind: &str, id: &str) -> Vec<u8> {
    format!(r#"{{"headers":{{"type":"{kind}","event_id":"{id}"}},"payload":{{"id":"{id}"}}}}"#)
        .into_bytes()
}

/// The JSON Lambda delivers for these records, built with the event types
/// of `aws_lambda_events` so the shape is Lambda's own.
fn event(records: &[In]) -> Vec<u8> {
    let mut event = KinesisEvent::default();
    for r in records {
        let mut entry = KinesisEventRecord::default();
        entry.event_source = Some("aws:kinesis".into());
        entry.event_id = Some(format!("{}:{}", r.shard, r.sequence));
        entry.event_source_arn =
            Some("arn:aws:kinesis:us-east-1:000000000000:stream/sluice-inbound".into());
        entry.aws_region = Some("us-east-1".into());
        entry.kinesis.partition_key = r.key.clone();
        entry.kinesis.sequence_number = r.sequence.clone();
        entry.kinesis.kinesis_schema_version = Some("1.0".into());
        event.records.push(entry);
    }
    let mut json = serde_json::to_value(&event).unwrap();
    // The data field as given (possibly not base64 at all).
    for (entry, r) in json["Records"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .zip(records)
    {
        entry["kinesis"]["data"] = Value::String(r.data.clone());
        entry["kinesis"]["approximateArrivalTimestamp"] = serde_json::json!(1_764_000_000.5);
    }
    serde_json::to_vec(&json).unwrap()
}

fn rules(prefix: &str, extra: &str) -> String {
    format!(
        r#"
inbound = "{prefix}-inbound"
[[routes]]
name = "purchases"
match = {{ type = ["purchase"] }}
to = ["{prefix}-transactions"]
[[routes]]
name = "clicks"
match = {{ type = ["click"] }}
to = ["{prefix}-clicks"]
[[routes]]
name = "ghosts"
match = {{ type = ["ghost"] }}
to = ["{prefix}-missing"]
[unmatched]
to = "{prefix}-unrouted"
[dead_letter]
to = "{prefix}-dead"
{extra}
"#
    )
}

struct Function {
    child: Child,
    api: RuntimeApi,
}

impl Drop for Function {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(config: &str, margin_ms: u64) -> Function {
    start_with(config, margin_ms, &[]).await
}

async fn start_with(config: &str, margin_ms: u64, env: &[(&str, &str)]) -> Function {
    let api = RuntimeApi::start().await.unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_sluice-router-lambda"))
        .env("AWS_LAMBDA_RUNTIME_API", api.address.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "sluice-router")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/sluice-router")
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "test")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ENDPOINT_URL_KINESIS", moto())
        .env("SLUICE_RULES", config)
        .env("SLUICE_DEADLINE_MARGIN_MS", margin_ms.to_string())
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start sluice-router-lambda");
    Function { child, api }
}

/// Invokes and returns `batchItemFailures` as sequence numbers.
async fn invoke(function: &Function, payload: Vec<u8>, timeout: Duration) -> Vec<String> {
    let outcome = function
        .api
        .invoke(payload, timeout)
        .await
        .expect("the function answers within its timeout");
    let Outcome::Response(body) = outcome else {
        panic!("the function reported an error: {outcome:?}")
    };
    let response: Value = serde_json::from_slice(&body).unwrap();
    response["batchItemFailures"]
        .as_array()
        .unwrap_or_else(|| panic!("no batchItemFailures in {response}"))
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap().to_owned())
        .collect()
}

/// Every user record in a stream, de-aggregated, in order per shard.
async fn read_all(streams: &Arc<dyn StreamBackend>, stream: &str) -> Vec<(String, Bytes)> {
    conformance::stream::read_all(streams, stream)
        .await
        .into_iter()
        .map(|(_, key, data)| (key.to_string(), data))
        .collect()
}

fn header(data: &[u8], name: &str) -> Option<String> {
    match decode(data).ok()?.headers.get(name)? {
        HeaderValue::Str(s) => Some(s.to_string()),
        other => Some(format!("{other:?}")),
    }
}

async fn create(streams: &Arc<dyn StreamBackend>, prefix: &str, names: &[&str]) {
    for name in names {
        streams
            .create_stream(&format!("{prefix}-{name}"), 2)
            .await
            .unwrap();
    }
}

/// A name prefix for this run and the output streams of `rules`, created.
async fn streams_for(test: &str) -> (String, Arc<dyn StreamBackend>) {
    let prefix = format!("{test}-{}", std::process::id());
    let streams: Arc<dyn StreamBackend> = Arc::new(kinesis(&moto()));
    create(
        &streams,
        &prefix,
        &["transactions", "clicks", "unrouted", "dead", "missing"],
    )
    .await;
    (prefix, streams)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_plain_and_aggregated_records_and_dead_letters_bad_ones() {
    let (prefix, streams) = streams_for("lambda-route").await;
    let function = start(&rules(&prefix, ""), 500).await;

    let mut aggregator = Aggregator::new();
    aggregator.push("u-1", None, Bytes::from(envelope("purchase", "a-1")));
    aggregator.push("u-2", None, Bytes::from(envelope("click", "a-2")));
    aggregator.push("u-1", None, Bytes::from(envelope("heartbeat", "a-3")));
    aggregator.push("u-3", None, Bytes::from_static(b"not an envelope inside"));
    let aggregated = aggregator.finish();
    let mut corrupt = MAGIC.to_vec();
    corrupt.extend_from_slice(&[0x1a, 0x7f]);
    corrupt.extend_from_slice(&Md5::digest([0x1a, 0x7f]));
    let mut records = vec![
        record(
            "shardId-000000000000",
            1,
            "u-1",
            &envelope("purchase", "p-1"),
        ),
        record("shardId-000000000001", 2, "u-2", &envelope("click", "c-1")),
        record("shardId-000000000000", 3, "u-1", &aggregated),
        record(
            "shardId-000000000002",
            4,
            "u-4",
            b"plain text, not an envelope",
        ),
        record("shardId-000000000001", 5, "u-5", &corrupt),
        record(
            "shardId-000000000002",
            6,
            "u-6",
            &envelope("purchase", "p-2"),
        ),
    ];
    records.push(In {
        data: "%%% not base64 %%%".into(),
        ..record("shardId-000000000000", 7, "u-7", b"")
    });
    let failures = invoke(&function, event(&records), Duration::from_secs(20)).await;
    assert!(failures.is_empty(), "{failures:?}");

    let ids = |records: &[(String, Bytes)]| -> Vec<String> {
        let mut ids: Vec<String> = records
            .iter()
            .filter_map(|(_, d)| header(d, "event_id"))
            .collect();
        ids.sort();
        ids
    };
    let transactions = read_all(&streams, &format!("{prefix}-transactions")).await;
    assert_eq!(ids(&transactions), ["a-1", "p-1", "p-2"]);
    assert!(
        transactions
            .iter()
            .any(|(key, d)| key == "u-1" && header(d, "event_id").as_deref() == Some("a-1")),
        "user records keep their own partition key"
    );
    let clicks = read_all(&streams, &format!("{prefix}-clicks")).await;
    assert_eq!(ids(&clicks), ["a-2", "c-1"]);
    let unrouted = read_all(&streams, &format!("{prefix}-unrouted")).await;
    assert_eq!(ids(&unrouted), ["a-3"]);
    let dead = read_all(&streams, &format!("{prefix}-dead")).await;
    let mut reasons: Vec<String> = dead
        .iter()
        .map(|(_, d)| header(d, "reason").unwrap())
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        ["bad_aggregate", "bad_record", "not_json", "not_json"]
    );

    // An empty batch is answered with no failures.
    let failures = invoke(&function, event(&[]), Duration::from_secs(5)).await;
    assert!(failures.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undelivered_records_are_reported_from_the_first_one_and_retried_later() {
    let prefix = format!("lambda-fail-{}", std::process::id());
    let streams: Arc<dyn StreamBackend> = Arc::new(kinesis(&moto()));
    // No "missing" stream yet: records routed there cannot be delivered.
    create(
        &streams,
        &prefix,
        &["transactions", "clicks", "unrouted", "dead"],
    )
    .await;
    let function = start(&rules(&prefix, ""), 500).await;
    let records = vec![
        record(
            "shardId-000000000000",
            10,
            "k-1",
            &envelope("purchase", "f-1"),
        ),
        record("shardId-000000000000", 11, "k-2", &envelope("ghost", "f-2")),
        record(
            "shardId-000000000000",
            12,
            "k-3",
            &envelope("purchase", "f-3"),
        ),
        record("shardId-000000000000", 13, "k-4", &envelope("ghost", "f-4")),
    ];
    let failures = invoke(&function, event(&records), Duration::from_secs(10)).await;
    assert_eq!(
        failures,
        [records[1].sequence.clone()],
        "Lambda retries from the first undelivered record"
    );

    // Once the stream exists, the retried batch goes through.
    create(&streams, &prefix, &["missing"]).await;
    let failures = invoke(&function, event(&records[1..]), Duration::from_secs(10)).await;
    assert!(failures.is_empty(), "{failures:?}");
    let ghosts = read_all(&streams, &format!("{prefix}-missing")).await;
    assert_eq!(ghosts.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_write_failures_are_retried_within_the_invocation_or_reported() {
    let (prefix, streams) = streams_for("lambda-faults").await;
    let records: Vec<In> = (0..300)
        .map(|i| {
            let kind = if i % 2 == 0 { "purchase" } else { "click" };
            record(
                "shardId-000000000000",
                100 + i,
                &format!("k-{}", i % 30),
                &envelope(kind, &format!("e-{i}")),
            )
        })
        .collect();

    // 30% of entries fail: retried inside the invocation, all delivered.
    let faults = "[faults]\nentry_failure_rate = 0.3\nseed = 9\n";
    let function = start(&rules(&prefix, faults), 500).await;
    let failures = invoke(&function, event(&records), Duration::from_secs(30)).await;
    assert!(failures.is_empty(), "{failures:?}");
    let mut delivered: Vec<String> = read_all(&streams, &format!("{prefix}-transactions"))
        .await
        .into_iter()
        .chain(read_all(&streams, &format!("{prefix}-clicks")).await)
        .filter_map(|(_, d)| header(&d, "event_id"))
        .collect();
    delivered.sort();
    delivered.dedup();
    assert_eq!(delivered.len(), 300);
    drop(function);

    // Every entry fails: the answer comes before the timeout and reports
    // the batch from its first record; nothing is claimed as delivered.
    let faults = "[faults]\nentry_failure_rate = 1.0\nseed = 9\n";
    let function = start(&rules(&prefix, faults), 1000).await;
    let failures = invoke(&function, event(&records[..20]), Duration::from_secs(3)).await;
    assert_eq!(failures, [records[0].sequence.clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_records_with_aggregated_outputs() {
    let (prefix, streams) = streams_for("lambda-big").await;
    let extra = format!(
        "[outputs.{prefix}-transactions]\naggregate = true\n[outputs.{prefix}-clicks]\naggregate = true\n"
    );
    let function = start(&rules(&prefix, &extra), 1000).await;
    let records: Vec<In> = (0..10_000)
        .map(|i| {
            let kind = if i % 2 == 0 { "purchase" } else { "click" };
            record(
                "shardId-000000000000",
                i,
                &format!("k-{}", i % 100),
                &envelope(kind, &format!("big-{i}")),
            )
        })
        .collect();
    let failures = invoke(&function, event(&records), Duration::from_secs(60)).await;
    assert!(failures.is_empty(), "{failures:?}");
    let mut per_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for stream in ["transactions", "clicks"] {
        for (key, data) in read_all(&streams, &format!("{prefix}-{stream}")).await {
            let id = header(&data, "event_id").unwrap();
            per_key
                .entry(key)
                .or_default()
                .push(id[4..].parse().unwrap());
        }
    }
    assert_eq!(per_key.values().map(Vec::len).sum::<usize>(), 10_000);
    for (key, positions) in &per_key {
        // Within one output stream a key's records keep their order; each
        // key here goes to one stream (its kind follows i % 2 = key % 2).
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "{key}: {positions:?}"
        );
    }
}

/// Creates a Secrets Manager secret in moto, with the JSON protocol as the
/// SDKs speak it (moto reads the region from the credential scope).
async fn create_secret(name: &str, value: &str) {
    let response = reqwest::Client::new()
        .post(moto())
        .header("X-Amz-Target", "secretsmanager.CreateSecret")
        .header("Content-Type", "application/x-amz-json-1.1")
        .header(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=test/20261128/us-east-1/secretsmanager/aws4_request, SignedHeaders=host, Signature=0",
        )
        .body(serde_json::json!({ "Name": name, "SecretString": value }).to_string())
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{:?}",
        response.text().await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dynatrace_token_comes_from_secrets_manager_with_every_export() {
    let (endpoint, exports) = support::otlp::receiver(false).await;
    let seen = exports.authorizations;
    let (prefix, _) = streams_for("token").await;
    let secret = format!("{prefix}-dynatrace-token");
    create_secret(&secret, "dt0c01.ABC.DEF").await;
    let moto = moto();
    let telemetry = |secret: &str| {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
            ("AWS_ENDPOINT_URL_SECRETS_MANAGER", moto.clone()),
            ("SLUICE_OTLP_TOKEN_SECRET_ARN", secret.to_owned()),
        ]
    };
    let empty = br#"{"Records":[]}"#.to_vec();

    // A secret that does not exist: the function runs, exporting nothing.
    let env = telemetry(&format!("{prefix}-no-such-secret"));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let function = start_with(&rules(&prefix, ""), 1000, &env).await;
    assert!(invoke(&function, empty.clone(), Duration::from_secs(30))
        .await
        .is_empty());
    drop(function);
    assert!(seen.lock().unwrap().is_empty(), "exported without a token");

    // The secret: every export carries the token; metrics and spans leave
    // before the answer, so they have arrived once it is in.
    let env = telemetry(&secret);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let function = start_with(&rules(&prefix, ""), 1000, &env).await;
    assert!(invoke(&function, empty, Duration::from_secs(30))
        .await
        .is_empty());
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty(), "nothing exported");
    assert!(
        seen.iter().all(|a| a == "Api-Token dt0c01.ABC.DEF"),
        "{seen:?}"
    );
}

/// The drill of the Lambda router's alert (see tests/drills.rs): a function
/// whose output stream is missing reports failed batches all through a run
/// and the alert opens; with the stream there, the same run is quiet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_a_missing_output_stream_opens_the_lambda_errors_alert_and_a_clean_run_does_not() {
    use support::alerts::{alert, SAMPLE, SAMPLES};
    let errors = alert("sluice-router-lambda-errors");
    for missing in [true, false] {
        let prefix = format!("lambda-drill-{missing}-{}", std::process::id());
        let streams: Arc<dyn StreamBackend> = Arc::new(kinesis(&moto()));
        let mut outputs = vec!["transactions", "clicks", "unrouted", "dead"];
        if !missing {
            outputs.push("missing");
        }
        create(&streams, &prefix, &outputs).await;
        let (endpoint, exports) = support::otlp::receiver(false).await;
        let function = start_with(
            &rules(&prefix, ""),
            500,
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())],
        )
        .await;
        let start = std::time::Instant::now();
        let mut sequence = 0;
        while start.elapsed() < SAMPLE * SAMPLES as u32 {
            sequence += 1;
            let records = [record(
                "shardId-000000000000",
                sequence,
                "k-1",
                &envelope("ghost", &format!("g-{sequence}")),
            )];
            let failures = invoke(&function, event(&records), Duration::from_secs(10)).await;
            assert_eq!(failures.is_empty(), !missing, "{failures:?}");
            // A Kinesis trigger's pace: a batch every 100 ms or so.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Metrics leave before the answer: the last invocation's are in.
        let series = errors.series(&exports.metrics.lock().unwrap(), start, SAMPLE, SAMPLES);
        assert_eq!(
            errors.fired(&series).is_some(),
            missing,
            "missing output: {missing}; samples {series:?}"
        );
    }
}

#[test]
fn an_invalid_configuration_fails_the_cold_start_with_one_line() {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice-router-lambda"))
        .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9")
        .env(
            "SLUICE_RULES",
            "[[routes]]\nname = \"x\"\nmatch = { type = [{ prefx = \"a\" }] }\nto = [\"out\"]\n",
        )
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("SLUICE_RULES"), "{stderr}");
    assert!(lines[0].contains("prefx"), "{stderr}");
    assert!(lines[0].contains("invalid configuration"), "{stderr}");
}

/// The rules the deployment template gives the function are a valid
/// configuration once CloudFormation has filled in the stream names.
#[test]
fn the_rules_in_the_deployment_template_load() {
    let template = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/template.yaml"
    ))
    .unwrap();
    let mut lines = template
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("SLUICE_RULES: !Sub |"));
    let key = lines.next().expect("SLUICE_RULES in the template");
    let indent = key.len() - key.trim_start().len();
    let block: Vec<&str> = lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
        .collect();
    let body_indent = block
        .iter()
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap();
    let mut text: String = block
        .iter()
        .map(|l| format!("{}\n", &l[body_indent.min(l.len())..]))
        .collect();
    for name in [
        "InboundStream",
        "TransactionsStream",
        "ClickstreamStream",
        "UnroutedStream",
        "DeadLetterStream",
    ] {
        let stack_name = format!(
            "sluice-prod-{}",
            name.trim_end_matches("Stream").to_lowercase()
        );
        text = text.replace(&format!("${{{name}}}"), &stack_name);
    }
    assert!(!text.contains("${"), "every substitution is known: {text}");
    let config = sluice::config::Config::parse(&text, "template.yaml SLUICE_RULES")
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(config.inbound, "sluice-prod-inbound");
    assert_eq!(config.rules().streams().len(), 4);
    assert!(config.outputs["sluice-prod-clickstream"].aggregate);
}

/// The template's resources, by name: each one's lines.
fn template_resources() -> Vec<(String, String)> {
    let template = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/template.yaml"
    ))
    .unwrap();
    let body = template
        .split("\nResources:\n")
        .nth(1)
        .unwrap()
        .split("\nOutputs:\n")
        .next()
        .unwrap();
    let mut resources: Vec<(String, String)> = Vec::new();
    for line in body.lines() {
        let is_name = line.starts_with("  ")
            && !line.starts_with("   ")
            && !line.trim_start().starts_with('#')
            && line.trim_end().ends_with(':');
        if is_name {
            resources.push((line.trim().trim_end_matches(':').to_owned(), String::new()));
        } else if let Some((_, block)) = resources.last_mut() {
            block.push_str(line);
            block.push('\n');
        }
    }
    resources
}

#[test]
fn the_template_alarms_on_every_stream_the_router_and_its_failures() {
    let resources = template_resources();
    let alarms: Vec<&String> = resources
        .iter()
        .filter(|(_, block)| block.contains("Type: AWS::CloudWatch::Alarm"))
        .map(|(_, block)| block)
        .collect();
    let alarm_on = |metric: &str, target: &str| {
        alarms.iter().any(|block| {
            block.contains(&format!("MetricName: {metric}\n"))
                && block.contains(&format!("Value: {target}\n"))
                && block.contains("AlarmActions: !If [Notifies, [!Ref AlarmTopicArn], []]")
                && block.contains("TreatMissingData: notBreaching")
        })
    };
    let streams: Vec<&String> = resources
        .iter()
        .filter(|(_, block)| block.contains("Type: AWS::Kinesis::Stream"))
        .map(|(name, _)| name)
        .collect();
    assert_eq!(streams.len(), 5);
    for stream in streams {
        assert!(
            alarm_on(
                "WriteProvisionedThroughputExceeded",
                &format!("!Ref {stream}")
            ),
            "no write-throttle alarm on {stream}"
        );
    }
    assert!(alarm_on(
        "GetRecords.IteratorAgeMilliseconds",
        "!Ref InboundStream"
    ));
    for metric in ["IteratorAge", "Errors", "Throttles"] {
        assert!(
            alarm_on(metric, "!Ref Router"),
            "no {metric} alarm on the router"
        );
    }
    assert!(alarm_on(
        "ApproximateNumberOfMessagesVisible",
        "!GetAtt RouterFailures.QueueName"
    ));
    assert_eq!(alarms.len(), 10, "one alarm per condition, no strays");
}
