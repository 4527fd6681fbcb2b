//! Injected failures lose nothing and keep order per key.

use super::*;

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
