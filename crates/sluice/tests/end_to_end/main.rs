//! End to end, through a real `sluice up` process and real HTTP: events in,
//! routed streams out; bad input answered with reasons; kill -9 while
//! events are posted loses nothing that was acknowledged. One test binary,
//! its parts in modules: routing, the command line, the AWS backend,
//! injected faults, and telemetry.

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

#[path = "../support/mod.rs"]
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

/// A configuration for the AWS backend on the local API server, its
/// names under `prefix`.
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

mod aws;
mod cli;
mod faults;
mod routing;
mod telemetry;
