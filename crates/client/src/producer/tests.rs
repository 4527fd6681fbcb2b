//! Producer tests on the embedded backend with injected partial failures.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use sluice_backends::fault::{Faults, FaultyStreams};
use sluice_backends::local::{LocalStreamOptions, LocalStreams};
use sluice_core::retry::Backoff;
use sluice_core::stream::*;
use sluice_core::StreamBackend;

use super::*;

/// Records every PutRecords call's partition keys (per entry, the keys of
/// the user records inside it), to check the batching rule.
struct Recording {
    inner: Arc<dyn StreamBackend>,
    calls: Mutex<Vec<Vec<Vec<String>>>>,
    /// Entries whose key starts with this fail as throttled, unwritten.
    throttle_prefix: Option<&'static str>,
    /// The first call waits for this before it is made.
    hold_first: Option<Arc<tokio::sync::Semaphore>>,
    /// Read as each call starts, into `seen_at_start`.
    watched: Option<Arc<AtomicBool>>,
    seen_at_start: Mutex<Vec<bool>>,
}

impl Recording {
    fn new(inner: Arc<dyn StreamBackend>) -> Self {
        Self {
            inner,
            calls: Mutex::new(Vec::new()),
            throttle_prefix: None,
            hold_first: None,
            watched: None,
            seen_at_start: Mutex::new(Vec::new()),
        }
    }
}

/// The user records in a stored record: itself, or an aggregate's content.
fn user_records(record: &PutRecord) -> Vec<PutRecord> {
    match aggregate::deaggregate(&record.data).unwrap() {
        None => vec![record.clone()],
        Some(inside) => inside
            .into_iter()
            .map(|r| PutRecord::new(r.partition_key, r.data))
            .collect(),
    }
}

#[async_trait]
impl StreamBackend for Recording {
    async fn create_stream(&self, n: &str, s: u32) -> Result<(), StreamError> {
        self.inner.create_stream(n, s).await
    }
    async fn delete_stream(&self, n: &str) -> Result<(), StreamError> {
        self.inner.delete_stream(n).await
    }
    async fn list_streams(&self) -> Result<Vec<String>, StreamError> {
        self.inner.list_streams().await
    }
    async fn describe_stream(&self, n: &str) -> Result<StreamSummary, StreamError> {
        self.inner.describe_stream(n).await
    }
    async fn list_shards(&self, n: &str) -> Result<Vec<Shard>, StreamError> {
        self.inner.list_shards(n).await
    }
    async fn put_records(&self, n: &str, r: Vec<PutRecord>) -> Result<Vec<PutResult>, StreamError> {
        if let Some(watched) = &self.watched {
            let seen = watched.load(Ordering::SeqCst);
            self.seen_at_start.lock().unwrap().push(seen);
        }
        let first = self.calls.lock().unwrap().is_empty();
        self.calls.lock().unwrap().push(
            r.iter()
                .map(|r| {
                    user_records(r)
                        .into_iter()
                        .map(|u| u.partition_key.to_string())
                        .collect()
                })
                .collect(),
        );
        if let (true, Some(hold)) = (first, &self.hold_first) {
            let _ = hold.acquire().await.unwrap();
        }
        let Some(prefix) = self.throttle_prefix else {
            return self.inner.put_records(n, r).await;
        };
        let throttled: Vec<bool> = r
            .iter()
            .map(|r| r.partition_key.starts_with(prefix))
            .collect();
        let passed: Vec<PutRecord> = r
            .into_iter()
            .zip(&throttled)
            .filter(|(_, t)| !**t)
            .map(|(r, _)| r)
            .collect();
        let mut stored = if passed.is_empty() {
            Vec::new()
        } else {
            self.inner.put_records(n, passed).await?
        }
        .into_iter();
        Ok(throttled
            .into_iter()
            .map(|t| {
                if t {
                    PutResult::Failed(PutFailure::Throttled("test".into()))
                } else {
                    stored.next().unwrap()
                }
            })
            .collect())
    }
    async fn get_shard_iterator(
        &self,
        n: &str,
        s: &str,
        p: StartPosition,
    ) -> Result<String, StreamError> {
        self.inner.get_shard_iterator(n, s, p).await
    }
    async fn get_records(&self, i: &str, l: usize) -> Result<GetRecordsOutput, StreamError> {
        self.inner.get_records(i, l).await
    }
    async fn split_shard(&self, n: &str, s: &str, h: u128) -> Result<(), StreamError> {
        self.inner.split_shard(n, s, h).await
    }
    async fn merge_shards(&self, n: &str, a: &str, b: &str) -> Result<(), StreamError> {
        self.inner.merge_shards(n, a, b).await
    }
}

/// Every user record stored, checked to be in the shard its key belongs to.
async fn read_everything(backend: &Arc<dyn StreamBackend>, stream: &str) -> Vec<PutRecord> {
    sluice_backends::conformance::stream::read_all(backend, stream)
        .await
        .into_iter()
        .map(|(shard, key, data)| {
            let record = PutRecord::new(key, data);
            let (low, high) = shard.hash_key_range;
            assert!(
                (low..=high).contains(&record.hash_key()),
                "{} is stored in the shard its key belongs to",
                record.partition_key
            );
            record
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_failures_lose_nothing_and_keep_order_per_key() {
    let calls = partial_failures_lose_nothing(None).await;
    assert!(calls
        .iter()
        .all(|call| call.iter().all(|entry| entry.len() == 1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregated_partial_failures_lose_nothing_and_keep_order_per_key() {
    let calls = partial_failures_lose_nothing(Some(2_000)).await;
    let entries: Vec<&Vec<String>> = calls.iter().flatten().collect();
    let users: usize = entries.iter().map(|e| e.len()).sum();
    assert!(
        users >= entries.len() * 5,
        "records are packed: {users} user records in {} entries",
        entries.len()
    );
}

/// Four senders under 30% failed entries and 5% failed calls; returns the
/// calls made (per entry, the keys of its user records).
async fn partial_failures_lose_nothing(
    aggregate_max_bytes: Option<usize>,
) -> Vec<Vec<Vec<String>>> {
    let dir = tempfile::tempdir().unwrap();
    let local: Arc<dyn StreamBackend> =
        Arc::new(LocalStreams::open(dir.path(), LocalStreamOptions::default()).unwrap());
    local.create_stream("s", 4).await.unwrap();
    let faulty: Arc<dyn StreamBackend> = Arc::new(FaultyStreams::new(
        local.clone(),
        Faults {
            entry_failure_rate: 0.3,
            call_failure_rate: 0.05,
            seed: 7,
            ..Faults::default()
        },
    ));
    let recording = Arc::new(Recording::new(faulty));
    let config = ProducerConfig {
        backoff: Backoff::for_tests(),
        aggregate_max_bytes,
        ..ProducerConfig::default()
    };
    let producer = Producer::start(recording.clone(), "s", config)
        .await
        .unwrap();

    // Several concurrent senders, each owning its keys, sending in order.
    let mut tasks = Vec::new();
    for sender in 0..4 {
        let producer = producer.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..25 {
                let records = (0..100)
                    .map(|i| {
                        let key = format!("s{sender}-k{}", i % 20);
                        PutRecord::new(key.clone(), Bytes::from(format!("{key}:{round}:{i}")))
                    })
                    .collect();
                producer.send(records).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    producer.close().await;

    let records = read_everything(&local, "s").await;
    assert_eq!(
        records.len(),
        4 * 25 * 100,
        "every record delivered exactly once"
    );
    let mut last: HashMap<String, (u32, u32)> = HashMap::new();
    for record in &records {
        let text = String::from_utf8(record.data.to_vec()).unwrap();
        let mut parts = text.split(':');
        let key = parts.next().unwrap().to_owned();
        let position = (
            parts.next().unwrap().parse().unwrap(),
            parts.next().unwrap().parse().unwrap(),
        );
        if let Some(previous) = last.insert(key.clone(), position) {
            assert!(
                position > previous,
                "{key}: {position:?} after {previous:?}"
            );
        }
    }
    let calls = recording.calls.lock().unwrap().clone();
    for call in &calls {
        // A key may repeat inside one aggregate (which succeeds or fails
        // whole), never across the entries of a call.
        let mut keys: Vec<&String> = call
            .iter()
            .flat_map(|entry| entry.iter().collect::<HashSet<_>>())
            .collect();
        let total = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(
            keys.len(),
            total,
            "a key appears in one entry of a call at most"
        );
        assert!(call.len() <= 500);
    }
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_stream_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let local: Arc<dyn StreamBackend> =
        Arc::new(LocalStreams::open(dir.path(), LocalStreamOptions::default()).unwrap());
    assert!(matches!(
        Producer::start(local.clone(), "nope", ProducerConfig::default()).await,
        Err(ProduceError::Stream { .. })
    ));
    local.create_stream("s", 1).await.unwrap();
    let producer = Producer::start(local.clone(), "s", ProducerConfig::default())
        .await
        .unwrap();
    local.delete_stream("s").await.unwrap();
    let err = producer
        .send(vec![PutRecord::new("k", Bytes::from_static(b"v"))])
        .await
        .unwrap_err();
    assert!(matches!(err, ProduceError::Rejected { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_that_keep_failing_are_given_up_within_the_time_bound() {
    let dir = tempfile::tempdir().unwrap();
    let local: Arc<dyn StreamBackend> =
        Arc::new(LocalStreams::open(dir.path(), LocalStreamOptions::default()).unwrap());
    local.create_stream("s", 1).await.unwrap();
    let always_failing: Arc<dyn StreamBackend> = Arc::new(FaultyStreams::new(
        local,
        Faults {
            entry_failure_rate: 1.0,
            ..Faults::default()
        },
    ));
    let config = ProducerConfig {
        backoff: Backoff {
            base_ms: 1,
            max_ms: 5,
            max_elapsed_ms: 200,
        },
        ..ProducerConfig::default()
    };
    let producer = Producer::start(always_failing, "s", config).await.unwrap();
    let err = producer
        .send(vec![PutRecord::new("k", Bytes::from_static(b"v"))])
        .await
        .unwrap_err();
    assert!(matches!(err, ProduceError::GaveUp { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_carries_records_of_every_shard() {
    let dir = tempfile::tempdir().unwrap();
    let local: Arc<dyn StreamBackend> =
        Arc::new(LocalStreams::open(dir.path(), LocalStreamOptions::default()).unwrap());
    local.create_stream("s", 4).await.unwrap();
    let recording = Arc::new(Recording::new(local.clone()));
    let producer = Producer::start(recording.clone(), "s", ProducerConfig::default())
        .await
        .unwrap();
    let records: Vec<PutRecord> = (0..400)
        .map(|i| PutRecord::new(format!("k{i}"), Bytes::from(format!("v{i}"))))
        .collect();
    producer.send(records).await.unwrap();
    producer.close().await;

    let calls: Vec<Vec<String>> = recording
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|call| call.iter().flatten().cloned().collect())
        .collect();
    let sizes: Vec<usize> = calls.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![400], "one call for records of four shards");
    let stored = read_everything(&local, "s").await;
    assert_eq!(stored.len(), 400);
    let shards_in_call: HashSet<u128> = calls[0]
        .iter()
        .map(|key| PutRecord::new(key.clone(), Bytes::new()).hash_key() >> 126)
        .collect();
    assert_eq!(shards_in_call.len(), 4, "the call spans all four shards");
}

/// When a call ends, what waited meanwhile goes out before the senders of
/// the ended call are told: on a busy collector they are many, and telling
/// them first left the stream idle. One thread, so that a told sender
/// runs only when the producer's tasks let it.
#[tokio::test]
async fn the_next_call_goes_out_before_the_last_calls_senders_are_told() {
    let dir = tempfile::tempdir().unwrap();
    let local: Arc<dyn StreamBackend> =
        Arc::new(LocalStreams::open(dir.path(), LocalStreamOptions::default()).unwrap());
    local.create_stream("s", 1).await.unwrap();
    let hold = Arc::new(tokio::sync::Semaphore::new(0));
    let told = Arc::new(AtomicBool::new(false));
    let recording = Arc::new(Recording {
        hold_first: Some(hold.clone()),
        watched: Some(told.clone()),
        ..Recording::new(local.clone())
    });
    let producer = Producer::start(recording.clone(), "s", ProducerConfig::default())
        .await
        .unwrap();
    let record = |v: &str| vec![PutRecord::new("k", Bytes::from(v.to_owned()))];
    let first = {
        let (producer, told) = (producer.clone(), told.clone());
        let record = record("first");
        tokio::spawn(async move {
            producer.send(record).await.unwrap();
            told.store(true, Ordering::SeqCst);
        })
    };
    let calls = || recording.calls.lock().unwrap().len();
    while calls() == 0 {
        tokio::task::yield_now().await;
    }
    // The one shard's lane is in the held call: this record waits for it.
    let second = {
        let producer = producer.clone();
        let record = record("second");
        tokio::spawn(async move { producer.send(record).await.unwrap() })
    };
    while producer.inner.lanes.lock().unwrap().lanes[0]
        .queue
        .is_empty()
    {
        tokio::task::yield_now().await;
    }
    hold.add_permits(1);
    first.await.unwrap();
    second.await.unwrap();
    producer.close().await;

    assert_eq!(calls(), 2);
    assert_eq!(
        *recording.seen_at_start.lock().unwrap(),
        vec![false, false],
        "the second call started before the first call's sender was told"
    );
    let stored: Vec<Bytes> = read_everything(&local, "s")
        .await
        .into_iter()
        .map(|r| r.data)
        .collect();
    assert_eq!(stored, vec![Bytes::from("first"), Bytes::from("second")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_each_reports_every_record_and_gives_up_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let local: Arc<dyn StreamBackend> =
        Arc::new(LocalStreams::open(dir.path(), LocalStreamOptions::default()).unwrap());
    local.create_stream("s", 2).await.unwrap();
    let recording = Arc::new(Recording {
        throttle_prefix: Some("slow"),
        ..Recording::new(local.clone())
    });
    let producer = Producer::start(recording, "s", ProducerConfig::default())
        .await
        .unwrap();
    let keys = ["ok-1", "slow-1", "ok-2", "slow-2", "ok-3"];
    let records = keys
        .iter()
        .map(|k| PutRecord::new(*k, Bytes::from_static(b"v")))
        .collect();
    let deadline = Instant::now() + Duration::from_millis(300);
    let undelivered = tokio::time::timeout(
        Duration::from_secs(20),
        producer.send_each(records, deadline),
    )
    .await
    .expect("send_each returns soon after its deadline");
    let positions: Vec<usize> = undelivered.iter().map(|(i, _)| *i).collect();
    assert_eq!(
        positions,
        [1, 3],
        "the slow keys, in order: {undelivered:?}"
    );
    for (_, error) in &undelivered {
        assert!(matches!(error, ProduceError::GaveUp { .. }), "{error:?}");
    }
    let stored: Vec<String> = read_everything(&local, "s")
        .await
        .into_iter()
        .map(|r| r.partition_key.to_string())
        .collect();
    assert_eq!(stored.len(), 3, "{stored:?}");
    assert!(stored.iter().all(|k| k.starts_with("ok")));
}
