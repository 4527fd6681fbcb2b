//! The website end in a real browser: the example shop's pages, served from
//! another origin than the collector, run `sluice.js` in headless Chromium
//! against a real `sluice up` process. Page views (a single-page navigation
//! too), a data-sluice-event click and a purchase tracked right before the
//! page is left each land once, in the stream the rules route them to;
//! events tracked while the collector is down survive a reload and arrive
//! once it is back; a page on an origin the key does not list, or with an
//! unknown key, is refused and lands nothing.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use serde_json::Value;

use support::cdp::{Chromium, Page};
use support::process::Sluice;

const KEY: &str = "wk_shop_example";

/// Serves the example shop's files, its snippet pointing at `collector`;
/// under `/unknown/` with a write key no site has.
async fn serve_shop(collector: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/shop");
    let state = Arc::new((dir, collector.to_owned()));
    async fn file(
        State(state): State<Arc<(PathBuf, String)>>,
        UrlPath(path): UrlPath<String>,
    ) -> axum::response::Response {
        let (dir, collector) = state.as_ref();
        let (name, key) = match path.strip_prefix("unknown/") {
            Some(name) => (name, "wk_unknown_key"),
            None => (path.as_str(), KEY),
        };
        if name.contains("..") || name.contains('/') {
            return StatusCode::NOT_FOUND.into_response();
        }
        let Ok(text) = std::fs::read_to_string(dir.join(name)) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        let text = text
            .replace("http://127.0.0.1:8080", collector)
            .replace(KEY, key);
        let kind = if name.ends_with(".css") {
            "text/css"
        } else {
            "text/html; charset=utf-8"
        };
        ([(header::CONTENT_TYPE, kind)], text).into_response()
    }
    let app = axum::Router::new()
        .route("/{*path}", axum::routing::get(file))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn config(shop_origin: &str) -> String {
    let routes = sluice::config::DEFAULT_CONFIG
        .split_once("# Routes are tried in order")
        .unwrap()
        .1;
    format!(
        r#"
[[sites]]
name = "shop"
write_key = "{KEY}"
origins = ["{shop_origin}"]
headers = {{ site = "shop" }}

# Routes are tried in order{routes}"#
    )
}

/// Every envelope of a stream, through the read API.
async fn records(sluice: &str, stream: &str) -> Vec<Value> {
    let response = reqwest::get(format!("{sluice}/v1/streams/{stream}/records?limit=100000"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{stream}");
    response
        .text()
        .await
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn kinds(envelopes: &[Value]) -> HashMap<String, usize> {
    let mut kinds = HashMap::new();
    for e in envelopes {
        *kinds
            .entry(e["headers"]["type"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    kinds
}

/// Waits until the inbound stream holds `count` records.
async fn wait_for_inbound(sluice: &str, count: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let inbound = records(sluice, "inbound").await;
        if inbound.len() >= count {
            return inbound;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited 30 s for {count} records, have {}: {:?}",
            inbound.len(),
            kinds(&inbound)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the page's tracker has nothing left to send.
async fn drained(page: &Page<'_>) {
    page.wait_for(
        &format!("window.sluice && !localStorage.getItem('sluice:q:{KEY}') && window.sluice.stats().queued == 0"),
        Duration::from_secs(30),
    )
    .await;
}

fn assert_once(envelopes: &[Value]) {
    let mut seen = HashMap::new();
    for e in envelopes {
        let id = e["headers"]["event_id"].as_str().unwrap().to_owned();
        *seen.entry(id).or_insert(0) += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "events written twice: {twice:?}");
}

/// Waits until a counter of the collector's /metrics is at least 1.
async fn wait_for_metric(sluice: &str, series: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let value = support::process::metric(sluice, series)
            .await
            .unwrap_or(0.0);
        if value >= 1.0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited 30 s for {series}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn free_address() -> String {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shop_in_chromium_sends_its_events_and_loses_none() {
    let dir = tempfile::tempdir().unwrap();
    let address = free_address();
    let collector = format!("http://{address}");
    let shop = serve_shop(&collector).await;
    let other_origin = serve_shop(&collector).await;
    let config = config(&shop);
    let mut sluice = Sluice::start_at(dir.path(), "up", &config, &[], &address);
    let browser = Chromium::launch().await;
    let page = browser.page().await;

    // Load, a data-sluice-event click, another page and a single-page
    // navigation, then a purchase tracked as the page is left.
    page.goto(&format!("{shop}/index.html")).await;
    page.wait_for("window.sluice", Duration::from_secs(10))
        .await;
    page.eval("document.getElementById('add-trail').click()")
        .await;
    page.goto(&format!("{shop}/product.html")).await;
    page.wait_for("window.sluice", Duration::from_secs(10))
        .await;
    page.eval("document.getElementById('tab-reviews').click()")
        .await;
    page.goto(&format!("{shop}/checkout.html")).await;
    page.wait_for("window.sluice", Duration::from_secs(10))
        .await;
    page.eval("document.getElementById('place-order').click()")
        .await;
    page.wait_for(
        "location.pathname == '/thanks.html' && document.readyState == 'complete' && window.sluice",
        Duration::from_secs(10),
    )
    .await;
    drained(&page).await;

    let inbound = wait_for_inbound(&sluice.url, 7).await;
    assert_once(&inbound);
    let expected: HashMap<String, usize> = [("page_view", 5), ("add_to_cart", 1), ("purchase", 1)]
        .into_iter()
        .map(|(k, n)| (k.to_owned(), n))
        .collect();
    assert_eq!(kinds(&inbound), expected);
    let views: Vec<String> = inbound
        .iter()
        .filter(|e| e["headers"]["type"] == "page_view")
        .map(|e| e["payload"]["url"].as_str().unwrap().replace(&shop, ""))
        .collect();
    assert_eq!(
        views[..4],
        [
            "/index.html",
            "/product.html",
            "/product.html?tab=reviews",
            "/checkout.html"
        ]
    );
    assert!(views[4].starts_with("/thanks.html?order=o-"), "{views:?}");
    for e in &inbound {
        assert_eq!(e["headers"]["site"], "shop");
        assert_eq!(e["headers"]["source"], "web");
        assert!(e["headers"].get("client_address").is_none());
    }
    let cart = inbound
        .iter()
        .find(|e| e["headers"]["type"] == "add_to_cart")
        .unwrap();
    assert_eq!(cart["headers"]["sku"], "SKU-00001");
    assert_eq!(cart["headers"]["price"], "89.90");
    let purchase = inbound
        .iter()
        .find(|e| e["headers"]["type"] == "purchase")
        .unwrap();
    assert_eq!(purchase["headers"]["amount"], 218.9);
    assert_eq!(purchase["headers"]["coupon"], "WINTER10");
    // Routed by the rules: the purchase to transactions, the cart event to
    // clickstream and cart, the page views to clickstream; once each.
    let wait_routed = |stream: &'static str, count: usize| {
        let url = sluice.url.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let got = records(&url, stream).await;
                if got.len() >= count {
                    return got;
                }
                assert!(tokio::time::Instant::now() < deadline, "{stream}: {got:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let transactions = wait_routed("transactions", 1).await;
    assert_eq!(
        transactions[0]["headers"]["event_id"],
        purchase["headers"]["event_id"]
    );
    let clickstream = wait_routed("clickstream", 6).await;
    assert_once(&clickstream);
    assert_eq!(kinds(&clickstream)["page_view"], 5);
    assert_eq!(wait_routed("cart", 1).await.len(), 1);
    assert_eq!(records(&sluice.url, "transactions").await.len(), 1);

    // The collector stops; events tracked meanwhile wait in the page, and
    // in localStorage across a reload, until it is back.
    sluice.stop();
    let ids: Vec<String> = serde_json::from_value(
        page.eval(
            "[1, 2, 3].map((n) => window.sluice.track('search', { n }, { query: 'boots ' + n }))",
        )
        .await,
    )
    .unwrap();
    assert_eq!(page.eval("window.sluice.flush()").await, Value::Bool(false));
    page.goto(&format!("{shop}/thanks.html")).await;
    page.wait_for("window.sluice", Duration::from_secs(10))
        .await;
    let stored = page
        .eval(&format!(
            "localStorage.getItem('sluice:q:{KEY}').trim().split('\\n').map((l) => JSON.parse(l).event_id)"
        ))
        .await;
    for id in &ids {
        assert!(
            stored
                .as_array()
                .unwrap()
                .contains(&Value::from(id.as_str())),
            "{id} kept over the reload"
        );
    }
    let sluice = Sluice::start_at(dir.path(), "up", &config, &[], &address);
    drained(&page).await;
    let inbound = wait_for_inbound(&sluice.url, 11).await;
    assert_once(&inbound);
    for id in &ids {
        assert_eq!(
            inbound
                .iter()
                .filter(|e| e["headers"]["event_id"] == id.as_str())
                .count(),
            1,
            "{id}"
        );
    }
    assert_eq!(kinds(&inbound)["page_view"], 6);
    let before = inbound.len();

    // A page on an origin the key does not list, and one with an unknown
    // key: the collector refuses them (without CORS headers, so to the page
    // it is a failed request, retried with backoff), and nothing lands.
    let stranger = browser.page().await;
    stranger.goto(&format!("{other_origin}/index.html")).await;
    wait_for_metric(
        &sluice.url,
        "sluice_collector_events_rejected_total{reason=\"origin_not_allowed\"}",
    )
    .await;
    let unknown = browser.page().await;
    unknown.goto(&format!("{shop}/unknown/index.html")).await;
    wait_for_metric(
        &sluice.url,
        "sluice_collector_requests_total{status=\"401\"}",
    )
    .await;
    for page in [&stranger, &unknown] {
        assert_eq!(page.eval("window.sluice.stats().sent").await, 0);
    }
    assert_eq!(records(&sluice.url, "inbound").await.len(), before);
    // The shop's own pages logged nothing and threw nothing.
    let shop_console = page.console();
    assert!(shop_console.is_empty(), "{shop_console:?}");
}
