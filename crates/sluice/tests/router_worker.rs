//! The router worker on the embedded backend, in process: it follows splits
//! and merges of the inbound stream (children only after parents), keeps
//! order per partition key, and loses nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;

use sluice::config::Config;
use sluice::router::worker::{RouterWorker, WorkerSettings};
use sluice::router::RouteAndDeliver;
use sluice_backends::fault::{Faults, FaultyStreams};
use sluice_backends::local::{LocalBackend, LocalStreamOptions};
use sluice_client::{Producer, ProducerConfig};
use sluice_core::retry::Backoff;
use sluice_core::router::RouterOptions;
use sluice_core::stream::{PutRecord, StartPosition};
use sluice_core::{StreamBackend, TableBackend};

const CONFIG: &str = r#"
[streams]
inbound_shards = 2
output_shards = 3
[[routes]]
name = "orders"
match = { type = ["order"] }
to = ["orders"]
"#;

fn record(key: &str, n: u32) -> PutRecord {
    let data =
        format!(r#"{{"headers":{{"type":"order","key":"{key}","n":{n}}},"payload":{{"n":{n}}}}}"#);
    PutRecord::new(key, Bytes::from(data))
}

async fn read_stream(streams: &Arc<dyn StreamBackend>, name: &str) -> Vec<Vec<(String, u32)>> {
    let mut per_shard = Vec::new();
    for shard in streams.list_shards(name).await.unwrap() {
        let mut it = streams
            .get_shard_iterator(name, &shard.shard_id, StartPosition::TrimHorizon)
            .await
            .unwrap();
        let mut records = Vec::new();
        loop {
            let out = streams.get_records(&it, 10_000).await.unwrap();
            let empty = out.records.is_empty();
            for r in out.records {
                let v: serde_json::Value = serde_json::from_slice(&r.data).unwrap();
                records.push((
                    r.partition_key.to_string(),
                    v["headers"]["n"].as_u64().unwrap() as u32,
                ));
            }
            match out.next_iterator {
                Some(next) if !empty => it = next,
                _ => break,
            }
        }
        per_shard.push(records);
    }
    per_shard
}

/// Embedded storage with the streams of `CONFIG`.
async fn setup() -> (
    tempfile::TempDir,
    Arc<dyn StreamBackend>,
    Arc<dyn TableBackend>,
    Config,
) {
    let dir = tempfile::tempdir().unwrap();
    let backend = LocalBackend::open(dir.path(), LocalStreamOptions::default()).unwrap();
    let streams: Arc<dyn StreamBackend> = backend.streams.clone();
    let table: Arc<dyn TableBackend> = backend.table.clone();
    let config = Config::parse(CONFIG, "test").unwrap();
    sluice::server::ensure_streams(streams.as_ref(), &config, true)
        .await
        .unwrap();
    (dir, streams, table, config)
}

/// The router worker under test, on the "checkpoints" lease table.
/// A producer for each output stream of `rules`, writing to `streams`.
async fn producers(
    streams: &Arc<dyn StreamBackend>,
    rules: &sluice_core::rules::RuleSet,
) -> Vec<Producer> {
    let mut producers = Vec::new();
    for name in rules.streams() {
        producers.push(
            Producer::start(streams.clone(), name, ProducerConfig::default())
                .await
                .unwrap(),
        );
    }
    producers
}

fn router(
    streams: &Arc<dyn StreamBackend>,
    table: &Arc<dyn TableBackend>,
    rules: Arc<sluice_core::rules::RuleSet>,
    producers: Vec<Producer>,
) -> RouterWorker {
    RouterWorker {
        streams: streams.clone(),
        table: table.clone(),
        deliver: Arc::new(RouteAndDeliver {
            rules,
            options: RouterOptions::new("inbound"),
            producers,
        }),
        settings: Arc::new(WorkerSettings {
            inbound: "inbound".into(),
            checkpoint_table: "checkpoints".into(),
            worker_id: "router-test".into(),
            failover: Duration::from_secs(10),
            batch_records: 100,
            idle_poll: Duration::from_millis(5),
            backoff: Backoff::for_tests(),
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_splits_and_merges_keeping_order_per_key() {
    let (_dir, streams, table, config) = setup().await;

    let rules = Arc::new(config.rules());
    // Slow deliveries, so that reading a child before its parent ended would
    // interleave their records.
    let slow: Arc<dyn StreamBackend> = Arc::new(FaultyStreams::new(
        streams.clone(),
        Faults {
            delay_rate: 1.0,
            max_delay: Duration::from_millis(20),
            seed: 3,
            ..Faults::default()
        },
    ));
    let producers = producers(&slow, &rules).await;
    let worker = router(&streams, &table, rules, producers);

    let inbound = Producer::start(streams.clone(), "inbound", ProducerConfig::default())
        .await
        .unwrap();
    let keys: Vec<String> = (0..40).map(|k| format!("user-{k}")).collect();
    let mut n = 0u32;
    let mut send_round = |rounds: u32| {
        let batch: Vec<PutRecord> = (0..rounds)
            .flat_map(|_| {
                n += 1;
                let round = n;
                keys.iter()
                    .map(move |k| record(k, round))
                    .collect::<Vec<_>>()
            })
            .collect();
        batch
    };
    inbound.send(send_round(10)).await.unwrap();
    let shards = streams.list_shards("inbound").await.unwrap();
    streams
        .split_shard(
            "inbound",
            &shards[0].shard_id,
            shards[0].hash_key_range.1 / 2,
        )
        .await
        .unwrap();
    // Writes after the split go to the children; the producer keeps its order per key.
    let inbound = Producer::start(streams.clone(), "inbound", ProducerConfig::default())
        .await
        .unwrap();
    inbound.send(send_round(10)).await.unwrap();
    let shards = streams.list_shards("inbound").await.unwrap();
    let children: Vec<_> = shards
        .iter()
        .filter(|s| s.parent_shard_id.as_deref() == Some("shardId-000000000000"))
        .collect();
    streams
        .merge_shards("inbound", &children[0].shard_id, &children[1].shard_id)
        .await
        .unwrap();
    let inbound = Producer::start(streams.clone(), "inbound", ProducerConfig::default())
        .await
        .unwrap();
    inbound.send(send_round(10)).await.unwrap();
    let expected = 30 * keys.len();
    // Records that are not envelopes, as another producer might write them.
    let junk = vec![
        PutRecord::new("junk-1", Bytes::from_static(b"\xff\xfe not json")),
        PutRecord::new("junk-2", Bytes::from_static(b"[1,2,3]")),
        PutRecord::new(
            "junk-3",
            Bytes::from_static(br#"{"headers":{"type":{"nested":1}}}"#),
        ),
    ];
    streams.put_records("inbound", junk).await.unwrap();

    // Start routing only now: the worker sees the parent, its two children
    // and their merged child at once, and must read them in lineage order.
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(worker.run(stopped));

    let start = Instant::now();
    loop {
        let routed: usize = read_stream(&streams, "orders")
            .await
            .iter()
            .map(Vec::len)
            .sum();
        if routed >= expected {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "only {routed} of {expected} routed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    running.await.unwrap().unwrap();

    let output = read_stream(&streams, "orders").await;
    assert_eq!(
        output.iter().map(Vec::len).sum::<usize>(),
        expected,
        "each record once"
    );
    let mut last: HashMap<String, u32> = HashMap::new();
    for shard in &output {
        for (key, n) in shard {
            if let Some(previous) = last.insert(key.clone(), *n) {
                assert!(*n > previous, "{key}: {n} after {previous}");
            }
        }
    }
    assert_eq!(last.len(), keys.len());
    assert!(last.values().all(|n| *n == 30));
    // Each record that is not an envelope is in dead-letter with its reason.
    let mut reasons: Vec<(String, String)> = Vec::new();
    for shard in streams.list_shards("dead-letter").await.unwrap() {
        let it = streams
            .get_shard_iterator("dead-letter", &shard.shard_id, StartPosition::TrimHorizon)
            .await
            .unwrap();
        for r in streams.get_records(&it, 100).await.unwrap().records {
            let v: serde_json::Value = serde_json::from_slice(&r.data).unwrap();
            reasons.push((
                r.partition_key.to_string(),
                v["headers"]["reason"].as_str().unwrap().to_owned(),
            ));
        }
    }
    reasons.sort();
    assert_eq!(
        reasons,
        [
            ("junk-1".into(), "not_json".into()),
            ("junk-2".into(), "not_an_object".into()),
            ("junk-3".into(), "bad_headers".into())
        ]
    );
    // Parents were read to their end and marked so.
    let checkpoints = table.scan("checkpoints").await.unwrap();
    let ended = checkpoints
        .iter()
        .filter(|(_, item)| item["checkpoint"].as_str() == Some("SHARD_END"))
        .count();
    assert_eq!(
        ended, 3,
        "shard 0 and both its children ended: {checkpoints:?}"
    );
}

/// Checkpoint rows of the earlier router (`inbound/shard`) are carried over:
/// routing resumes after them, and an ended shard is not read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_of_the_earlier_router_are_carried_over() {
    use sluice_core::table::{AttrValue, Condition, Item};
    let (_dir, streams, table, config) = setup().await;
    // Ten records on each shard; remember where shard 0's fourth one is.
    let shards = streams.list_shards("inbound").await.unwrap();
    let mut per_shard: Vec<Vec<String>> = vec![Vec::new(), Vec::new()];
    let mut n = 0;
    while per_shard.iter().any(|s| s.len() < 10) {
        n += 1;
        let key = format!("k{n}");
        let put = record(&key, n);
        let shard = usize::from(put.hash_key() > shards[0].hash_key_range.1);
        if per_shard[shard].len() == 10 {
            continue;
        }
        let result = streams.put_records("inbound", vec![put]).await.unwrap();
        let sluice_core::stream::PutResult::Ok {
            sequence_number, ..
        } = &result[0]
        else {
            panic!("{result:?}")
        };
        per_shard[shard].push(sequence_number.to_string());
    }
    table.ensure_table("checkpoints").await.unwrap();
    let old =
        |value: &str| -> Item { [("checkpoint".to_owned(), AttrValue::S(value.into()))].into() };
    table
        .put(
            "checkpoints",
            &format!("inbound/{}", shards[0].shard_id),
            old(&per_shard[0][3]),
            Condition::Always,
        )
        .await
        .unwrap();
    table
        .put(
            "checkpoints",
            &format!("inbound/{}", shards[1].shard_id),
            old("SHARD_END"),
            Condition::Always,
        )
        .await
        .unwrap();

    let rules = Arc::new(config.rules());
    let producers = producers(&streams, &rules).await;
    let worker = router(&streams, &table, rules, producers);
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(worker.run(stopped));
    let start = Instant::now();
    loop {
        let routed: usize = read_stream(&streams, "orders")
            .await
            .iter()
            .map(Vec::len)
            .sum();
        if routed >= 6 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{routed} routed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    running.await.unwrap().unwrap();
    // Shard 0 after its fourth record: six; shard 1 had ended: none.
    let routed: usize = read_stream(&streams, "orders")
        .await
        .iter()
        .map(Vec::len)
        .sum();
    assert_eq!(routed, 6);
    let rows = table.scan("checkpoints").await.unwrap();
    assert!(
        rows.iter().all(|(key, _)| !key.contains('/')),
        "old rows are gone: {rows:?}"
    );
}
