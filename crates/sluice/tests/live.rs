//! Live feeds through a real `sluice up` and real HTTP: records posted while
//! subscribed arrive in order per key; a reconnect with `Last-Event-ID`
//! gets every record once; `match` filters exactly; many subscribers share
//! one reader; a subscriber that stops reading is cut off while another
//! keeps up; bad requests are answered with reasons.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::aws::{config_on_moto, moto_endpoint, AWS_ENV};
use support::process::{metric, post_ndjson, Sluice, TOKEN};
use support::sse::{Feed, Message};

const CONFIG: &str = r#"
inbound = "inbound"
[streams]
inbound_shards = 3
[collector]
tokens_env = "E2E_TOKENS"
[live]
buffer = 1024
keep_alive_secs = 1
[unmatched]
to = "unrouted"
"#;

const WAIT: Duration = Duration::from_secs(30);

fn start(dir: &std::path::Path, config: &str) -> Sluice {
    Sluice::start_with(dir, "up", config, &[])
}

fn auth() -> (&'static str, String) {
    ("authorization", format!("Bearer {TOKEN}"))
}

/// An event of user `user` numbered `n`: a purchase of `n` when `n` is
/// even, a page view when odd.
fn event(user: usize, n: u64) -> Value {
    let kind = if n.is_multiple_of(2) {
        "purchase"
    } else {
        "page_view"
    };
    json!({
        "type": kind,
        "partition_key": format!("user-{user}"),
        "headers": {"user": format!("user-{user}"), "n": n, "amount": n},
        "payload": {"n": n},
    })
}

/// Posts `events` as one NDJSON request; panics unless all are accepted.
async fn post(url: &str, events: &[Value]) {
    post_ndjson(url, events.iter().map(|e| format!("{e}\n")).collect()).await;
}

/// `rounds` events for each of `users` users, numbered from `from`.
fn events(users: usize, from: u64, rounds: u64) -> Vec<Value> {
    (from..from + rounds)
        .flat_map(|n| (0..users).map(move |u| event(u, n)))
        .collect()
}

/// (user, n) of a record message.
fn key_of(message: &Message) -> (String, u64) {
    assert_eq!(message.event, "message", "{message:?}");
    assert!(message.id.is_some(), "every record has an id");
    let envelope: Value = serde_json::from_str(&message.data).unwrap();
    let headers = &envelope["headers"];
    (
        headers["user"].as_str().unwrap().to_owned(),
        headers["n"].as_u64().unwrap(),
    )
}

/// Reads `count` record messages.
async fn read(feed: &mut Feed, count: usize) -> Vec<Message> {
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let message = feed.next(WAIT).await.expect("the feed ended early");
        out.push(message);
    }
    out
}

/// Reads until the sentinel event (header `sentinel`), returning what came
/// before it.
async fn read_to_sentinel(feed: &mut Feed) -> Vec<Message> {
    let mut out = Vec::new();
    loop {
        let message = feed.next(WAIT).await.expect("the feed ended early");
        let envelope: Value = serde_json::from_str(&message.data).unwrap();
        if envelope["headers"]["sentinel"] == json!(true) {
            return out;
        }
        out.push(message);
    }
}

fn sentinel() -> Value {
    json!({"type": "purchase", "headers": {"sentinel": true, "amount": 1_000_000}})
}

/// Every user's numbers, in the order they came.
fn per_user(keys: impl IntoIterator<Item = (String, u64)>) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (user, n) in keys {
        out.entry(user).or_default().push(n);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_arrive_in_order_per_key_and_a_resume_gets_each_once() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = start(dir.path(), CONFIG);
    resume_exactly(&sluice.url, "inbound").await;

    // A quiet feed still speaks: a keep-alive comment within the interval.
    let (name, token) = auth();
    let mut quiet = Feed::open(
        &format!("{}/v1/streams/dead-letter/live", sluice.url),
        &[(name, &token)],
    )
    .await;
    quiet.keep_comments = true;
    let comment = quiet.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(comment.event, "comment");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_gets_each_record_once_on_kinesis_and_dynamodb_apis() {
    let prefix = format!("live-{}", std::process::id());
    let config = config_on_moto(&moto_endpoint(), &prefix, true);
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start_with(dir.path(), "up", &config, &AWS_ENV);
    resume_exactly(&sluice.url, &format!("{prefix}-inbound")).await;
}

/// Subscribes, reads half of 300 posted records, disconnects, lets 300
/// more arrive and resumes from the last id while another subscriber keeps
/// the shared reader going: every record once, in order per key.
async fn resume_exactly(url: &str, stream: &str) {
    let live = format!("{url}/v1/streams/{stream}/live");
    let (name, token) = auth();

    // Another subscriber keeps the shared reader running throughout, so the
    // resumed one joins it while records keep arriving.
    let _other = Feed::open(&live, &[(name, &token)]).await;
    let mut first = Feed::open(&live, &[(name, &token)]).await;
    for batch in events(10, 0, 30).chunks(50) {
        post(url, batch).await;
    }
    let before = read(&mut first, 150).await;
    let last_id = before.last().unwrap().id.clone().unwrap();
    drop(first); // disconnect midway: 150 of 300 read

    let posting = {
        let url = url.to_owned();
        tokio::spawn(async move {
            for batch in events(10, 30, 30).chunks(10) {
                post(&url, batch).await;
            }
        })
    };
    let mut second = Feed::open(&live, &[(name, &token), ("last-event-id", &last_id)]).await;
    posting.await.unwrap();
    post(url, &[sentinel()]).await;
    let after = read_to_sentinel(&mut second).await;

    let all: Vec<_> = before.iter().chain(&after).map(key_of).collect();
    assert_eq!(all.len(), 600, "every record once: no gap, no duplicate");
    for (user, ns) in per_user(all) {
        assert_eq!(
            ns,
            (0..60).collect::<Vec<_>>(),
            "{user}: each once, in order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_filters_exactly_from_the_oldest_record_and_on_live() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = start(dir.path(), CONFIG);
    let url = &sluice.url;
    let (name, token) = auth();
    let pattern = r#"{"type":["purchase"],"amount":[{"numeric":[">=",40]}]}"#;
    let wanted = |e: &Value| e["type"] == "purchase" && e["headers"]["amount"].as_u64() >= Some(40);

    let old = events(5, 0, 40);
    post(url, &old).await;
    let feed_url = reqwest::Url::parse_with_params(
        &format!("{url}/v1/streams/inbound/live"),
        &[("from", "trim_horizon"), ("match", pattern)],
    )
    .unwrap();
    let mut feed = Feed::open(feed_url.as_str(), &[(name, &token)]).await;
    let new = events(5, 40, 40);
    post(url, &new).await;
    post(url, &[sentinel()]).await;
    let got: Vec<_> = read_to_sentinel(&mut feed)
        .await
        .iter()
        .map(key_of)
        .collect();

    let expected: Vec<(String, u64)> = old
        .iter()
        .chain(&new)
        .filter(|e| wanted(e))
        .map(|e| {
            (
                e["headers"]["user"].as_str().unwrap().to_owned(),
                e["headers"]["n"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got.len(), expected.len(), "exactly the matching records");
    assert_eq!(per_user(got), per_user(expected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_subscribers_share_one_reader() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = start(dir.path(), CONFIG);
    let url = &sluice.url;
    let live = format!("{url}/v1/streams/inbound/live");
    let (name, token) = auth();
    let mut feeds = Vec::new();
    for _ in 0..200 {
        feeds.push(Feed::open(&live, &[(name, &token)]).await);
    }
    assert_eq!(
        metric(url, "sluice_live_subscribers{stream=\"inbound\"}").await,
        Some(200.0)
    );
    assert_eq!(
        metric(url, "sluice_live_readers{stream=\"inbound\"}").await,
        Some(1.0),
        "one reader for 200 subscribers"
    );
    post(url, &events(5, 0, 10)).await;
    let readers = feeds.into_iter().map(|mut feed| {
        tokio::spawn(async move {
            let got = read(&mut feed, 50).await;
            (got, feed)
        })
    });
    let mut feeds = Vec::new();
    for reader in readers {
        let (got, feed) = reader.await.unwrap();
        let keys: Vec<_> = got.iter().map(key_of).collect();
        for (user, ns) in per_user(keys) {
            assert_eq!(ns, (0..10).collect::<Vec<_>>(), "{user}");
        }
        feeds.push(feed);
    }
    assert_eq!(
        metric(url, "sluice_live_readers{stream=\"inbound\"}").await,
        Some(1.0),
        "still one reader after 50 records to each of 200 subscribers"
    );
    // The reader stops with its last subscriber.
    drop(feeds);
    let deadline = std::time::Instant::now() + WAIT;
    while metric(url, "sluice_live_readers{stream=\"inbound\"}").await != Some(0.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the reader outlived its subscribers"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_cut_off_while_another_keeps_up() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = start(dir.path(), CONFIG);
    let url = sluice.url.clone();
    let live = format!("{url}/v1/streams/inbound/live");
    let (name, token) = auth();

    // The slow one: asks, reads the answer's head, then reads no more.
    let address = url.trim_start_matches("http://");
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = socket.connect(address.parse().unwrap()).await.unwrap();
    slow.write_all(
        format!(
            "GET /v1/streams/inbound/live HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {TOKEN}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        slow.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );

    let mut fast = Feed::open(&live, &[(name, &token)]).await;
    let total = 20_000;
    let keeping_up = tokio::spawn(async move { read(&mut fast, total).await.len() });
    for batch in events(100, 0, (total / 100) as u64).chunks(500) {
        post(&url, batch).await;
    }
    assert_eq!(
        keeping_up.await.unwrap(),
        total,
        "the fast subscriber got everything"
    );

    // The slow one, reading again, finds it was cut off.
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, slow.read_to_end(&mut rest))
        .await
        .expect("the slow subscriber's connection is closed")
        .unwrap();
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.contains("event: lagged"),
        "{}",
        &text[text.len().saturating_sub(300)..]
    );
    let got = text.matches("\nid: ").count();
    assert!(got < total, "the slow subscriber got {got} of {total}");
    assert_eq!(
        metric(
            &url,
            "sluice_live_subscribers_lagged_total{stream=\"inbound\"}"
        )
        .await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_answered_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = start(dir.path(), CONFIG);
    let url = &sluice.url;
    let client = reqwest::Client::new();
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], u16, &'a str);
    let cases: [Case; 6] = [
        ("/v1/streams/nowhere/live", &[], 404, "nowhere"),
        (
            "/v1/streams/inbound/live?match=%7B%22type%22",
            &[],
            400,
            "match:",
        ),
        (
            "/v1/streams/inbound/live?match=%7B%22type%22%3A%22purchase%22%7D",
            &[],
            400,
            "match:",
        ),
        (
            "/v1/streams/inbound/live?from=yesterday",
            &[],
            400,
            "from=\"yesterday\"",
        ),
        ("/v1/streams/inbound/live?form=latest", &[], 400, "form"),
        (
            "/v1/streams/inbound/live",
            &[("last-event-id", "not a cursor")],
            400,
            "Last-Event-ID",
        ),
    ];
    for (path, headers, status, reason) in cases {
        let mut request = client
            .get(format!("{url}{path}"))
            .header("authorization", format!("Bearer {TOKEN}"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{path}");
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(reason), "{path}: {error}");
    }
    let unauthorized = client
        .get(format!("{url}/v1/streams/inbound/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
}
