//! Views through a real `sluice up`: counts, sums, top values and latest
//! records, exact against an oracle computed from the generated events,
//! with a kill -9 while the views catch up, on embedded storage and on the
//! DynamoDB and Kinesis APIs (moto).

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use sluice_core::sample::{Sample, SampleEvent};
use support::aws::{config_on_moto, moto_endpoint, AWS_ENV};
use support::process::{post_ndjson, Sluice, TOKEN};

const EVENTS: usize = 20_000;
const VIEWS: &str = r#"
[[views]]
name = "types-per-minute"
from = "{inbound}"
kind = "count"
group_by = "type"
window = "1m"

[[views]]
name = "sales-per-hour"
from = "{transactions}"
match = { type = ["purchase"] }
kind = "sum"
field = "amount"
group_by = "region"
window = "1h"

[[views]]
name = "top-pages"
from = "{inbound}"
match = { type = ["page_view"] }
kind = "top"
field = "payload.url"
window = "1h"
keep = 5

[[views]]
name = "recent"
from = "{inbound}"
kind = "latest"
keep = 3
"#;

fn local_config() -> String {
    let views = VIEWS
        .replace("{inbound}", "inbound")
        .replace("{transactions}", "transactions");
    format!(
        r#"
inbound = "inbound"
[streams]
inbound_shards = 3
output_shards = 2
[collector]
tokens_env = "E2E_TOKENS"
[[routes]]
name = "transactions"
match = {{ type = ["purchase", "refund"] }}
to = ["transactions"]
[unmatched]
to = "unrouted"
# Every call a little late, so the views are still catching up when the
# process is killed.
[faults]
delay_rate = 1.0
max_delay_ms = 60
{views}"#
    )
}

/// The sample, starting an hour ago, so every window is within retention.
fn events() -> Vec<SampleEvent> {
    let start = chrono::Utc::now().timestamp_millis() - 3_600_000;
    Sample::starting_at(7, start).take(EVENTS).collect()
}

async fn post_all(url: &str, events: &[SampleEvent]) {
    for chunk in events.chunks(500) {
        post_ndjson(url, chunk.iter().map(|e| e.to_json() + "\n").collect()).await;
    }
}

async fn view(url: &str, name: &str, query: &str) -> Value {
    let response = reqwest::Client::new()
        .get(format!("{url}/v1/views/{name}{query}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

fn minute(ms: i64) -> i64 {
    ms.div_euclid(60_000) * 60_000
}

fn hour(ms: i64) -> i64 {
    ms.div_euclid(3_600_000) * 3_600_000
}

fn start_ms(window: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(window["start"].as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

/// The range query covering the sample's hours.
fn range(events: &[SampleEvent]) -> String {
    let first = events.first().unwrap().ts_ms;
    let last = events.last().unwrap().ts_ms;
    let time = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    format!("?from={}&to={}", time(first), time(last))
}

/// Counts per (minute, type) the view holds.
async fn counts(url: &str, events: &[SampleEvent]) -> BTreeMap<(i64, String), u64> {
    let answer = view(url, "types-per-minute", &range(events)).await;
    let mut out = BTreeMap::new();
    for window in answer["windows"].as_array().unwrap() {
        for (kind, count) in window["groups"].as_object().unwrap() {
            out.insert((start_ms(window), kind.clone()), count.as_u64().unwrap());
        }
    }
    out
}

/// Waits until the count view has every event (or fails), returning how
/// long it took.
async fn wait_for_all(url: &str, events: &[SampleEvent]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let total: u64 = counts(url, events).await.values().sum();
        assert!(
            total <= EVENTS as u64,
            "counted {total} of {EVENTS}: a record counted twice"
        );
        if total == EVENTS as u64 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the views stopped at {total} of {EVENTS}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every view agrees with the oracle, failing at once on a
/// number past it (counted twice) and at the deadline on one short of it.
async fn check_against_oracle(url: &str, events: &[SampleEvent]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match agrees_with_oracle(url, events).await {
            Ok(()) => return,
            Err(behind) if Instant::now() < deadline => {
                let _ = behind;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(behind) => panic!("a view never caught up: {behind}"),
        }
    }
}

/// `Err` with what is still missing; panics on anything counted twice or
/// wrong.
async fn agrees_with_oracle(url: &str, events: &[SampleEvent]) -> Result<(), String> {
    // Counts per type per minute, exactly.
    let mut expected: BTreeMap<(i64, String), u64> = BTreeMap::new();
    for e in events {
        *expected
            .entry((minute(e.ts_ms), e.kind.to_owned()))
            .or_default() += 1;
    }
    let got = counts(url, events).await;
    for (key, have) in &got {
        assert!(
            have <= expected.get(key).unwrap_or(&0),
            "{key:?}: {have} counted, more than sent"
        );
    }
    if got != expected {
        return Err("types-per-minute".into());
    }

    // Purchases' amounts per region per hour; a record once, so the sums
    // agree to the last rounding of the additions.
    let mut sales: BTreeMap<(i64, String), f64> = BTreeMap::new();
    for e in events.iter().filter(|e| e.kind == "purchase") {
        let region = e.headers["region"].as_str().unwrap().to_owned();
        *sales.entry((hour(e.ts_ms), region)).or_default() += e.amount().unwrap();
    }
    let answer = view(url, "sales-per-hour", &range(events)).await;
    let mut got: BTreeMap<(i64, String), f64> = BTreeMap::new();
    for window in answer["windows"].as_array().unwrap() {
        for (region, sum) in window["groups"].as_object().unwrap() {
            got.insert((start_ms(window), region.clone()), sum.as_f64().unwrap());
        }
    }
    for (key, want) in &sales {
        let have = got.get(key).copied().unwrap_or(0.0);
        let close = (have - want).abs() <= 1e-6 * want.abs().max(1.0);
        assert!(
            close || have < *want,
            "{key:?}: {have}, more than the {want} sent"
        );
        if !close {
            return Err(format!("sales-per-hour {key:?}: {have} of {want}"));
        }
    }
    assert_eq!(got.len(), sales.len(), "{got:?}");

    // The five most viewed pages per hour, largest first, ties by name.
    let mut pages: BTreeMap<i64, BTreeMap<String, u64>> = BTreeMap::new();
    for e in events.iter().filter(|e| e.kind == "page_view") {
        let url = e.payload["url"].as_str().unwrap().to_owned();
        *pages
            .entry(hour(e.ts_ms))
            .or_default()
            .entry(url)
            .or_default() += 1;
    }
    let answer = view(url, "top-pages", &range(events)).await;
    let windows = answer["windows"].as_array().unwrap();
    if windows.len() != pages.len() {
        return Err("top-pages windows".into());
    }
    for window in windows {
        let mut want: Vec<(String, u64)> = pages[&start_ms(window)].clone().into_iter().collect();
        want.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        want.truncate(5);
        let have: Vec<(String, u64)> = window["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["value"].as_str().unwrap().to_owned(),
                    e["count"].as_u64().unwrap(),
                )
            })
            .collect();
        if have != want {
            return Err(format!("top-pages: {have:?} not {want:?}"));
        }
    }

    // A user's three latest events, newest first.
    let user = &events.last().unwrap().partition_key;
    let mut want: Vec<String> = events
        .iter()
        .filter(|e| &e.partition_key == user)
        .map(|e| {
            chrono::DateTime::from_timestamp_millis(e.ts_ms)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        })
        .collect();
    want.reverse();
    want.truncate(3);
    let answer = view(url, "recent", &format!("?key={user}")).await;
    let have: Vec<String> = answer["keys"][user]
        .as_array()
        .into_iter()
        .flatten()
        .map(|envelope| envelope["headers"]["ts"].as_str().unwrap().to_owned())
        .collect();
    if have != want {
        return Err(format!("recent: {have:?} not {want:?}"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_are_exact_through_a_kill_9_while_they_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let config = local_config();
    let events = events();
    let mut sluice = Sluice::start_with(dir.path(), "up", &config, &[]);
    post_all(&sluice.url, &events).await;
    // Kill it as soon as the views have counted something, and before they
    // counted everything.
    let deadline = Instant::now() + Duration::from_secs(60);
    let counted = loop {
        let total: u64 = counts(&sluice.url, &events).await.values().sum();
        if total > 0 {
            break total;
        }
        assert!(Instant::now() < deadline, "the views never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    sluice.kill_9();
    assert!(
        counted < EVENTS as u64,
        "the kill came after the views were done ({counted}); slow them more"
    );

    let sluice = Sluice::start_with(dir.path(), "up", &config, &[]);
    wait_for_all(&sluice.url, &events).await;
    check_against_oracle(&sluice.url, &events).await;

    // The listing and the bad requests.
    let list = reqwest::Client::new()
        .get(format!("{}/v1/views", sluice.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let list: Value = serde_json::from_str(&list.text().await.unwrap()).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["types-per-minute", "sales-per-hour", "top-pages", "recent"]
    );
    for (path, status, reason) in [
        ("/v1/views/nope", 404, "no view named"),
        (
            "/v1/views/types-per-minute?from=yesterday",
            400,
            "from=\"yesterday\"",
        ),
        ("/v1/views/types-per-minute?key=u-1", 400, "key:"),
        (
            "/v1/views/recent?from=2026-01-01T00:00:00Z",
            400,
            "a latest view takes `key`",
        ),
        (
            "/v1/views/types-per-minute?from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z",
            400,
            "more than 1440 windows",
        ),
    ] {
        let response = reqwest::Client::new()
            .get(format!("{}{path}", sluice.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{path}");
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert!(
            body["error"].as_str().unwrap().contains(reason),
            "{path}: {body}"
        );
    }

    // `sluice views` prints them.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["views", "types-per-minute", "--url", &sluice.url])
        .env("SLUICE_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        !lines.is_empty() && lines.iter().all(|l| l.contains("page_view=")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_are_exact_on_kinesis_and_dynamodb_apis() {
    let prefix = format!("views-{}", std::process::id());
    let views = VIEWS
        .replace("{inbound}", &format!("{prefix}-inbound"))
        .replace("{transactions}", &format!("{prefix}-transactions"));
    let config = config_on_moto(&moto_endpoint(), &prefix, true)
        + &format!(
            r#"
[[routes]]
name = "transactions"
match = {{ type = ["purchase", "refund"] }}
to = ["{prefix}-transactions"]
{views}"#
        );
    // Fewer than on embedded storage: moto answers one request at a time,
    // and every event costs each view a conditional write (its marker).
    let events: Vec<SampleEvent> = events().into_iter().take(1_000).collect();
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start_with(dir.path(), "up", &config, &AWS_ENV);
    post_all(&sluice.url, &events).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let total: u64 = counts(&sluice.url, &events).await.values().sum();
        assert!(total <= events.len() as u64, "a record counted twice");
        if total == events.len() as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "the views stopped at {total}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check_against_oracle(&sluice.url, &events).await;
}
