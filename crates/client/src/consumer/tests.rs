//! Consumer tests on the embedded backend: workers sharing shards through
//! the lease table, failover after a crash, resharding under load, restart
//! from checkpoints.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use sluice_backends::local::{LocalBackend, LocalStreamOptions};
use sluice_core::stream::PutRecord;
use sluice_core::{StreamBackend, TableBackend};

use super::*;
use crate::{Producer, ProducerConfig};
use sluice_telemetry::metrics;

/// Everything processed, by everyone: (partition key, value) in the order
/// each processor saw it, and which worker saw it.
#[derive(Default)]
struct Seen {
    records: Mutex<Vec<(String, u64, String)>>,
}

struct Recorder {
    worker: String,
    seen: Arc<Seen>,
}

#[async_trait]
impl RecordProcessor for Recorder {
    async fn process_records(
        &mut self,
        batch: &Batch,
        checkpointer: &mut Checkpointer,
    ) -> Result<(), ProcessError> {
        {
            let mut seen = self.seen.records.lock().unwrap();
            for r in &batch.records {
                let value: u64 = std::str::from_utf8(&r.data).unwrap().parse().unwrap();
                seen.push((r.partition_key.to_string(), value, self.worker.clone()));
            }
        }
        checkpointer
            .checkpoint()
            .await
            .map_err(|e| ProcessError::new(e.to_string()))
    }
}

fn factory(worker: &str, seen: &Arc<Seen>) -> Arc<dyn ProcessorFactory> {
    let (worker, seen) = (worker.to_owned(), seen.clone());
    Arc::new(move |_: &str| -> Box<dyn RecordProcessor> {
        Box::new(Recorder {
            worker: worker.clone(),
            seen: seen.clone(),
        })
    })
}

struct Setup {
    /// The embedded store and its directory, when the test runs on one.
    _dir: Option<(LocalBackend, tempfile::TempDir)>,
    streams: Arc<dyn StreamBackend>,
    tables: Arc<dyn TableBackend>,
    stream: String,
    app: String,
}

async fn setup(shards: u32) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalBackend::open(dir.path(), LocalStreamOptions::default()).unwrap();
    let streams: Arc<dyn StreamBackend> = local.streams.clone();
    let tables: Arc<dyn TableBackend> = local.table.clone();
    streams.create_stream("events", shards).await.unwrap();
    Setup {
        _dir: Some((local, dir)),
        streams,
        tables,
        stream: "events".into(),
        app: "app".into(),
    }
}

fn config(s: &Setup, worker: &str) -> ConsumerConfig {
    let mut config =
        ConsumerConfig::new(&s.app, &s.stream, worker).with_failover(Duration::from_millis(1500));
    config.idle_poll = Duration::from_millis(20);
    config.checkpoint_interval = Duration::from_millis(100);
    config.backoff = sluice_core::retry::Backoff::for_tests();
    config
}

/// Writes `count` values for each of `keys` keys, in order per key.
async fn write(producer: &Producer, keys: usize, from: u64, count: u64) {
    for value in from..from + count {
        let records = (0..keys)
            .map(|k| PutRecord::new(format!("key-{k}"), Bytes::from(value.to_string())))
            .collect();
        producer.send(records).await.unwrap();
    }
}

/// Waits until `ready` holds (polling), or fails with `what`.
async fn wait_until(limit: Duration, what: &str, mut ready: impl FnMut() -> Result<(), String>) {
    let start = std::time::Instant::now();
    loop {
        match ready() {
            Ok(()) => return,
            Err(state) if start.elapsed() > limit => {
                panic!("timed out waiting for {what}: {state}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Every (key, value) from 0..count seen at least once, and per key and
/// per worker stretch, values never go backwards except by a replay.
fn check_complete(seen: &Seen, keys: usize, count: u64) -> Result<(), String> {
    let records = seen.records.lock().unwrap();
    let got: BTreeSet<(String, u64)> = records.iter().map(|(k, v, _)| (k.clone(), *v)).collect();
    let want = keys as u64 * count;
    if (got.len() as u64) < want {
        return Err(format!("{} of {want} processed", got.len()));
    }
    Ok(())
}

/// Order per key: each time a key's value is seen for the first time, it
/// is the next one after the highest seen before.
fn check_order(seen: &Seen) {
    let records = seen.records.lock().unwrap();
    let mut highest: BTreeMap<&str, u64> = BTreeMap::new();
    for (key, value, worker) in records.iter() {
        let top = highest.entry(key).or_insert(u64::MAX);
        let next = if *top == u64::MAX { 0 } else { *top + 1 };
        assert!(
            *value <= next,
            "{key}: {value} came before {} (seen by {worker})",
            next
        );
        if *value == next {
            *top = *value;
        }
    }
}

fn start(s: &Setup, worker: &str, seen: &Arc<Seen>) -> WorkerHandle {
    Worker::start(
        s.streams.clone(),
        s.tables.clone(),
        config(s, worker),
        factory(worker, seen),
    )
}

fn counts(workers: &[&WorkerHandle]) -> Vec<usize> {
    workers.iter().map(|w| w.held().len()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_eight_shards_and_take_over_from_a_crashed_one() {
    let s = setup(8).await;
    let seen = Arc::new(Seen::default());
    let producer = Producer::start(s.streams.clone(), &s.stream, ProducerConfig::default())
        .await
        .unwrap();
    write(&producer, 40, 0, 50).await;

    let a = start(&s, "a", &seen);
    let b = start(&s, "b", &seen);
    let c = start(&s, "c", &seen);
    wait_until(Duration::from_secs(30), "the leases to balance", || {
        let mut n = counts(&[&a, &b, &c]);
        n.sort();
        if n == [2, 3, 3] {
            Ok(())
        } else {
            Err(format!("{n:?}"))
        }
    })
    .await;
    wait_until(Duration::from_secs(30), "every record", || {
        check_complete(&seen, 40, 50)
    })
    .await;

    // A crash: c stops renewing; a and b take its shards after the failover time.
    let orphaned = c.held();
    let crashed_at = std::time::Instant::now();
    c.abort();
    write(&producer, 40, 50, 50).await;
    wait_until(
        Duration::from_secs(30),
        "the crashed worker's leases to be taken",
        || {
            let held: BTreeSet<String> = a.held().union(&b.held()).cloned().collect();
            if orphaned.is_subset(&held) && held.len() == 8 {
                Ok(())
            } else {
                Err(format!("a {:?}, b {:?}", a.held(), b.held()))
            }
        },
    )
    .await;
    let took = crashed_at.elapsed();
    let bound =
        Duration::from_millis(1500) + Duration::from_millis(500) * 2 + Duration::from_millis(500);
    assert!(
        took <= bound,
        "taken over in {took:?}, more than failover + a renewal ({bound:?})"
    );
    let mut n = counts(&[&a, &b]);
    n.sort();
    assert_eq!(
        n,
        [4, 4],
        "no worker holds more than one lease above another"
    );
    wait_until(
        Duration::from_secs(30),
        "every record after the crash",
        || check_complete(&seen, 40, 100),
    )
    .await;
    check_order(&seen);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_and_a_merge_under_load_lose_nothing_and_keep_order() {
    split_and_merge(setup(2).await).await;
}

/// The same on the API servers: Kinesis resharding on kinesalite (moto
/// mis-routes writes after a split), leases in DynamoDB on moto.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_and_a_merge_on_kinesalite_with_leases_on_moto() {
    use sluice_backends::conformance::servers::{dynamodb, kinesalite, kinesis, moto};
    let streams: Arc<dyn StreamBackend> = Arc::new(kinesis(&kinesalite()));
    let tables: Arc<dyn TableBackend> = Arc::new(dynamodb(&moto()));
    let stream = format!("consumer-split-{}", std::process::id());
    streams.create_stream(&stream, 2).await.unwrap();
    split_and_merge(Setup {
        _dir: None,
        streams,
        tables,
        app: format!("{stream}-app"),
        stream,
    })
    .await;
}

/// The stream's open shards, in hash key order.
async fn open_shards(s: &Setup) -> Vec<sluice_core::stream::Shard> {
    let mut open: Vec<_> = s
        .streams
        .list_shards(&s.stream)
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.is_open())
        .collect();
    open.sort_by_key(|s| s.hash_key_range.0);
    open
}

/// Load, a split, more load, a merge, more load, with two workers reading
/// all along: nothing lost, order per key kept.
async fn split_and_merge(s: Setup) {
    let seen = Arc::new(Seen::default());
    let a = start(&s, "a", &seen);
    let b = start(&s, "b", &seen);
    // Load, a split, more load, a merge, more load, with the workers
    // reading all along; a producer per phase knows the shards of its time.
    let phase = |n: u64| {
        let (streams, stream) = (s.streams.clone(), s.stream.clone());
        async move {
            let producer = Producer::start(streams, &stream, ProducerConfig::default())
                .await
                .unwrap();
            write(&producer, 30, n * 40, 40).await;
            producer.close().await;
        }
    };
    phase(0).await;
    wait_until(Duration::from_secs(30), "reading to start", || {
        if seen.records.lock().unwrap().is_empty() {
            Err("nothing read yet".into())
        } else {
            Ok(())
        }
    })
    .await;
    let shards = s.streams.list_shards(&s.stream).await.unwrap();
    let first = &shards[0];
    let middle = first.hash_key_range.0 + (first.hash_key_range.1 - first.hash_key_range.0) / 2;
    s.streams
        .split_shard(&s.stream, &first.shard_id, middle)
        .await
        .unwrap();
    phase(1).await;
    let open = open_shards(&s).await;
    assert_eq!(open.len(), 3);
    s.streams
        .merge_shards(&s.stream, &open[1].shard_id, &open[2].shard_id)
        .await
        .unwrap();
    phase(2).await;

    wait_until(
        Duration::from_secs(60),
        "every record across the split and merge",
        || check_complete(&seen, 30, 120),
    )
    .await;
    check_order(&seen);
    // Lag and checkpoint age are reported for the open shards only: the
    // ended parents' series went with their readers.
    let open: BTreeSet<String> = open_shards(&s)
        .await
        .into_iter()
        .map(|s| s.shard_id)
        .collect();
    let reported = |def: &'static sluice_telemetry::registry::MetricDef| -> BTreeSet<String> {
        sluice_telemetry::registry::series_of(def)
            .into_iter()
            .filter(|(labels, _)| labels.contains(&("application", s.app.clone())))
            .filter_map(|(labels, _)| labels.into_iter().find(|(k, _)| *k == "shard"))
            .map(|(_, shard)| shard)
            .collect()
    };
    wait_until(
        Duration::from_secs(30),
        "series of the open shards only",
        || {
            let lag = reported(&metrics::CONSUMER_MILLIS_BEHIND);
            let age = reported(&metrics::CONSUMER_CHECKPOINT_AGE_MS);
            if lag == open && age == open {
                Ok(())
            } else {
                Err(format!(
                    "lag of {lag:?}, checkpoint age of {age:?}, open {open:?}"
                ))
            }
        },
    )
    .await;
    a.shutdown().await;
    b.shutdown().await;
    assert!(reported(&metrics::CONSUMER_MILLIS_BEHIND).is_empty());
    assert!(reported(&metrics::CONSUMER_CHECKPOINT_AGE_MS).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_from_the_checkpoints() {
    let s = setup(4).await;
    let seen = Arc::new(Seen::default());
    let producer = Producer::start(s.streams.clone(), &s.stream, ProducerConfig::default())
        .await
        .unwrap();
    write(&producer, 20, 0, 30).await;
    let a = start(&s, "a", &seen);
    wait_until(Duration::from_secs(30), "the first records", || {
        check_complete(&seen, 20, 30)
    })
    .await;
    a.shutdown().await;
    let before = seen.records.lock().unwrap().len();
    assert_eq!(before, 600, "each record once so far");

    write(&producer, 20, 30, 30).await;
    let again = start(&s, "a2", &seen);
    wait_until(Duration::from_secs(30), "the new records", || {
        check_complete(&seen, 20, 60)
    })
    .await;
    let running = sluice_telemetry::registry::render_prometheus();
    again.shutdown().await;
    // A graceful stop wrote every checkpoint: nothing is processed twice.
    let processed = seen.records.lock().unwrap().len();
    assert_eq!(processed, 1200, "no duplicates after a clean restart");
    // The consumer's metrics say the same.
    let text = sluice_telemetry::registry::render_prometheus();
    assert!(
        text.contains(&format!(
            "sluice_consumer_records_processed_total{{application=\"{}\"}} 1200",
            s.app
        )),
        "{text}"
    );
    assert!(text.contains("sluice_consumer_leases_held{"), "{text}");
    // Lag is reported while shards are read, and not after.
    assert!(
        running.contains("sluice_consumer_millis_behind_latest{"),
        "{running}"
    );
    assert!(
        !text.contains("sluice_consumer_millis_behind_latest{"),
        "{text}"
    );
    check_order(&seen);

    // The lease table reads as the KCL's does.
    let (leases, bad) = LeaseTable::new(s.tables.clone(), &s.app)
        .list()
        .await
        .unwrap();
    assert!(bad.is_empty());
    assert_eq!(leases.len(), 4);
    for lease in &leases {
        assert_eq!(lease.owner, None, "released at shutdown");
        assert!(
            matches!(lease.checkpoint, Checkpoint::At { .. }),
            "{lease:?}"
        );
    }
}

/// Panics the first time it meets a batch; then behaves.
struct PanicsOnce {
    inner: Recorder,
    armed: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait]
impl RecordProcessor for PanicsOnce {
    async fn process_records(
        &mut self,
        batch: &Batch,
        checkpointer: &mut Checkpointer,
    ) -> Result<(), ProcessError> {
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            panic!("a processor bug");
        }
        self.inner.process_records(batch, checkpointer).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_processor_is_restarted_from_the_checkpoint_and_odd_rows_are_left_alone() {
    use sluice_core::table::{AttrValue, Condition, Item};
    let s = setup(2).await;
    let seen = Arc::new(Seen::default());
    let producer = Producer::start(s.streams.clone(), &s.stream, ProducerConfig::default())
        .await
        .unwrap();
    write(&producer, 20, 0, 20).await;
    // Rows someone else wrote: a lease of a shard the stream does not have,
    // and a row with a counter that is not a number.
    let leases = LeaseTable::new(s.tables.clone(), &s.app);
    leases.ensure().await.unwrap();
    let ghost = Lease::new(
        "shardId-000000000099",
        Vec::new(),
        Checkpoint::At {
            sequence: sluice_core::SequenceNumber::from_u64(12345),
            sub_sequence: 0,
        },
    );
    assert!(leases.create(&ghost).await.unwrap());
    let odd: Item = [
        ("leaseCounter".to_owned(), AttrValue::S("many".into())),
        ("checkpoint".to_owned(), AttrValue::S("TRIM_HORIZON".into())),
    ]
    .into();
    s.tables
        .put(&s.app, "shardId-odd", odd, Condition::Always)
        .await
        .unwrap();

    let armed = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let factory: Arc<dyn ProcessorFactory> = {
        let (seen, armed) = (seen.clone(), armed.clone());
        Arc::new(move |_: &str| -> Box<dyn RecordProcessor> {
            Box::new(PanicsOnce {
                inner: Recorder {
                    worker: "a".into(),
                    seen: seen.clone(),
                },
                armed: armed.clone(),
            })
        })
    };
    let a = Worker::start(
        s.streams.clone(),
        s.tables.clone(),
        config(&s, "a"),
        factory,
    );
    wait_until(
        Duration::from_secs(30),
        "every record despite the panic",
        || check_complete(&seen, 20, 20),
    )
    .await;
    assert!(
        !armed.load(std::sync::atomic::Ordering::SeqCst),
        "the panic happened"
    );
    check_order(&seen);
    wait_until(
        Duration::from_secs(30),
        "the ghost lease to be removed",
        || {
            if a.held().contains("shardId-000000000099") {
                Err("still held".into())
            } else {
                Ok(())
            }
        },
    )
    .await;
    // The odd row names no shard of the stream: nothing is left unread.
    assert_eq!(*a.standing().borrow(), Standing::Serving);
    a.shutdown().await;
    let (listed, bad) = leases.list().await.unwrap();
    assert!(
        listed.iter().all(|l| l.shard_id != "shardId-000000000099"),
        "{listed:?}"
    );
    assert_eq!(bad.len(), 1, "the odd row is reported, not changed");
    assert_eq!(bad[0].shard, "shardId-odd");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_duplicates_are_bounded_by_one_batch_per_shard() {
    let s = setup(4).await;
    let seen = Arc::new(Seen::default());
    let producer = Producer::start(s.streams.clone(), &s.stream, ProducerConfig::default())
        .await
        .unwrap();
    write(&producer, 40, 0, 25).await;
    // Every checkpoint written at once: what a crash can repeat is the
    // batch between processing and its checkpoint.
    let mut crashing = config(&s, "a");
    crashing.checkpoint_interval = Duration::ZERO;
    crashing.batch_records = 50;
    let a = Worker::start(
        s.streams.clone(),
        s.tables.clone(),
        crashing.clone(),
        factory("a", &seen),
    );
    wait_until(Duration::from_secs(30), "the first records", || {
        check_complete(&seen, 40, 25)
    })
    .await;
    a.abort();
    let first = seen.records.lock().unwrap().len();
    write(&producer, 40, 25, 25).await;
    let mut restarted = crashing;
    restarted.worker_id = "b".into();
    let b = Worker::start(
        s.streams.clone(),
        s.tables.clone(),
        restarted,
        factory("b", &seen),
    );
    wait_until(
        Duration::from_secs(30),
        "every record after the crash",
        || check_complete(&seen, 40, 50),
    )
    .await;
    b.shutdown().await;
    let total = seen.records.lock().unwrap().len();
    let duplicates = total - 2000;
    assert!(first >= 1000);
    assert!(
        duplicates <= 4 * 50,
        "{duplicates} duplicates, more than one batch per shard"
    );
    check_order(&seen);
}

/// A table backend that can be switched off, as a network cut would.
struct Switchable {
    inner: Arc<dyn TableBackend>,
    down: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl TableBackend for Switchable {
    async fn ensure_table(&self, t: &str) -> Result<(), sluice_core::TableError> {
        self.check()?;
        self.inner.ensure_table(t).await
    }
    async fn get(
        &self,
        t: &str,
        k: &str,
    ) -> Result<Option<sluice_core::table::Item>, sluice_core::TableError> {
        self.check()?;
        self.inner.get(t, k).await
    }
    async fn put(
        &self,
        t: &str,
        k: &str,
        i: sluice_core::table::Item,
        c: sluice_core::table::Condition,
    ) -> Result<(), sluice_core::TableError> {
        self.check()?;
        self.inner.put(t, k, i, c).await
    }
    async fn delete(
        &self,
        t: &str,
        k: &str,
        c: sluice_core::table::Condition,
    ) -> Result<(), sluice_core::TableError> {
        self.check()?;
        self.inner.delete(t, k, c).await
    }
    async fn add(&self, t: &str, k: &str, a: &str, d: i64) -> Result<i64, sluice_core::TableError> {
        self.check()?;
        self.inner.add(t, k, a, d).await
    }
    async fn scan(
        &self,
        t: &str,
    ) -> Result<Vec<(String, sluice_core::table::Item)>, sluice_core::TableError> {
        self.check()?;
        self.inner.scan(t).await
    }
}

impl Switchable {
    fn check(&self) -> Result<(), sluice_core::TableError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            Err(sluice_core::TableError::Unavailable("switched off".into()))
        } else {
            Ok(())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_table_briefly_unreachable_neither_stops_nor_skips() {
    let s = setup(2).await;
    let switch = Arc::new(Switchable {
        inner: s.tables.clone(),
        down: std::sync::atomic::AtomicBool::new(false),
    });
    let seen = Arc::new(Seen::default());
    let producer = Producer::start(s.streams.clone(), &s.stream, ProducerConfig::default())
        .await
        .unwrap();
    write(&producer, 10, 0, 10).await;
    let tables: Arc<dyn TableBackend> = switch.clone();
    let a = Worker::start(
        s.streams.clone(),
        tables,
        config(&s, "a"),
        factory("a", &seen),
    );
    wait_until(Duration::from_secs(30), "the first records", || {
        check_complete(&seen, 10, 10)
    })
    .await;
    assert_eq!(*a.standing().borrow(), Standing::Serving);
    // Shorter than the failover time: the worker keeps its leases, and says
    // it is short while the table is out of reach.
    switch.down.store(true, std::sync::atomic::Ordering::SeqCst);
    write(&producer, 10, 10, 10).await;
    let mut standing = a.standing();
    let short = tokio::time::timeout(
        Duration::from_secs(10),
        standing.wait_for(|s| matches!(s, Standing::Short(_))),
    )
    .await
    .expect("the worker reports the outage")
    .unwrap()
    .clone();
    let Standing::Short(why) = short else {
        unreachable!()
    };
    assert!(why.contains("lease table app"), "{why}");
    switch
        .down
        .store(false, std::sync::atomic::Ordering::SeqCst);
    tokio::time::timeout(
        Duration::from_secs(10),
        standing.wait_for(|s| *s == Standing::Serving),
    )
    .await
    .expect("the worker serves again")
    .unwrap();
    wait_until(
        Duration::from_secs(30),
        "every record after the outage",
        || check_complete(&seen, 10, 20),
    )
    .await;
    a.shutdown().await;
    check_order(&seen);
    // The last checkpoints cover what was processed, and no more.
    let (leases, _) = LeaseTable::new(s.tables.clone(), &s.app)
        .list()
        .await
        .unwrap();
    assert_eq!(leases.len(), 2);
    let processed = seen.records.lock().unwrap().len();
    assert!(processed >= 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_whose_lease_cannot_be_read_leaves_the_worker_short_until_it_is_fixed() {
    use sluice_core::table::{AttrValue, Condition, Item};
    let s = setup(2).await;
    let seen = Arc::new(Seen::default());
    let a = Worker::start(
        s.streams.clone(),
        s.tables.clone(),
        config(&s, "a"),
        factory("a", &seen),
    );
    let mut standing = a.standing();
    let wait = |what: &'static str,
                standing: &mut tokio::sync::watch::Receiver<Standing>,
                want: fn(&Standing) -> bool| {
        let mut standing = standing.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(10), standing.wait_for(want))
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
                .unwrap()
                .clone()
        }
    };
    wait("the worker to serve", &mut standing, |s| {
        *s == Standing::Serving
    })
    .await;
    assert_eq!(a.held().len(), 2);
    // Someone overwrites a shard's lease with a row that is no lease.
    let shard = a.held().into_iter().next().unwrap();
    let odd: Item = [("leaseCounter".to_owned(), AttrValue::S("many".into()))].into();
    s.tables
        .put(&s.app, &shard, odd, Condition::Always)
        .await
        .unwrap();
    let short = wait("the worker to be short", &mut standing, |s| {
        matches!(s, Standing::Short(_))
    })
    .await;
    let Standing::Short(why) = short else {
        unreachable!()
    };
    assert!(
        why.contains(&shard) && why.contains("cannot be read"),
        "{why}"
    );
    // Without the row the lease is made again and taken.
    s.tables
        .delete(&s.app, &shard, Condition::Always)
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the lease to be taken again",
        || {
            if a.held().contains(&shard) && *a.standing().borrow() == Standing::Serving {
                Ok(())
            } else {
                Err(format!("{:?}", a.standing().borrow()))
            }
        },
    )
    .await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_application_starts_where_it_is_told() {
    let s = setup(2).await;
    let producer = Producer::start(s.streams.clone(), &s.stream, ProducerConfig::default())
        .await
        .unwrap();
    write(&producer, 10, 0, 10).await;
    // Records arrive at millisecond times; the next ones come after `cut`.
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    let cut = now_ms() + 1;
    while now_ms() <= cut {
        tokio::task::yield_now().await;
    }
    write(&producer, 10, 10, 10).await;

    let run = |name: &'static str, position: InitialPosition| {
        let setup = Setup {
            _dir: None,
            streams: s.streams.clone(),
            tables: s.tables.clone(),
            stream: s.stream.clone(),
            app: format!("{}-{name}", s.app),
        };
        let seen = Arc::new(Seen::default());
        let mut config = config(&setup, name);
        config.initial_position = position;
        let worker = Worker::start(
            setup.streams.clone(),
            setup.tables.clone(),
            config,
            factory(name, &seen),
        );
        (worker, seen)
    };
    let (replay, replayed) = run("replay", InitialPosition::AtTimestamp(cut));
    let (latest, newest) = run("latest", InitialPosition::Latest);
    let (all, everything) = run("all", InitialPosition::TrimHorizon);
    wait_until(
        Duration::from_secs(30),
        "everything from the beginning",
        || check_complete(&everything, 10, 20),
    )
    .await;
    wait_until(Duration::from_secs(30), "the replay from the cut", || {
        let n = replayed.records.lock().unwrap().len();
        if n == 100 {
            Ok(())
        } else {
            Err(format!("{n} replayed"))
        }
    })
    .await;
    assert!(
        replayed
            .records
            .lock()
            .unwrap()
            .iter()
            .all(|(_, v, _)| *v >= 10),
        "only records after the cut"
    );
    // LATEST: nothing from before; new records are read once its readers
    // are at the tip, so keep writing until they show up.
    let mut value = 20;
    let started = std::time::Instant::now();
    while newest.records.lock().unwrap().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "latest never saw a new record"
        );
        write(&producer, 10, value, 1).await;
        value += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        newest
            .records
            .lock()
            .unwrap()
            .iter()
            .all(|(_, v, _)| *v >= 20),
        "nothing from before"
    );
    assert_eq!(latest.held().len(), 2);
    for worker in [replay, latest, all] {
        worker.shutdown().await;
    }
}
