//! Sluice's HTTP server in process, over real HTTP, on streams that
//! misbehave as a test asks: a full queue answers 503 with Retry-After, and
//! requests waiting for the stream get their 202 once it acknowledges; on
//! the Kinesis API (kinesalite) with empty pages while records remain, the
//! read API reads past them and `sluice tail --follow` shares one reader.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use sluice::auth::Tokens;
use sluice::collector::ingest::IngestRules;
use sluice::collector::Collector;
use sluice_backends::fault::{Faults, FaultyStreams};
use sluice_backends::local::{LocalStreamOptions, LocalStreams};
use sluice_client::{Producer, ProducerConfig};
use sluice_core::StreamBackend;
use support::process::metric;
use support::wait::wait_for;

async fn serve(
    streams: Arc<dyn StreamBackend>,
    queue_events: usize,
    tokens: Vec<String>,
) -> (String, Arc<Collector>) {
    serve_on(streams, "inbound", queue_events, tokens).await
}

/// [`serve`] with the collector writing to `inbound`.
async fn serve_on(
    streams: Arc<dyn StreamBackend>,
    inbound: &str,
    queue_events: usize,
    tokens: Vec<String>,
) -> (String, Arc<Collector>) {
    let producer = Producer::start(streams.clone(), inbound, ProducerConfig::default())
        .await
        .unwrap();
    let rules = IngestRules {
        max_event_bytes: 4096,
        max_events: 10,
        partition_key_header: None,
        source: "web".into(),
    };
    let collector =
        Arc::new(Collector::new(producer, rules, queue_events).with_max_body_bytes(1 << 20));
    // No views here: the table is there because a read side has one.
    let tables = Arc::new(
        sluice_backends::local::LocalTable::open(
            &tempfile::tempdir().unwrap().keep().join("tables.redb"),
        )
        .unwrap(),
    );
    let read = sluice::server::ReadApi::without_views(streams, tables);
    let app = sluice::server::http_routes(
        collector.clone(),
        read,
        Tokens::new(tokens),
        sluice::health::Health::new(collector.clone()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(sluice::http::serve(
        listener,
        app,
        sluice::http::HttpLimits::default(),
        std::future::pending(),
    ));
    (url, collector)
}

fn events(n: usize) -> String {
    (0..n)
        .map(|i| format!("{{\"type\":\"click\",\"partition_key\":\"u{i}\"}}\n"))
        .collect()
}

async fn post(url: &str, body: String, token: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("{url}/v1/events"))
        .header("content-type", "application/x-ndjson")
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn received_counts_every_event_read_good_or_bad() {
    use sluice_telemetry::metrics;
    let dir = tempfile::tempdir().unwrap();
    let streams: Arc<dyn StreamBackend> =
        Arc::new(LocalStreams::open(dir.path(), LocalStreamOptions::default()).unwrap());
    streams.create_stream("inbound", 1).await.unwrap();
    let (url, _collector) = serve(streams, 100, vec![]).await;
    let received = metrics::COLLECTOR_EVENTS_RECEIVED.counter(&[]);
    let accepted = metrics::COLLECTOR_EVENTS_ACCEPTED.counter(&[]);
    // Three events, one without a type: refused whole, all three received.
    let bad = format!("{}{{\"payload\":{{}}}}\n", events(2));
    assert_eq!(post(&url, bad, None).await.status(), 400);
    assert_eq!(post(&url, events(2), None).await.status(), 202);
    assert_eq!(received.get(), 5);
    assert_eq!(accepted.get(), 2);
}

async fn readyz(url: &str) -> (u16, serde_json::Value) {
    let answer = reqwest::get(format!("{url}/readyz")).await.unwrap();
    let status = answer.status().as_u16();
    (
        status,
        serde_json::from_str(&answer.text().await.unwrap()).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_and_waiting_requests_complete() {
    let dir = tempfile::tempdir().unwrap();
    let local: Arc<dyn StreamBackend> =
        Arc::new(LocalStreams::open(dir.path(), LocalStreamOptions::default()).unwrap());
    local.create_stream("inbound", 1).await.unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let held: Arc<dyn StreamBackend> = Arc::new(FaultyStreams::new(
        local.clone(),
        Faults {
            stall: Some(gate.clone()),
            ..Faults::default()
        },
    ));
    let (url, collector) = serve(held, 10, Vec::new()).await;
    assert_eq!(
        readyz(&url).await,
        (
            200,
            serde_json::json!({"ready": true, "checks": {"collector": "ok"}})
        )
    );

    // Ten events fill the queue while the stream holds their write back.
    let first = tokio::spawn({
        let url = url.clone();
        async move { post(&url, events(10), None).await }
    });
    let start = Instant::now();
    while collector.queue.available_permits() > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the first request never reached the queue"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let refused = post(&url, events(1), None).await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert!(refused.text().await.unwrap().contains("queue is full"));
    // Not ready while it is full, so a load balancer sends writers elsewhere.
    let (status, ready) = readyz(&url).await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["ready"], false);
    let why = ready["checks"]["collector"].as_str().unwrap();
    assert!(why.contains("queue is full: 10 events wait"), "{ready}");
    assert_eq!(ready["error"], why);

    // Release the stream: the waiting request is acknowledged, and there is room again.
    gate.add_permits(1000);
    let first = first.await.unwrap();
    assert_eq!(first.status(), 202);
    assert_eq!(first.text().await.unwrap(), r#"{"accepted":10}"#);
    assert_eq!(post(&url, events(1), None).await.status(), 202);
    // Ready again once a second passed without a refusal.
    wait_for(Duration::from_secs(10), "ready again", || async {
        match readyz(&url).await {
            (200, ready) => {
                assert_eq!(ready["checks"]["collector"], "ok", "{ready}");
                Ok(())
            }
            (_, ready) => {
                let why = ready["checks"]["collector"].as_str().unwrap_or_default();
                assert!(why.contains("refused events"), "{ready}");
                Err(ready.to_string())
            }
        }
    })
    .await;
    assert_eq!(
        local.describe_stream("inbound").await.unwrap().record_count,
        Some(11)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_need_a_valid_token_when_tokens_are_set() {
    let dir = tempfile::tempdir().unwrap();
    let local: Arc<dyn StreamBackend> =
        Arc::new(LocalStreams::open(dir.path(), LocalStreamOptions::default()).unwrap());
    local.create_stream("inbound", 1).await.unwrap();
    let (url, _) = serve(local.clone(), 100, vec!["s3cret".into()]).await;
    let missing = post(&url, events(1), None).await;
    assert_eq!(missing.status(), 401);
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");
    assert_eq!(post(&url, events(1), Some("s3cre")).await.status(), 401);
    assert_eq!(post(&url, events(1), Some("s3cret")).await.status(), 202);
    let too_many = post(&url, events(11), Some("s3cret")).await;
    assert_eq!(too_many.status(), 413);
    assert!(too_many
        .text()
        .await
        .unwrap()
        .contains("11 events in one request; the limit is 10"));
    assert_eq!(
        local.describe_stream("inbound").await.unwrap().record_count,
        Some(1)
    );
    // The read API is behind the same check; health and metrics are not.
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(format!("{url}/v1/streams"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let read = http
        .get(format!("{url}/v1/streams/inbound/records"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(read.headers()["sluice-count"], "1");
    assert_eq!(
        http.get(format!("{url}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_answer_is_the_same_json_shape() {
    let dir = tempfile::tempdir().unwrap();
    let local: Arc<dyn StreamBackend> =
        Arc::new(LocalStreams::open(dir.path(), LocalStreamOptions::default()).unwrap());
    local.create_stream("inbound", 1).await.unwrap();
    let (url, _) = serve(local, 100, Vec::new()).await;
    let http = reqwest::Client::new();
    let cases = [
        (
            http.get(format!("{url}/v1/streams/inbound/records?limit=many")),
            400,
            "limit",
        ),
        (
            http.get(format!("{url}/v1/streams/inbound/records?colour=red")),
            400,
            "unknown field `colour`",
        ),
        (
            http.get(format!("{url}/v2/nothing")),
            404,
            "no such path: /v2/nothing",
        ),
        (
            http.delete(format!("{url}/v1/events")),
            405,
            "DELETE is not allowed on /v1/events",
        ),
    ];
    for (request, status, reason) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{reason}");
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        if status == 405 {
            assert!(response.headers().get("allow").is_some());
        }
        let body: serde_json::Value =
            serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert!(body["error"].as_str().unwrap().contains(reason), "{body}");
    }
    // A body declared over the limit is answered before it is sent whole.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap();
    stream
        .write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2097152\r\n\r\n[[[[")
        .await
        .unwrap();
    let mut answer = Vec::new();
    // The server closes the connection after the answer; the timeout only
    // bounds the test should it not.
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer
        .to_ascii_lowercase()
        .contains("content-type: application/json"));
    assert!(answer.contains("limit of 1048576 bytes"), "{answer}");
}

/// A stream on kinesalite with `shards` shards, through a backend that
/// answers half the pages that have records with an empty one instead.
async fn sparse_stream_on_kinesalite(shards: u32) -> (Arc<dyn StreamBackend>, String) {
    use sluice_backends::conformance::servers::{kinesalite, kinesis};
    let kinesis: Arc<dyn StreamBackend> = Arc::new(kinesis(&kinesalite()));
    let name = format!(
        "read-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    kinesis.create_stream(&name, shards).await.unwrap();
    let faulty = FaultyStreams::new(
        kinesis,
        Faults {
            empty_page_rate: 0.5,
            seed: 11,
            ..Faults::default()
        },
    );
    (Arc::new(faulty), name)
}

/// `count` records, in order per key, for `keys` keys; key 0 gets one only
/// (a sparse shard among busier ones).
async fn put_numbered(streams: &Arc<dyn StreamBackend>, stream: &str, keys: usize, count: u64) {
    let producer = Producer::start(streams.clone(), stream, ProducerConfig::default())
        .await
        .unwrap();
    let mut records = Vec::new();
    for n in 0..count {
        for k in 0..keys {
            if k == 0 && n > 0 {
                continue;
            }
            let data = format!("{{\"headers\":{{\"type\":\"t\",\"k\":{k},\"n\":{n}}}}}");
            records.push(sluice_core::stream::PutRecord::new(
                format!("key-{k}"),
                data,
            ));
        }
    }
    producer.send(records).await.unwrap();
    producer.close().await;
}

/// (k, n) of each line, checked in order per key; how many per key.
fn check_lines(text: &str) -> std::collections::BTreeMap<u64, u64> {
    let mut next = std::collections::BTreeMap::new();
    for line in text.lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        let (k, n) = (
            record["headers"]["k"].as_u64().unwrap(),
            record["headers"]["n"].as_u64().unwrap(),
        );
        let expected = next.entry(k).or_insert(0);
        assert_eq!(n, *expected, "key {k}: every record once, in order");
        *expected += 1;
    }
    next
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_api_reads_past_empty_pages_while_records_remain() {
    let (streams, stream) = sparse_stream_on_kinesalite(4).await;
    put_numbered(&streams, &stream, 8, 40).await;
    let (url, _collector) = serve_on(streams, &stream, 100, vec![]).await;
    let client = reqwest::Client::new();
    let mut text = String::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages < 100, "the pages never ended");
        let mut request = client
            .get(format!("{url}/v1/streams/{stream}/records"))
            .query(&[("limit", "1000")]);
        request = match &cursor {
            Some(c) => request.query(&[("cursor", c)]),
            None => request.query(&[("from", "trim_horizon")]),
        };
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        let more = response.headers()["sluice-more"] == "true";
        cursor = Some(
            response.headers()["sluice-cursor"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
        text.push_str(&response.text().await.unwrap());
        if !more {
            break;
        }
    }
    // "No more" means no more: not the first empty page.
    let per_key = check_lines(&text);
    assert_eq!(per_key[&0], 1);
    assert!((1..8).all(|k| per_key[&k] == 40), "{per_key:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_follow_gets_every_record_and_followers_share_one_reader() {
    let (streams, stream) = sparse_stream_on_kinesalite(2).await;
    put_numbered(&streams, &stream, 4, 5).await;
    let (url, _collector) = serve_on(streams.clone(), &stream, 100, vec![]).await;
    // 16 records there already (key 0 once, keys 1 to 3 five times each);
    // keys 1 to 3 go on to 30 each: 91 in all.
    let total = 91;
    let tail = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([
                "tail",
                &stream,
                "--follow",
                "--limit",
                &total.to_string(),
                "--url",
                &url,
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (tail(), tail());

    let subscribers = format!("sluice_live_subscribers{{stream=\"{stream}\"}}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&url, &subscribers).await != Some(2.0) {
        assert!(Instant::now() < deadline, "the followers never subscribed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        metric(&url, &format!("sluice_live_readers{{stream=\"{stream}\"}}")).await,
        Some(1.0),
        "two followers, one reader"
    );
    // The rest arrives while they follow: numbers 5 to 29 of keys 1 to 3.
    let producer = Producer::start(streams, &stream, ProducerConfig::default())
        .await
        .unwrap();
    for n in 5..30 {
        let records = (1..4)
            .map(|k| {
                let data = format!("{{\"headers\":{{\"type\":\"t\",\"k\":{k},\"n\":{n}}}}}");
                sluice_core::stream::PutRecord::new(format!("key-{k}"), data)
            })
            .collect();
        producer.send(records).await.unwrap();
    }
    producer.close().await;
    for child in [first, second] {
        let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap();
        assert!(out.status.success());
        let per_key = check_lines(&String::from_utf8(out.stdout).unwrap());
        assert_eq!(per_key[&0], 1);
        assert!((1..4).all(|k| per_key[&k] == 30), "{per_key:?}");
    }
}
