//! Events land in exactly the streams their rules name, bad input gets
//! reasons, kill -9 loses no acknowledged event, and aggregated inbound
//! records route every event once, in order.

use super::*;

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
    let first = page_event_ids(page).await;
    let rest = client()
        .get(format!(
            "{url}/v1/streams/inbound/records?limit=1000&cursor={cursor}"
        ))
        .send()
        .await
        .unwrap();
    let second = page_event_ids(rest).await;
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

/// The event ids of a page of the read API, in order.
async fn page_event_ids(page: reqwest::Response) -> Vec<String> {
    page.text()
        .await
        .unwrap()
        .lines()
        .map(|l| event_id(l.as_bytes()))
        .collect()
}
