//! End to end, through a real `sluice up` process and real HTTP: events in,
//! routed streams out; bad input answered with reasons; kill -9 while
//! events are posted loses nothing that was acknowledged.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_core::envelope::{decode, HeaderValue};

const CONFIG: &str = r#"
inbound = "inbound"
[streams]
inbound_shards = 3
output_shards = 2
[collector]
max_event_bytes = 4096
max_body_bytes = 200000
tokens_env = "E2E_TOKENS"

[[routes]]
name = "transactions"
match = { type = ["purchase", "refund"] }
to = ["transactions"]
continue = true

[[routes]]
name = "big"
match = { type = ["purchase"], amount = [{ numeric = [">=", 500] }] }
to = ["big-spenders"]

[[routes]]
name = "clicks"
match = { type = [{ prefix = "page_" }, "click"] }
to = ["clickstream"]

[[routes]]
name = "cart"
match = { type = ["add_to_cart"] }
to = ["clickstream", "cart"]

[unmatched]
to = "unrouted"
"#;

mod support;
use support::aws::{config_on_moto, moto_endpoint, AWS_ENV};
use support::otlp::{receiver, Exports, MetricsRequest};
use support::process::{Sluice, TOKEN};
use support::wait::wait_for;

/// `sluice COMMAND` with the test configuration.
fn start_command(dir: &Path, command: &str) -> Sluice {
    Sluice::start_with(dir, command, CONFIG, &[])
}

/// `sluice up` with the test configuration.
fn start_up(dir: &Path) -> Sluice {
    start_command(dir, "up")
}

/// An HTTP client that presents the token.
fn client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .default_headers(headers)
        .build()
        .unwrap()
}

async fn post(url: &str, content_type: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let response = client()
        .post(format!("{url}/v1/events"))
        .bearer_auth(TOKEN)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Every record of a stream, following the cursor.
async fn read_stream(url: &str, stream: &str) -> Vec<Vec<u8>> {
    read_stream_in_pages(url, stream, 100_000).await
}

/// Every record of a stream, `page` records per request.
async fn read_stream_in_pages(url: &str, stream: &str, page: usize) -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut request = client()
            .get(format!("{url}/v1/streams/{stream}/records"))
            .query(&[("limit", page.to_string())]);
        if let Some(c) = &cursor {
            request = request.query(&[("cursor", c)]);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "reading {stream}");
        let more = response.headers()["sluice-more"] == "true";
        cursor = Some(
            response.headers()["sluice-cursor"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
        let body = response.bytes().await.unwrap();
        records.extend(
            body.split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(<[u8]>::to_vec),
        );
        if !more {
            return records;
        }
    }
}

fn event_id(record: &[u8]) -> String {
    match decode(record).unwrap().headers.get("event_id") {
        Some(HeaderValue::Str(id)) => id.to_string(),
        other => panic!("no event_id: {other:?}"),
    }
}

/// The text of `/metrics`.
async fn metrics_text(url: &str) -> String {
    client()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Waits until a stream holds `count` records.
async fn wait_for_count(limit: Duration, url: &str, stream: &str, count: usize) {
    wait_for(limit, &format!("{count} records in {stream}"), || {
        let url = url.to_owned();
        async move {
            let n = read_stream(&url, stream).await.len();
            if n == count {
                Ok(())
            } else {
                Err(format!("{n} of {count}"))
            }
        }
    })
    .await;
}

fn expected_streams(kind: &str, amount: f64) -> Vec<&'static str> {
    match kind {
        "purchase" if amount >= 500.0 => vec!["transactions", "big-spenders"],
        "purchase" | "refund" => vec!["transactions"],
        "page_view" | "click" => vec!["clickstream"],
        "add_to_cart" => vec!["clickstream", "cart"],
        _ => vec!["unrouted"],
    }
}

/// Four tasks posting NDJSON batches until the server stops answering 202,
/// keeping what was acknowledged.
struct Posters;

type Acked<T> = Arc<Mutex<Vec<T>>>;

impl Posters {
    /// `event(poster, batch, i)` gives what to remember of an event and its line.
    fn start<T, F>(
        url: &str,
        batch_size: usize,
        event: F,
    ) -> (Vec<tokio::task::JoinHandle<()>>, Acked<T>)
    where
        T: Send + 'static,
        F: Fn(usize, usize, usize) -> (T, String) + Send + Sync + Copy + 'static,
    {
        let acked: Acked<T> = Arc::default();
        let tasks = (0..4)
            .map(|poster| {
                let (url, acked) = (url.to_owned(), acked.clone());
                tokio::spawn(async move {
                    for batch in 0.. {
                        let (kept, lines): (Vec<T>, Vec<String>) =
                            (0..batch_size).map(|i| event(poster, batch, i)).unzip();
                        let response = client()
                            .post(format!("{url}/v1/events"))
                            .header("content-type", "application/x-ndjson")
                            .body(lines.join("\n"))
                            .send()
                            .await;
                        match response {
                            Ok(r) if r.status() == 202 => acked.lock().unwrap().extend(kept),
                            _ => return, // the process stopped
                        }
                    }
                })
            })
            .collect();
        (tasks, acked)
    }

    async fn wait_for_acks<T>(acked: &Acked<T>, at_least: usize) {
        wait_for(Duration::from_secs(60), "events to be acknowledged", || {
            let n = acked.lock().unwrap().len();
            async move {
                if n >= at_least {
                    Ok(())
                } else {
                    Err(format!("{n} acknowledged"))
                }
            }
        })
        .await;
    }
}

const STREAMS: [&str; 5] = [
    "transactions",
    "big-spenders",
    "clickstream",
    "cart",
    "unrouted",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_land_in_exactly_their_streams_and_bad_input_gets_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = start_up(dir.path());
    let url = sluice.url.clone();

    // A mix of types; payloads with odd spacing and escapes must pass byte for byte.
    let kinds = [
        "purchase",
        "refund",
        "page_view",
        "click",
        "add_to_cart",
        "heartbeat",
        "signup",
    ];
    let mut sent: BTreeMap<String, (Vec<&str>, String)> = BTreeMap::new();
    let mut lines = Vec::new();
    for i in 0..700 {
        let kind = kinds[i % kinds.len()];
        let amount = (i * 37 % 1000) as f64;
        let id = format!("e2e-{i}");
        let payload =
            format!(r#"{{ "n" : {i},"text":"caf\u00e9 \"{i}\"",  "list":[1, 2.50 ,{{}}] }}"#);
        lines.push(format!(
            r#"{{"type":"{kind}","event_id":"{id}","partition_key":"user-{}","headers":{{"amount":{amount},"region":"eu"}},"payload":{payload}}}"#,
            i % 50
        ));
        sent.insert(id, (expected_streams(kind, amount), payload));
    }
    // As NDJSON, as a JSON array, and as single JSON objects.
    let (status, body) = post(&url, "application/x-ndjson", lines[..400].join("\n")).await;
    assert_eq!(
        (status, &body),
        (202, &serde_json::json!({"accepted": 400}))
    );
    let (status, body) = post(
        &url,
        "application/json",
        format!("[{}]", lines[400..690].join(",")),
    )
    .await;
    assert_eq!(
        (status, &body),
        (202, &serde_json::json!({"accepted": 290}))
    );
    for line in &lines[690..] {
        let (status, _) = post(&url, "application/json; charset=utf-8", line.clone()).await;
        assert_eq!(status, 202);
    }

    // Bad input: each answered with a reason, nothing written.
    let oversize = format!(r#"{{"type":"click","payload":"{}"}}"#, "x".repeat(5000));
    let bad_body = format!("{{\"type\":\"click\"}}\n{{not json\n{{\"payload\":1}}\n{oversize}");
    let (status, body) = post(&url, "application/x-ndjson", bad_body).await;
    assert_eq!(status, 400);
    let reasons: Vec<(u64, u64, String)> = body["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["status"].as_u64().unwrap(),
                r["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(reasons.len(), 3, "{body}");
    assert_eq!((reasons[0].0, reasons[0].1), (1, 400));
    assert!(reasons[0].2.contains("not valid JSON"), "{reasons:?}");
    assert_eq!((reasons[1].0, reasons[1].1), (2, 400));
    assert!(reasons[1].2.contains("missing `type`"), "{reasons:?}");
    assert_eq!((reasons[2].0, reasons[2].1), (3, 413));
    let (status, body) = post(&url, "application/json", oversize.clone()).await;
    assert_eq!(status, 413, "{body}");
    let (status, body) = post(&url, "text/html", "{\"type\":\"click\"}").await;
    assert_eq!(status, 415, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("application/x-ndjson"));
    let (status, _) = post(&url, "application/json", vec![b'['; 300_000]).await;
    assert_eq!(status, 413, "a body over max_body_bytes");
    let (status, body) = post(&url, "application/json", b"\xff\xfe{".to_vec()).await;
    assert_eq!(status, 400, "{body}");
    let unauthenticated = reqwest::Client::new()
        .post(format!("{url}/v1/events"))
        .header("content-type", "application/json")
        .body("{\"type\":\"click\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);

    // Every accepted event lands in exactly the streams its rules name.
    wait_for(Duration::from_secs(60), "routing to finish", || {
        let url = url.clone();
        let sent = sent.clone();
        async move {
            let mut routed = 0;
            for stream in STREAMS {
                routed += read_stream(&url, stream).await.len();
            }
            let expected: usize = sent.values().map(|(streams, _)| streams.len()).sum();
            if routed >= expected {
                Ok(())
            } else {
                Err(format!("{routed} of {expected} routed"))
            }
        }
    })
    .await;
    let inbound = read_stream(&url, "inbound").await;
    assert_eq!(
        inbound.len(),
        sent.len(),
        "rejected events were not written"
    );
    for stream in STREAMS {
        let records = read_stream(&url, stream).await;
        let ids: Vec<String> = records.iter().map(|r| event_id(r)).collect();
        let unique: BTreeSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "{stream} holds each event once");
        let expected: BTreeSet<&String> = sent
            .iter()
            .filter(|(_, (s, _))| s.contains(&stream))
            .map(|(id, _)| id)
            .collect();
        assert_eq!(
            unique, expected,
            "{stream} holds exactly the events routed to it"
        );
        for record in &records {
            let envelope = decode(record).unwrap();
            let id = event_id(record);
            assert_eq!(
                envelope.payload.unwrap(),
                sent[&id].1.as_bytes(),
                "payload of {id} is byte-identical"
            );
        }
    }
    let dead = read_stream(&url, "dead-letter").await;
    assert!(dead.is_empty());

    // The read API: streams listed with counts, bad queries refused.
    let streams: Value = serde_json::from_str(
        &client()
            .get(format!("{url}/v1/streams"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    let inbound_info = streams
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "inbound")
        .unwrap();
    assert_eq!(inbound_info["record_count"], 700);
    assert_eq!(inbound_info["open_shards"], 3);
    for (query, status) in [
        ("from=yesterday", 400),
        ("limit=100001", 400),
        ("limit=0", 400),
        ("cursor=%%%", 400),
    ] {
        let r = client()
            .get(format!("{url}/v1/streams/inbound/records?{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{query}");
    }
    let r = client()
        .get(format!("{url}/v1/streams/nope/records"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = client()
        .get(format!("{url}/v1/streams/inbound/records?from=latest"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["sluice-count"], "0");
    let page = client()
        .get(format!("{url}/v1/streams/inbound/records?limit=300"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.headers()["sluice-more"], "true");
    let cursor = page.headers()["sluice-cursor"].to_str().unwrap().to_owned();
    let first: Vec<String> = page
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| event_id(l.as_bytes()))
        .collect();
    let rest = client()
        .get(format!(
            "{url}/v1/streams/inbound/records?limit=1000&cursor={cursor}"
        ))
        .send()
        .await
        .unwrap();
    let second: Vec<String> = rest
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| event_id(l.as_bytes()))
        .collect();
    assert_eq!(first.len() + second.len(), 700);
    let all: HashSet<&String> = first.iter().chain(&second).collect();
    assert_eq!(
        all.len(),
        700,
        "the cursor continues without gaps or repeats"
    );
    let metrics = metrics_text(&url).await;
    assert!(
        metrics.contains("sluice_collector_events_accepted_total 700"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_posting_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let mut sluice = start_up(dir.path());
    let url = sluice.url.clone();
    let kinds = ["purchase", "click", "heartbeat"];
    let (posters, acked) = Posters::start(&url, 50, move |poster, batch, i| {
        let id = format!("p{poster}-b{batch}-{i}");
        let line = format!(
            r#"{{"type":"{}","event_id":"{id}","partition_key":"u{}","payload":{{"x":1}}}}"#,
            kinds[i % 3],
            id.len()
        );
        ((id, kinds[i % 3]), line)
    });
    Posters::wait_for_acks(&acked, 3000).await;
    sluice.kill_9();
    for poster in posters {
        poster.await.unwrap();
    }
    let acked: Vec<(String, &str)> = acked.lock().unwrap().clone();

    let sluice = start_up(dir.path());
    let url = sluice.url.clone();
    let routed_to = |kind: &str| match kind {
        "purchase" => "transactions",
        "click" => "clickstream",
        _ => "unrouted",
    };
    wait_for(
        Duration::from_secs(60),
        "every acknowledged event to be routed",
        || {
            let (url, acked) = (url.clone(), acked.clone());
            async move {
                let mut missing = 0;
                for stream in ["transactions", "clickstream", "unrouted"] {
                    let present: HashSet<String> = read_stream(&url, stream)
                        .await
                        .iter()
                        .map(|r| event_id(r))
                        .collect();
                    missing += acked
                        .iter()
                        .filter(|(id, kind)| routed_to(kind) == stream && !present.contains(id))
                        .count();
                }
                if missing == 0 {
                    Ok(())
                } else {
                    Err(format!("{missing} acknowledged events not routed yet"))
                }
            }
        },
    )
    .await;
    let inbound: HashSet<String> = read_stream(&url, "inbound")
        .await
        .iter()
        .map(|r| event_id(r))
        .collect();
    assert!(
        acked.iter().all(|(id, _)| inbound.contains(id)),
        "every acknowledged event is in the inbound stream"
    );
}

fn sluice_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env("SLUICE_TOKEN", TOKEN)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_sends_and_tails_and_sigterm_drains() {
    let dir = tempfile::tempdir().unwrap();
    let mut sluice = start_up(dir.path());
    let url = sluice.url.clone();

    // `sluice sample` writes the generated shop events; `sluice send` posts
    // them: every event accepted.
    let generated = sluice_cli(&["sample", "--events", "20000", "--seed", "3"]);
    assert!(generated.status.success());
    let text = String::from_utf8(generated.stdout).unwrap();
    assert_eq!(text, sluice_core::sample::ndjson(3, 20_000));
    let sample = dir.path().join("sample.ndjson");
    std::fs::write(&sample, &text).unwrap();
    let transactions = text
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|event| matches!(event["type"].as_str(), Some("purchase" | "refund")))
        .count();
    assert!(transactions > 0);
    let sent = sluice_cli(&["send", sample.to_str().unwrap(), "--url", &url]);
    let stderr = String::from_utf8_lossy(&sent.stderr);
    assert!(sent.status.success(), "{stderr}");
    assert!(
        stderr.contains("20000 events accepted, 0 rejected"),
        "{stderr}"
    );
    // A file with a bad line: the reason is printed and the exit code says so.
    let bad = dir.path().join("bad.ndjson");
    std::fs::write(
        &bad,
        "{\"type\":\"click\"}\n{\"type\":\"click\",\"colour\":1}\n",
    )
    .unwrap();
    let refused = sluice_cli(&["send", bad.to_str().unwrap(), "--url", &url]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unknown field `colour`"));

    // `sluice tail` prints routed envelopes.
    wait_for_count(Duration::from_secs(60), &url, "transactions", transactions).await;
    let tailed = sluice_cli(&["tail", "transactions", "--url", &url, "--limit", "5"]);
    assert!(tailed.status.success());
    let lines: Vec<&[u8]> = tailed
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(lines.len(), 5);
    for line in lines {
        let kind = decode(line).unwrap().headers.get("type").cloned();
        assert!(matches!(kind, Some(HeaderValue::Str(ref t)) if t == "purchase" || t == "refund"));
    }

    // SIGTERM while events are posted: the process drains and exits cleanly,
    // and everything it acknowledged is there after a restart.
    let (posters, acked) = Posters::start(&url, 20, |poster, batch, i| {
        let id = format!("t{poster}-{batch}-{i}");
        let line = format!(r#"{{"type":"click","event_id":"{id}"}}"#);
        (id, line)
    });
    Posters::wait_for_acks(&acked, 1000).await;
    let term = Command::new("kill")
        .args(["-TERM", &sluice.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = sluice.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "sluice did not stop after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "sluice exited with {status}");
    for poster in posters {
        poster.await.unwrap();
    }
    let log = std::fs::read_to_string(dir.path().join("sluice.log")).unwrap();
    assert!(log.contains("stopped"), "{log}");

    let sluice = start_up(dir.path());
    let inbound: HashSet<String> = read_stream(&sluice.url, "inbound")
        .await
        .iter()
        .map(|r| event_id(r))
        .collect();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.iter().all(|id| inbound.contains(id)),
        "an acknowledged event is missing after SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_command_collects_without_routing() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = start_command(dir.path(), "collector");
    let (status, _) = post(
        &sluice.url,
        "application/json",
        r#"{"type":"purchase","event_id":"c-1"}"#,
    )
    .await;
    assert_eq!(status, 202);
    let inbound = read_stream(&sluice.url, "inbound").await;
    assert_eq!(
        inbound.iter().map(|r| event_id(r)).collect::<Vec<_>>(),
        ["c-1"]
    );
    assert!(
        sluice.banner.contains("routing is off"),
        "{}",
        sluice.banner
    );
    let up_dir = tempfile::tempdir().unwrap();
    let up = start_up(up_dir.path());
    assert!(
        up.banner.contains("collector, router and read API"),
        "{}",
        up.banner
    );
    // Ready once the router holds its leases; the collector alone has no
    // router to wait for.
    let checks = |url: String| async move {
        let answer = client().get(format!("{url}/readyz")).send().await.unwrap();
        let status = answer.status().as_u16();
        let body: Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
        (status, body["checks"].clone())
    };
    wait_for(Duration::from_secs(30), "sluice up to be ready", || {
        let url = up.url.clone();
        async move {
            match checks(url).await {
                (200, checks) => {
                    assert_eq!(checks["router"], "ok");
                    assert_eq!(checks["backend"], "ok");
                    Ok(())
                }
                (status, checks) => Err(format!("{status} {checks}")),
            }
        }
    })
    .await;
    let (status, collector_checks) = checks(sluice.url.clone()).await;
    assert_eq!(
        (status, collector_checks),
        (200, serde_json::json!({"backend": "ok", "collector": "ok"}))
    );
}

#[test]
fn a_bad_config_stops_start_up_with_file_line_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("broken.toml");
    std::fs::write(
        &config,
        "[[routes]]\nname = \"r\"\nmatch = { type = [{ regx = \"a\" }] }\nto = [\"x\"]\n",
    )
    .unwrap();
    for command in ["up", "check-config"] {
        let output = sluice_cli(&[command, "--config", config.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{command}: {stderr}");
        assert!(stderr.contains("broken.toml"), "{command}: {stderr}");
        assert!(stderr.contains("line 3"), "{command}: {stderr}");
        assert!(
            stderr.contains("unknown matcher `regx`"),
            "{command}: {stderr}"
        );
    }
    let output = sluice_cli(&["check-config", "--config", "../../sluice.toml"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn aws_config(moto: &str, prefix: &str, create_missing: bool) -> String {
    config_on_moto(moto, prefix, create_missing)
        + &format!(
            r#"
[[routes]]
name = "transactions"
match = {{ type = ["purchase", "refund"] }}
to = ["{prefix}-transactions"]
[[routes]]
name = "clicks"
match = {{ type = [{{ prefix = "page_" }}, "click"] }}
to = ["{prefix}-clicks"]
"#
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_route_on_the_aws_backend_against_moto() {
    let moto = moto_endpoint();
    let prefix = format!("e2e-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start_with(
        dir.path(),
        "up",
        &aws_config(&moto, &prefix, true),
        &AWS_ENV,
    );
    assert!(
        sluice.banner.contains("collector, router and read API"),
        "{}",
        sluice.banner
    );

    let kinds = ["purchase", "refund", "page_view", "click", "heartbeat"];
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut lines = Vec::new();
    for i in 0..150 {
        let kind = kinds[i % kinds.len()];
        let id = format!("aws-{i}");
        let stream = match kind {
            "purchase" | "refund" => "transactions",
            "page_view" | "click" => "clicks",
            _ => "unrouted",
        };
        expected
            .entry(format!("{prefix}-{stream}"))
            .or_default()
            .push(id.clone());
        lines.push(format!(
            r#"{{"type":"{kind}","event_id":"{id}","partition_key":"user-{}","payload":{{ "i" : {i} }}}}"#,
            i % 13
        ));
    }
    let (status, body) = post(&sluice.url, "application/x-ndjson", lines.join("\n")).await;
    assert_eq!(
        (status, &body),
        (202, &serde_json::json!({"accepted": 150}))
    );

    wait_for(Duration::from_secs(60), "routing on moto", || {
        let (url, expected) = (sluice.url.clone(), expected.clone());
        async move {
            for (stream, ids) in &expected {
                let n = read_stream(&url, stream).await.len();
                if n < ids.len() {
                    return Err(format!("{stream}: {n} of {}", ids.len()));
                }
            }
            Ok(())
        }
    })
    .await;
    for (stream, ids) in &expected {
        let records = read_stream(&sluice.url, stream).await;
        let found: BTreeSet<String> = records.iter().map(|r| event_id(r)).collect();
        assert_eq!(found.len(), records.len(), "{stream} holds each event once");
        assert_eq!(
            found,
            ids.iter().cloned().collect::<BTreeSet<_>>(),
            "{stream}"
        );
        for record in &records {
            let i: usize = event_id(record)[4..].parse().unwrap();
            assert_eq!(
                decode(record).unwrap().payload.unwrap(),
                format!("{{ \"i\" : {i} }}").as_bytes()
            );
        }
    }
}

#[test]
fn on_aws_refused_or_missing_credentials_stop_start_up_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("aws.toml");
    let start_up = |endpoint: &str, env: &[(&str, &str)]| {
        std::fs::write(&config, aws_config(endpoint, "creds", true)).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["up", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .env("AWS_CONFIG_FILE", dir.path().join("no-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                dir.path().join("no-credentials"),
            )
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(env.iter().copied())
            .env("E2E_TOKENS", TOKEN)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        stderr
    };

    // A server that checks credentials refuses these keys.
    let refused = start_up(
        &std::env::var("SLUICE_TEST_MOTO_AUTH").unwrap_or_else(|_| {
            panic!("SLUICE_TEST_MOTO_AUTH is not set: this test needs the credential-checking moto server; run ./scripts/test, which starts it")
        }),
        &[("AWS_ACCESS_KEY_ID", "AKIAWRONG"), ("AWS_SECRET_ACCESS_KEY", "wrong")],
    );
    assert!(refused.contains("access denied"), "{refused}");
    assert!(refused.contains("InvalidClientTokenId"), "{refused}");
    assert!(refused.contains("check the AWS credentials"), "{refused}");
    assert!(
        !refused.contains("wrong"),
        "the secret is not logged: {refused}"
    );

    // No credentials anywhere in the chain.
    let missing = start_up(&moto_endpoint(), &[]);
    assert!(
        missing.contains("no AWS credentials could be loaded"),
        "{missing}"
    );
}

#[test]
fn on_aws_a_missing_stream_stops_start_up_by_name() {
    let moto = moto_endpoint();
    let prefix = format!("missing-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("aws.toml");
    std::fs::write(&config, aws_config(&moto, &prefix, false)).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
        ])
        .envs(AWS_ENV)
        .env("E2E_TOKENS", TOKEN)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("stream {prefix}-inbound does not exist")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregated_inbound_records_route_every_event_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let config = CONFIG.replace("[collector]\n", "[collector]\naggregate = true\n")
        + "[outputs.transactions]\naggregate = true\n[outputs.clickstream]\naggregate = true\n";
    let sluice = Sluice::start_with(dir.path(), "up", &config, &[]);
    let kinds = ["purchase", "click", "heartbeat"];
    let lines: Vec<String> = (0..600)
        .map(|i| {
            format!(
                r#"{{"type":"{}","event_id":"agg-{i}","partition_key":"k{}","headers":{{"n":{i}}}}}"#,
                kinds[i % 3],
                i % 40
            )
        })
        .collect();
    let (status, body) = post(&sluice.url, "application/x-ndjson", lines.join("\n")).await;
    assert_eq!(status, 202, "{body}");

    let expected = |kind: &str| -> Vec<String> {
        (0..600)
            .filter(|i| kinds[i % 3] == kind)
            .map(|i| format!("agg-{i}"))
            .collect()
    };
    for (stream, kind) in [
        ("transactions", "purchase"),
        ("clickstream", "click"),
        ("unrouted", "heartbeat"),
    ] {
        let want = expected(kind);
        wait_for(Duration::from_secs(60), stream, || {
            let (url, n) = (sluice.url.clone(), want.len());
            async move {
                let got = read_stream(&url, stream).await.len();
                if got >= n {
                    Ok(())
                } else {
                    Err(format!("{got} of {n}"))
                }
            }
        })
        .await;
        let records = read_stream(&sluice.url, stream).await;
        let mut ids: Vec<String> = records.iter().map(|r| event_id(r)).collect();
        // Order per key: within each key, ids come in sending order.
        let mut last: HashMap<usize, usize> = HashMap::new();
        for id in &ids {
            let i: usize = id[4..].parse().unwrap();
            if let Some(previous) = last.insert(i % 40, i) {
                assert!(i > previous, "{stream}: agg-{i} after agg-{previous}");
            }
        }
        ids.sort();
        let mut want = want;
        want.sort();
        assert_eq!(ids, want, "{stream} holds each of its events once");
    }

    // The inbound stream, read a few lines at a time: the cursor stops and
    // resumes inside aggregates without a gap or a repeat.
    let inbound: Vec<String> = read_stream_in_pages(&sluice.url, "inbound", 7)
        .await
        .iter()
        .map(|r| event_id(r))
        .collect();
    let unique: BTreeSet<&String> = inbound.iter().collect();
    assert_eq!((inbound.len(), unique.len()), (600, 600));

    let metrics = metrics_text(&sluice.url).await;
    let value = |name: &str, stream: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{stream=\"{stream}\"}}")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} for {stream} in {metrics}"))
    };
    for (stream, events) in [
        ("inbound", 600),
        ("transactions", 200),
        ("clickstream", 200),
    ] {
        let (records, users) = (
            value("sluice_put_records_records_total", stream),
            value("sluice_put_records_user_records_total", stream),
        );
        assert_eq!(users, events, "{stream}");
        assert!(
            records * 5 <= users,
            "{stream}: {users} events in {records} records"
        );
    }
    // Not aggregated: one record per event.
    assert_eq!(
        value("sluice_put_records_records_total", "unrouted"),
        value("sluice_put_records_user_records_total", "unrouted")
    );
}

/// Failed and timed-out writes, throttled reads and expired iterators.
const FAULTS: &str = "\n[faults]\nentry_failure_rate = 0.3\ncall_failure_rate = 0.05\ntimeout_rate = 0.05\nread_throttle_rate = 0.1\nexpired_iterator_rate = 0.1\ndelay_rate = 0.2\nmax_delay_ms = 20\nseed = 42\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_failures_lose_nothing_and_keep_order_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{CONFIG}{FAULTS}");
    let sluice = Sluice::start_with(dir.path(), "up", &config, &[]);
    faults_lose_nothing(&sluice, dir.path(), "inbound", "clickstream").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_failures_lose_nothing_on_the_aws_backend_against_moto() {
    let moto = moto_endpoint();
    let prefix = format!("e2e-faults-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{}{FAULTS}", aws_config(&moto, &prefix, true));
    let sluice = Sluice::start_with(dir.path(), "up", &config, &AWS_ENV);
    faults_lose_nothing(
        &sluice,
        dir.path(),
        &format!("{prefix}-inbound"),
        &format!("{prefix}-clicks"),
    )
    .await;
}

/// Posts click events of 80 keys under the injected faults, then checks that
/// every acknowledged event was routed, in order per key, and that the
/// faults really happened.
async fn faults_lose_nothing(sluice: &Sluice, dir: &Path, inbound: &str, clicks: &str) {
    // Four senders, each with its own 20 keys; every event carries its
    // position in its key's sequence.
    let mut senders = Vec::new();
    for sender in 0..4 {
        let url = sluice.url.clone();
        senders.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            for batch in 0..20 {
                let lines: Vec<String> = (0..40)
                    .map(|i| {
                        let (key, n) = (format!("s{sender}-k{}", i % 20), batch * 2 + i / 20);
                        let id = format!("s{sender}-b{batch}-{i}");
                        sent.push(id.clone());
                        format!(r#"{{"type":"click","event_id":"{id}","partition_key":"{key}","headers":{{"n":{n}}}}}"#)
                    })
                    .collect();
                let (status, body) = post(&url, "application/x-ndjson", lines.join("\n")).await;
                assert_eq!(status, 202, "{body}");
            }
            sent
        }));
    }
    let mut sent = BTreeSet::new();
    for sender in senders {
        sent.extend(sender.await.unwrap());
    }
    // Once the router has met both read faults, send more: they must come
    // through the recovered readers too.
    let log = dir.join("sluice.log");
    wait_for(Duration::from_secs(60), "injected read faults", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let seen = (
            text.contains("shard iterator expired; resuming after the checkpoint"),
            text.contains("read rate exceeded"),
        );
        async move {
            match seen {
                (true, true) => Ok(()),
                (expired, throttled) => Err(format!(
                    "expired iterator seen: {expired}, throttled read seen: {throttled}"
                )),
            }
        }
    })
    .await;
    let lines: Vec<String> = (0..40)
        .map(|i| {
            let id = format!("s9-b0-{i}");
            sent.insert(id.clone());
            format!(r#"{{"type":"click","event_id":"{id}","partition_key":"s9-k{}","headers":{{"n":{}}}}}"#, i % 20, i / 20)
        })
        .collect();
    let (status, body) = post(&sluice.url, "application/x-ndjson", lines.join("\n")).await;
    assert_eq!(status, 202, "{body}");
    wait_for(Duration::from_secs(90), "every event to be routed", || {
        let (url, sent, clicks) = (sluice.url.clone(), sent.clone(), clicks.to_owned());
        async move {
            let routed: BTreeSet<String> = read_stream(&url, &clicks)
                .await
                .iter()
                .map(|r| event_id(r))
                .collect();
            let missing = sent.difference(&routed).count();
            if missing == 0 {
                Ok(())
            } else {
                Err(format!("{missing} of {} not routed", sent.len()))
            }
        }
    })
    .await;
    let stored: BTreeSet<String> = read_stream(&sluice.url, inbound)
        .await
        .iter()
        .map(|r| event_id(r))
        .collect();
    assert!(
        sent.is_subset(&stored),
        "every acknowledged event is in the inbound stream"
    );

    // Order per key: the first time each event appears, its key's positions rise.
    let records = read_stream(&sluice.url, clicks).await;
    let mut seen = HashSet::new();
    let mut last: BTreeMap<String, f64> = BTreeMap::new();
    let mut duplicates = 0;
    for record in &records {
        let id = event_id(record);
        if !seen.insert(id.clone()) {
            duplicates += 1;
            continue;
        }
        let envelope = decode(record).unwrap();
        let Some(HeaderValue::Num(n)) = envelope.headers.get("n").cloned() else {
            panic!("no n in {id}")
        };
        let key = id.split('-').next().unwrap().to_owned()
            + &format!(
                "-{}",
                id.rsplit('-').next().unwrap().parse::<u32>().unwrap() % 20
            );
        if let Some(previous) = last.insert(key.clone(), n) {
            assert!(n >= previous, "key {key}: position {n} after {previous}");
        }
    }
    eprintln!(
        "{} events, {} records routed, {duplicates} duplicates from retried timeouts",
        sent.len(),
        records.len()
    );
    let metrics = metrics_text(&sluice.url).await;
    let failed: u64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with(&format!(
                "sluice_put_records_failed_entries_total{{stream=\"{inbound}\"}}"
            ))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(failed > 0, "the faults were really injected: {metrics}");
}

/// Spans received: (service, span name, trace id in hex).
fn spans(exports: &Exports) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for request in exports.traces.lock().unwrap().iter() {
        for resource in &request.resource_spans {
            let service = resource
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| a.value.clone())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for scope in &resource.scope_spans {
                for span in &scope.spans {
                    let trace: String = span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                    out.push((service.clone(), span.name.clone(), trace));
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_is_followed_from_the_page_to_collector_router_and_consumer_in_one_trace() {
    let (endpoint, traces) = receiver(false).await;
    let moto = moto_endpoint();
    let prefix = format!("trace-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let mut env: Vec<(&str, &str)> = AWS_ENV.to_vec();
    env.extend([
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        // Every request traced, not the default 1%.
        ("OTEL_TRACES_SAMPLER", "parentbased_always_on"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
    ]);
    let sluice = Sluice::start_with(dir.path(), "up", &aws_config(&moto, &prefix, true), &env);
    let mut consumer = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "consume",
            "--app",
            &format!("{prefix}-readers"),
            "--stream",
            &format!("{prefix}-clicks"),
        ])
        .args(["--failover-ms", "3000", "--config"])
        .arg(dir.path().join("sluice.toml"))
        .envs(env.iter().copied())
        .env("E2E_TOKENS", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // The page's own trace context, as a browser SDK or RUM agent sends it
    // in the `traceparent` request header: the collector continues it.
    let page_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let answer = client()
        .post(format!("{}/v1/events", sluice.url))
        .header("content-type", "application/json")
        .header(
            "traceparent",
            format!("00-{page_trace}-00f067aa0ba902b7-01"),
        )
        .body(r#"{"type":"click","event_id":"traced-1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    wait_for_count(
        Duration::from_secs(60),
        &sluice.url,
        &format!("{prefix}-clicks"),
        1,
    )
    .await;
    let record = read_stream(&sluice.url, &format!("{prefix}-clicks"))
        .await
        .remove(0);
    let Some(HeaderValue::Str(traceparent)) =
        decode(&record).unwrap().headers.get("traceparent").cloned()
    else {
        panic!("no traceparent in the routed record")
    };
    let trace = traceparent.split('-').nth(1).unwrap().to_owned();
    assert_eq!(trace, page_trace, "the page's trace is continued");

    wait_for(
        Duration::from_secs(60),
        "the three hops in one trace",
        || {
            let found = spans(&traces);
            let trace = trace.clone();
            async move {
                let hops: BTreeSet<&str> = found
                    .iter()
                    .filter(|(_, _, t)| *t == trace)
                    .map(|(_, name, _)| name.as_str())
                    .collect();
                if ["collector.request", "router.route", "consume"]
                    .iter()
                    .all(|h| hops.contains(h))
                {
                    Ok(())
                } else {
                    Err(format!("trace {trace} has {hops:?}"))
                }
            }
        },
    )
    .await;
    let _ = consumer.kill();
    let _ = consumer.wait();
}

/// Every metric of that name in the export requests.
fn metrics_named<'a>(
    requests: &'a [MetricsRequest],
    name: &'a str,
) -> impl Iterator<Item = &'a opentelemetry_proto::tonic::metrics::v1::Metric> {
    requests
        .iter()
        .flat_map(|r| &r.resource_metrics)
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .filter(move |m| m.name == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_go_out_with_otlp_as_deltas_and_on_the_prometheus_endpoint() {
    use opentelemetry_proto::tonic::metrics::v1::{
        metric::Data, number_data_point::Value as Point, AggregationTemporality,
    };
    let (endpoint, received) = receiver(false).await;
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start_with(
        dir.path(),
        "up",
        CONFIG,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
            ("SLUICE_ENVIRONMENT", "test"),
        ],
    );
    let lines: Vec<String> = (0..5)
        .map(|i| format!(r#"{{"type":"click","event_id":"otlp-{i}"}}"#))
        .collect();
    let (status, body) = post(&sluice.url, "application/x-ndjson", lines.join("\n")).await;
    assert_eq!(status, 202, "{body}");

    // The deltas of the accepted-events counter add up to what was sent.
    wait_for(
        Duration::from_secs(30),
        "5 accepted events in OTLP deltas",
        || {
            let requests = received.metrics_requests();
            async move {
                let mut total = 0;
                for metric in metrics_named(&requests, "sluice_collector_events_accepted_total") {
                    let Some(Data::Sum(sum)) = &metric.data else {
                        return Err(format!("not a sum: {metric:?}"));
                    };
                    if sum.aggregation_temporality != AggregationTemporality::Delta as i32 {
                        return Err(format!("not delta: {sum:?}"));
                    }
                    for point in &sum.data_points {
                        if let Some(Point::AsInt(v)) = point.value {
                            total += v;
                        }
                    }
                }
                if total == 5 {
                    Ok(())
                } else {
                    Err(format!("{total} in {} requests", requests.len()))
                }
            }
        },
    )
    .await;
    let requests = received.metrics_requests();
    let resource = requests[0].resource_metrics[0].resource.clone().unwrap();
    let attribute = |key: &str| {
        resource
            .attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.clone())
            .and_then(|v| v.value)
            .map(|v| format!("{v:?}"))
    };
    assert!(attribute("service.name").unwrap().contains("sluice"));
    assert!(attribute("deployment.environment.name")
        .unwrap()
        .contains("test"));

    // The same counter on /metrics, in the Prometheus text format.
    let text = metrics_text(&sluice.url).await;
    let accepted: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("sluice_collector_events_accepted_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert_eq!(accepted, [5.0], "{text}");
    assert!(text.contains("# TYPE sluice_collector_events_accepted_total counter"));

    // Latencies: histograms in both, delta in OTLP. One request was made,
    // and at least one PutRecords call on the inbound stream.
    wait_for(
        Duration::from_secs(30),
        "the request and PutRecords histograms in OTLP",
        || {
            let requests = received.metrics_requests();
            async move {
                let count = |name: &str, label: Option<(&str, &str)>| -> Result<u64, String> {
                    let mut total = 0;
                    for metric in metrics_named(&requests, name) {
                        let Some(Data::Histogram(histogram)) = &metric.data else {
                            return Err(format!("not a histogram: {metric:?}"));
                        };
                        if histogram.aggregation_temporality != AggregationTemporality::Delta as i32
                        {
                            return Err(format!("not delta: {histogram:?}"));
                        }
                        for point in &histogram.data_points {
                            let labelled = label.is_none_or(|(key, value)| {
                                point.attributes.iter().any(|a| {
                                    a.key == key
                                        && format!("{:?}", a.value).contains(&format!("{value:?}"))
                                })
                            });
                            if labelled {
                                assert_eq!(point.bucket_counts.iter().sum::<u64>(), point.count);
                                total += point.count;
                            }
                        }
                    }
                    Ok(total)
                };
                let requests_timed = count("sluice_collector_request_duration_seconds", None)?;
                let calls_timed = count(
                    "sluice_put_records_duration_seconds",
                    Some(("stream", "inbound")),
                )?;
                if requests_timed == 1 && calls_timed >= 1 {
                    Ok(())
                } else {
                    Err(format!(
                        "{requests_timed} requests and {calls_timed} calls timed"
                    ))
                }
            }
        },
    )
    .await;
    let text = metrics_text(&sluice.url).await;
    for line in [
        "# TYPE sluice_collector_request_duration_seconds histogram",
        "sluice_collector_request_duration_seconds_count 1",
        "sluice_collector_request_duration_seconds_bucket{le=\"+Inf\"} 1",
        "sluice_collector_requests_total{status=\"202\"} 1",
        "# TYPE sluice_put_records_duration_seconds histogram",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_telemetry_endpoint_does_not_stop_the_pipeline() {
    // Nothing listens here.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start_with(
        dir.path(),
        "up",
        CONFIG,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "100"),
            ("OTEL_TRACES_SAMPLER", "parentbased_always_on"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    for round in 0..3 {
        let (status, body) = post(
            &sluice.url,
            "application/json",
            format!(r#"{{"type":"purchase","event_id":"down-{round}"}}"#),
        )
        .await;
        assert_eq!(status, 202, "{body}");
    }
    wait_for(
        Duration::from_secs(30),
        "failed metric and span exports to be counted",
        || {
            let url = sluice.url.clone();
            async move {
                let text = metrics_text(&url).await;
                let failures = |signal: &str| -> f64 {
                    let series =
                        format!("sluice_telemetry_export_failures_total{{signal=\"{signal}\"}}");
                    text.lines()
                        .find(|l| l.starts_with(&series))
                        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
                        .unwrap_or(0.0)
                };
                if failures("metrics") > 0.0 && failures("traces") > 0.0 {
                    Ok(())
                } else {
                    Err(format!("not both counted yet:\n{text}"))
                }
            }
        },
    )
    .await;
    wait_for_count(Duration::from_secs(30), &sluice.url, "transactions", 3).await;
}
