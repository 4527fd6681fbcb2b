//! The dashboard in headless Chromium against a real `sluice up` with
//! tokens: it asks for the token (kept out of URLs), loads without a
//! console error, shows a view's numbers as the API gives them, and an
//! event posted after it loaded in its live panel within 2 s. The test
//! saves a screenshot next to the build's other test files.

mod support;

use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use support::cdp::Chromium;
use support::process::{post_ndjson, Sluice, TOKEN};

const CONFIG: &str = r#"
inbound = "inbound"
[streams]
inbound_shards = 2
output_shards = 1
[collector]
tokens_env = "E2E_TOKENS"
[[routes]]
name = "transactions"
match = { type = ["purchase"] }
to = ["transactions"]
[unmatched]
to = "unrouted"
[[views]]
name = "types"
from = "inbound"
kind = "count"
group_by = "type"
window = "1h"
"#;

async fn post(url: &str, events: &[Value]) {
    post_ndjson(url, events.iter().map(|e| format!("{e}\n")).collect()).await;
}

async fn view(url: &str) -> Value {
    let text = reqwest::Client::new()
        .get(format!("{url}/v1/views/types"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_views_and_live_records_without_a_console_error() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start_with(dir.path(), "up", CONFIG, &[]);
    let url = sluice.url.clone();
    let events: Vec<Value> = (0..30)
        .map(|i| json!({"type": if i % 3 == 0 { "purchase" } else { "page_view" }, "headers": {"amount": i}}))
        .collect();
    post(&url, &events).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let page_views = loop {
        let answer = view(&url).await;
        let counted = answer["windows"]
            .as_array()
            .and_then(|w| w.last())
            .map(|w| w["groups"]["page_view"].as_u64().unwrap_or(0));
        if counted == Some(20) {
            break 20;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the view never counted: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let browser = Chromium::launch().await;
    let page = browser.page().await;
    page.goto(&format!("{url}/")).await;
    // Without the token the read API answers 401: the page asks for it.
    page.wait_for(
        "!document.querySelector('#token-form').hidden",
        Duration::from_secs(10),
    )
    .await;
    page.eval(&format!(
        "document.querySelector('#token-form input').value = {}; document.querySelector('#token-form').requestSubmit()",
        json!(TOKEN)
    ))
    .await;
    page.wait_for(
        "getComputedStyle(document.querySelector('#token-form')).display == 'none'",
        Duration::from_secs(5),
    )
    .await;
    page.wait_for(
        "document.querySelector('#views .cell[data-group=page_view]')",
        Duration::from_secs(15),
    )
    .await;
    let shown = page
        .eval("document.querySelector('#views .cell[data-group=page_view]').textContent")
        .await;
    assert_eq!(
        shown,
        json!(page_views.to_string()),
        "the view's number as the API gives it"
    );
    page.wait_for(
        "document.querySelector('#live-status').textContent == 'following inbound'",
        Duration::from_secs(15),
    )
    .await;
    page.wait_for(
        "[...document.querySelectorAll('#streams td')].some(td => td.textContent == 'transactions')",
        Duration::from_secs(15),
    )
    .await;

    // An event posted now shows in the live panel within 2 s.
    let id = uuid::Uuid::now_v7().to_string();
    post(
        &url,
        &[json!({"type": "signup", "event_id": id, "payload": {"plan": "plus"}})],
    )
    .await;
    page.wait_for(
        &format!("document.querySelector('#live-rows tr[data-event-id=\"{id}\"]')"),
        Duration::from_secs(2),
    )
    .await;
    let row = page
        .eval(&format!(
            "document.querySelector('#live-rows tr[data-event-id=\"{id}\"]').textContent"
        ))
        .await;
    assert!(
        row.as_str().unwrap().contains(r#"{"plan":"plus"}"#),
        "{row}"
    );

    // No secret in any URL the page asked for, and nothing on the console.
    let urls = page
        .eval("performance.getEntriesByType('resource').map(e => e.name).join(' ')")
        .await;
    assert!(!urls.as_str().unwrap().contains(TOKEN), "{urls}");
    let console = page.console();
    assert!(
        console
            .iter()
            .all(|line| !line.starts_with("error") && !line.starts_with("exception")),
        "{console:?}"
    );

    let shot = page
        .call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        )
        .await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&path, &png).unwrap();
    assert!(
        png.starts_with(b"\x89PNG"),
        "a screenshot at {}",
        path.display()
    );
    println!("screenshot: {}", path.display());
}
