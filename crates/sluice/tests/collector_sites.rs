//! Websites as writers, over real HTTP in process: public write keys bound
//! to origins, CORS, browser bodies (text/plain, gzip), the dedup window,
//! rate limits per client address, and the HTTP server's own limits
//! (slow request heads, idle connections, the connection cap).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice::auth::Tokens;
use sluice::collector::ingest::IngestRules;
use sluice::collector::recent::RecentEvents;
use sluice::collector::sites::Sites;
use sluice::collector::Collector;
use sluice::config::Config;
use sluice::http::HttpLimits;
use sluice_backends::local::{LocalStreamOptions, LocalStreams};
use sluice_client::{Producer, ProducerConfig};
use sluice_core::StreamBackend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod support;

const TOKEN: &str = "server-s3cret";
const SHOP_KEY: &str = "wk_shop_example";
const SHOP: &str = "https://shop.example.com";

const SITES: &str = r#"
[collector]
dedup_window_secs = 600
rate_limit_max_clients = 1000

[[sites]]
name = "shop"
write_key = "wk_shop_example"
origins = ["https://shop.example.com", "https://*.example.com"]
headers = { site = "shop" }

[[sites]]
name = "limited"
write_key = "wk_limited_site"
origins = ["https://limited.example.org"]
rate_limit = { events_per_sec = 1, burst = 5 }
store_client_address = true
"#;

struct Server {
    url: String,
    address: SocketAddr,
    collector: Arc<Collector>,
    _dir: tempfile::TempDir,
}

async fn serve_with(config_text: &str, limits: HttpLimits) -> Server {
    serve_on(config_text, limits, None).await
}

/// As [`serve_with`]; with `stall`, every write to the stream first takes a
/// permit from it.
async fn serve_on(
    config_text: &str,
    limits: HttpLimits,
    stall: Option<Arc<tokio::sync::Semaphore>>,
) -> Server {
    let config = Config::parse(config_text, "test.toml").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut streams: Arc<dyn StreamBackend> =
        Arc::new(LocalStreams::open(dir.path(), LocalStreamOptions::default()).unwrap());
    streams.create_stream("inbound", 2).await.unwrap();
    if stall.is_some() {
        let faults = sluice_backends::fault::Faults {
            stall,
            ..Default::default()
        };
        streams = Arc::new(sluice_backends::fault::FaultyStreams::new(streams, faults));
    }
    let producer = Producer::start(streams.clone(), "inbound", ProducerConfig::default())
        .await
        .unwrap();
    let rules = IngestRules {
        max_event_bytes: 64 * 1024,
        max_events: 100,
        partition_key_header: None,
        source: "web".into(),
    };
    let c = &config.collector;
    let collector = Arc::new(
        Collector::new(producer, rules, 10_000)
            .with_max_body_bytes(2 << 20)
            .with_sites(
                Sites::new(
                    &config.sites,
                    c.trusted_proxies.clone(),
                    c.rate_limit_max_clients,
                ),
                RecentEvents::new(Duration::from_secs(c.dedup_window_secs), c.dedup_max_events),
            ),
    );
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
        Tokens::new(vec![TOKEN.into()]),
        sluice::health::Health::new(collector.clone()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(sluice::http::serve(
        listener,
        app,
        limits,
        std::future::pending(),
    ));
    Server {
        url: format!("http://{address}"),
        address,
        collector,
        _dir: dir,
    }
}

async fn serve(config_text: &str) -> Server {
    serve_with(config_text, HttpLimits::default()).await
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// A browser's beacon: text/plain NDJSON, the key in the query.
async fn beacon(url: &str, key: &str, origin: Option<&str>, body: &str) -> reqwest::Response {
    let mut request = http()
        .post(format!("{url}/v1/events?key={key}"))
        .header("content-type", "text/plain;charset=UTF-8")
        .body(body.to_owned());
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    request.send().await.unwrap()
}

/// A server's JSON post, with a bearer token or without.
async fn server_post(url: &str, token: Option<&str>, body: &'static str) -> reqwest::Response {
    let mut request = http()
        .post(format!("{url}/v1/events"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

/// The inbound stream's envelopes, through the read API.
async fn inbound(url: &str) -> Vec<serde_json::Value> {
    let text = http()
        .get(format!("{url}/v1/streams/inbound/records?limit=100000"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn header(envelope: &serde_json::Value, name: &str) -> Option<String> {
    envelope["headers"][name].as_str().map(str::to_owned)
}

async fn error_of(response: reqwest::Response) -> String {
    let body: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    body["error"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_key_writes_from_its_origins_only_and_opens_nothing_else() {
    let server = serve(SITES).await;
    let url = &server.url;
    let body = "{\"type\":\"page_view\",\"headers\":{\"site\":\"forged\"}}\n{\"type\":\"click\"}\n";

    let ok = beacon(url, SHOP_KEY, Some(SHOP), body).await;
    assert_eq!(ok.status(), 202);
    assert_eq!(ok.headers()["access-control-allow-origin"], SHOP);
    assert_eq!(ok.headers()["vary"], "Origin");
    assert!(ok
        .headers()
        .get("access-control-allow-credentials")
        .is_none());
    // One leading wildcard label; a request without Origin is not a browser's.
    let sub = beacon(url, SHOP_KEY, Some("https://m.example.com"), body).await;
    assert_eq!(sub.status(), 202);
    assert_eq!(beacon(url, SHOP_KEY, None, body).await.status(), 202);
    // The key in a header, as a page's fetch may send it.
    let in_header = http()
        .post(format!("{url}/v1/events"))
        .header("sluice-key", SHOP_KEY)
        .header("origin", SHOP)
        .header("content-type", "application/json")
        .body(r#"{"type":"signup"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(in_header.status(), 202);

    let unknown = beacon(url, "wk_not_a_site", Some(SHOP), body).await;
    assert_eq!(unknown.status(), 401);
    assert_eq!(error_of(unknown).await, "unknown write key");
    let elsewhere = beacon(url, SHOP_KEY, Some("https://evil.example.net"), body).await;
    assert_eq!(elsewhere.status(), 403);
    assert!(elsewhere
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    assert!(error_of(elsewhere)
        .await
        .contains("may not use this write key"));
    let apex = beacon(url, SHOP_KEY, Some("https://example.com"), body).await;
    assert_eq!(apex.status(), 403);

    // The read API: a write key is refused, in the query or a header.
    for request in [
        http().get(format!("{url}/v1/streams?key={SHOP_KEY}")),
        http()
            .get(format!("{url}/v1/streams/inbound/records"))
            .header("sluice-key", SHOP_KEY),
    ] {
        let refused = request.send().await.unwrap();
        assert_eq!(refused.status(), 403);
        assert!(error_of(refused)
            .await
            .contains("opens POST /v1/events only"));
    }
    // Servers still write with their bearer token, and need one.
    let anonymous = server_post(url, None, r#"{"type":"click"}"#).await;
    assert_eq!(anonymous.status(), 401);

    // What landed: the site's events, its header set over the sender's.
    let landed = inbound(url).await;
    assert_eq!(landed.len(), 7);
    assert!(landed
        .iter()
        .all(|e| header(e, "site").as_deref() == Some("shop")));
    assert!(landed.iter().all(|e| header(e, "client_address").is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflights_are_answered_for_allowed_origins_methods_and_headers_only() {
    let server = serve(SITES).await;
    let preflight = |query: &str, origin: &str, method: &str, headers: &str| {
        let mut request = http()
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/v1/events{query}", server.url),
            )
            .header("origin", origin)
            .header("access-control-request-method", method);
        if !headers.is_empty() {
            request = request.header("access-control-request-headers", headers);
        }
        request.send()
    };
    let ok = preflight("", SHOP, "POST", "content-type, sluice-key, traceparent")
        .await
        .unwrap();
    assert_eq!(ok.status(), 204);
    let h = ok.headers();
    assert_eq!(h["access-control-allow-origin"], SHOP);
    assert_eq!(h["access-control-allow-methods"], "POST");
    assert_eq!(
        h["access-control-allow-headers"],
        "content-type, sluice-key, traceparent"
    );
    assert_eq!(h["access-control-max-age"], "7200");
    assert_eq!(h["vary"], "Origin");
    assert!(h.get("access-control-allow-credentials").is_none());
    let keyed = preflight(&format!("?key={SHOP_KEY}"), SHOP, "POST", "content-type")
        .await
        .unwrap();
    assert_eq!(keyed.status(), 204);

    for (query, origin, method, headers, reason) in [
        (
            "",
            "https://evil.example.net",
            "POST",
            "",
            "may not send events",
        ),
        (
            "?key=wk_limited_site",
            SHOP,
            "POST",
            "",
            "may not send events",
        ),
        ("", SHOP, "DELETE", "", "only POST"),
        ("", SHOP, "POST", "content-type, x-admin", "x-admin"),
        ("", SHOP, "POST", "authorization", "authorization"),
    ] {
        let refused = preflight(query, origin, method, headers).await.unwrap();
        assert_eq!(refused.status(), 403, "{origin} {method} {headers}");
        assert!(refused
            .headers()
            .get("access-control-allow-origin")
            .is_none());
        let error = error_of(refused).await;
        assert!(error.contains(reason), "{error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_bodies_are_read_within_the_body_limit_and_a_bomb_gets_413() {
    let server = serve(SITES).await;
    let url = &server.url;
    let gzip = |data: &[u8]| {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    };
    let post = |body: Vec<u8>, encoding: &str| {
        http()
            .post(format!("{url}/v1/events?key={SHOP_KEY}"))
            .header("content-type", "text/plain")
            .header("content-encoding", encoding)
            .header("origin", SHOP)
            .body(body)
            .send()
    };
    let events: String = (0..50)
        .map(|i| format!("{{\"type\":\"click\",\"payload\":{{\"i\":{i}}}}}\n"))
        .collect();
    let ok = post(gzip(events.as_bytes()), "gzip").await.unwrap();
    assert_eq!(ok.status(), 202);
    assert_eq!(ok.text().await.unwrap(), r#"{"accepted":50}"#);

    // 1 GiB of zeros, compressed to about 1 MiB: refused after at most the
    // body limit (2 MiB here) was decompressed.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..1024 {
        encoder.write_all(&zeros).unwrap();
    }
    let bomb = encoder.finish().unwrap();
    assert!(bomb.len() < 2 << 20, "{} bytes", bomb.len());
    let refused = post(bomb, "gzip").await.unwrap();
    assert_eq!(refused.status(), 413);
    assert!(error_of(refused).await.contains("limit of 2097152 bytes"));

    let corrupt = post(b"not gzip at all".to_vec(), "gzip").await.unwrap();
    assert_eq!(corrupt.status(), 400);
    assert!(error_of(corrupt).await.contains("gzip body is corrupt"));
    let brotli = post(b"x".to_vec(), "br").await.unwrap();
    assert_eq!(brotli.status(), 415);
    // A content type that is not taken is refused before the body is read.
    let html = http()
        .post(format!("{url}/v1/events?key={SHOP_KEY}"))
        .header("content-type", "text/html")
        .body(vec![b'x'; 64 << 10])
        .send()
        .await
        .unwrap();
    assert_eq!(html.status(), 415);
    // 64 KiB of garbage, as a beacon: a clear 400, and the server serves on.
    let garbage: String = (0..64 * 1024)
        .map(|i| char::from(b'!' + (i % 90) as u8))
        .collect();
    let bad = beacon(url, SHOP_KEY, Some(SHOP), &garbage).await;
    assert_eq!(bad.status(), 400);
    let body: serde_json::Value = serde_json::from_str(&bad.text().await.unwrap()).unwrap();
    assert!(body["rejected"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
    assert_eq!(
        beacon(url, SHOP_KEY, Some(SHOP), "{\"type\":\"click\"}")
            .await
            .status(),
        202
    );
    assert_eq!(inbound(url).await.len(), 51);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_event_is_acknowledged_and_not_written_again() {
    let server = serve(SITES).await;
    let url = &server.url;
    let event = |id: &str| format!("{{\"type\":\"purchase\",\"event_id\":\"{id}\"}}\n");
    for _ in 0..3 {
        let resend = beacon(url, SHOP_KEY, Some(SHOP), &event("e-1")).await;
        assert_eq!(resend.status(), 202);
        assert_eq!(resend.text().await.unwrap(), r#"{"accepted":1}"#);
    }
    // Twice in one request, and beside a new one.
    let mixed = format!("{}{}{}", event("e-2"), event("e-2"), event("e-1"));
    assert_eq!(
        beacon(url, SHOP_KEY, Some(SHOP), &mixed)
            .await
            .text()
            .await
            .unwrap(),
        r#"{"accepted":3}"#
    );
    // The same id from another site is another event.
    let limited = beacon(
        url,
        "wk_limited_site",
        Some("https://limited.example.org"),
        &event("e-1"),
    )
    .await;
    assert_eq!(limited.status(), 202);
    let landed = inbound(url).await;
    let mut ids: Vec<(String, String)> = landed
        .iter()
        .map(|e| {
            (
                header(e, "event_id").unwrap(),
                header(e, "site").unwrap_or_default(),
            )
        })
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            ("e-1".to_owned(), String::new()),
            ("e-1".to_owned(), "shop".to_owned()),
            ("e-2".to_owned(), "shop".to_owned()),
        ]
    );
    assert_eq!(server.collector.recent.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_while_its_first_copy_is_written_waits_for_it_and_lands_once() {
    let stall = Arc::new(tokio::sync::Semaphore::new(0));
    let server = serve_on(SITES, HttpLimits::default(), Some(stall.clone())).await;
    let send = |url: String| async move {
        let body = "{\"type\":\"purchase\",\"event_id\":\"e-1\"}\n";
        let response = beacon(&url, SHOP_KEY, Some(SHOP), body).await;
        (response.status(), response.text().await.unwrap())
    };
    // The first copy is held at the stream while its resend comes in, as a
    // page's beacon and the next page's resend of it can be.
    let first = tokio::spawn(send(server.url.clone()));
    received_at_least(&server.url, 1.0).await;
    let resend = tokio::spawn(send(server.url.clone()));
    received_at_least(&server.url, 2.0).await;
    stall.add_permits(1_000);
    let accepted = (
        reqwest::StatusCode::ACCEPTED,
        r#"{"accepted":1}"#.to_owned(),
    );
    assert_eq!(first.await.unwrap(), accepted);
    assert_eq!(resend.await.unwrap(), accepted);
    let landed = inbound(&server.url).await;
    assert_eq!(landed.len(), 1, "{landed:?}");
}

/// Waits until the collector has received `n` events (read, not yet
/// written).
async fn received_at_least(url: &str, n: f64) {
    support::wait::wait_for(Duration::from_secs(10), "events received", || async {
        match support::process::metric(url, "sluice_collector_events_received_total").await {
            Some(received) if received >= n => Ok(()),
            received => Err(format!("{received:?} of {n}")),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_hold_per_client_address_and_forged_forwarding_is_ignored() {
    let server = serve(SITES).await;
    let url = &server.url;
    let origin = "https://limited.example.org";
    let five: String = (0..5).map(|_| "{\"type\":\"click\"}\n").collect();
    assert_eq!(
        beacon(url, "wk_limited_site", Some(origin), &five)
            .await
            .status(),
        202
    );
    let limited = beacon(url, "wk_limited_site", Some(origin), "{\"type\":\"click\"}").await;
    assert_eq!(limited.status(), 429);
    assert!(
        limited.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u32>()
            .unwrap()
            >= 1
    );
    // The page can read the answer: its origin is allowed.
    assert_eq!(limited.headers()["access-control-allow-origin"], origin);
    assert_eq!(
        limited.headers()["access-control-expose-headers"],
        "Retry-After"
    );
    assert!(error_of(limited).await.contains("rate limit"));

    // 100,000 requests, each naming another client in X-Forwarded-For, from
    // a peer that is no trusted proxy: all count against the peer, the
    // limiter tracks one address, and the server serves on.
    let sent = std::sync::atomic::AtomicUsize::new(0);
    let accepted = std::sync::atomic::AtomicUsize::new(0);
    let client = http();
    let worker = || async {
        loop {
            let i = sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if i >= 100_000 {
                break;
            }
            let forged = format!("{}.{}.{}.{}", 1 + i / 65536, (i / 256) % 256, i % 256, 7);
            let status = client
                .post(format!("{url}/v1/events?key=wk_limited_site"))
                .header("content-type", "text/plain")
                .header("x-forwarded-for", forged)
                .body("{\"type\":\"click\"}")
                .send()
                .await
                .unwrap()
                .status();
            assert!(status == 202 || status == 429, "{status}");
            if status == 202 {
                accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    };
    let started = Instant::now();
    futures::future::join_all((0..32).map(|_| worker())).await;
    let elapsed = started.elapsed().as_secs_f64();
    let limiter = server
        .collector
        .sites
        .by_key("wk_limited_site")
        .unwrap()
        .limiter
        .as_ref()
        .unwrap();
    assert_eq!(limiter.tracked(), 1);
    // At 1 event/s, only what the seconds of the flood refilled got through.
    let got = accepted.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        got as f64 <= elapsed + 2.0,
        "{got} accepted in {elapsed:.1} s"
    );
    let server_side = server_post(url, Some(TOKEN), r#"{"type":"server_click"}"#).await;
    assert_eq!(server_side.status(), 202);
    // The address is stored for the site that asked for it, and only there.
    let landed = inbound(url).await;
    assert_eq!(landed.len(), 5 + got + 1);
    for envelope in &landed {
        let stored = header(envelope, "client_address");
        match header(envelope, "type").as_deref() {
            Some("click") => assert_eq!(stored.as_deref(), Some("127.0.0.1")),
            _ => assert_eq!(stored, None),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket() {
    let config = SITES.replace(
        "rate_limit_max_clients = 1000",
        "rate_limit_max_clients = 1000\ntrusted_proxies = [\"127.0.0.0/8\"]",
    );
    let server = serve(&config).await;
    let origin = "https://limited.example.org";
    let five: String = (0..5).map(|_| "{\"type\":\"click\"}\n").collect();
    let post = |client: &'static str, body: String| {
        http()
            .post(format!("{}/v1/events?key=wk_limited_site", server.url))
            .header("content-type", "text/plain")
            .header("origin", origin)
            .header("x-forwarded-for", client)
            .body(body)
            .send()
    };
    assert_eq!(
        post("203.0.113.1", five.clone()).await.unwrap().status(),
        202
    );
    assert_eq!(
        post("203.0.113.1", five.clone()).await.unwrap().status(),
        429
    );
    assert_eq!(
        post("203.0.113.2", five.clone()).await.unwrap().status(),
        202
    );
    let landed = inbound(&server.url).await;
    let mut addresses: Vec<String> = landed
        .iter()
        .map(|e| header(e, "client_address").unwrap())
        .collect();
    addresses.dedup();
    assert_eq!(addresses.len(), 2, "{addresses:?}");
    assert!(addresses.contains(&"203.0.113.1".to_owned()));
}

/// Opens a connection and sends half a request head.
async fn half_a_request(address: SocketAddr) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Ty")
        .await
        .unwrap();
    stream
}

/// Waits until the server closes `stream` (EOF or reset), or `limit` passes.
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // An answer (408) before the close is fine.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_and_idle_connections_are_closed_and_connections_are_capped() {
    let limits = HttpLimits {
        max_connections: 3_500,
        header_read_timeout: Duration::from_secs(2),
    };
    let server = serve_with(SITES, limits).await;
    // 3,000 connections that send half a request head and wait.
    let mut slow = Vec::new();
    for _ in 0..3_000 {
        slow.push(half_a_request(server.address).await);
    }
    let open = || {
        sluice_telemetry::metrics::COLLECTOR_CONNECTIONS
            .gauge(&[])
            .get()
    };
    assert!(open() >= 2_900, "{} open", open());
    // Meanwhile a real request is served.
    let ok = beacon(&server.url, SHOP_KEY, Some(SHOP), "{\"type\":\"click\"}").await;
    assert_eq!(ok.status(), 202);
    // Every slow one is closed once the header-read timeout passes.
    for stream in &mut slow {
        assert!(closed_within(stream, Duration::from_secs(10)).await);
    }
    drop(slow);
    // An idle keep-alive connection is closed after the same time.
    let mut idle = tokio::net::TcpStream::connect(server.address)
        .await
        .unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 256];
    let n = idle.read(&mut answer).await.unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"));
    let quiet = Instant::now();
    assert!(closed_within(&mut idle, Duration::from_secs(10)).await);
    assert!(quiet.elapsed() >= Duration::from_millis(1_500));

    // Past max_connections, new connections are closed as they arrive.
    let capped = serve_with(
        SITES,
        HttpLimits {
            max_connections: 10,
            header_read_timeout: Duration::from_secs(30),
        },
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(half_a_request(capped.address).await);
    }
    let refused_before = sluice_telemetry::metrics::COLLECTOR_CONNECTIONS_REFUSED
        .counter(&[])
        .get();
    let mut extra = half_a_request(capped.address).await;
    assert!(closed_within(&mut extra, Duration::from_secs(5)).await);
    assert!(
        sluice_telemetry::metrics::COLLECTOR_CONNECTIONS_REFUSED
            .counter(&[])
            .get()
            > refused_before
    );
    // Once one goes, there is room again.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let response = http().get(format!("{}/healthz", capped.url)).send().await;
        if matches!(&response, Ok(r) if r.status() == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no room after a connection closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
