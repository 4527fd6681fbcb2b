//! One consumer worker on embedded storage: records of 1 KiB across 4
//! shards, a no-op processor that checkpoints after every batch. Reports
//! records/s from start (leases taken) to the last record processed, and
//! the lease-table operations per second at steady state (renewals and
//! checkpoints), which should not grow with the record rate.
//!
//! cargo bench -p sluice-client --bench consumer
//! (without --bench, as the test command runs it: a small run, checked)

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use sluice_backends::local::{LocalBackend, LocalStreamOptions};
use sluice_client::consumer::{
    Batch, Checkpointer, ConsumerConfig, ProcessError, ProcessorFactory, RecordProcessor, Worker,
};
use sluice_client::{Producer, ProducerConfig};
use sluice_core::stream::PutRecord;
use sluice_core::table::{Condition, Item, TableError};
use sluice_core::{StreamBackend, TableBackend};

/// Counts table operations by kind.
struct Counting {
    inner: Arc<dyn TableBackend>,
    ops: Mutex<BTreeMap<&'static str, u64>>,
}

impl Counting {
    fn count(&self, op: &'static str) {
        *self.ops.lock().unwrap().entry(op).or_insert(0) += 1;
    }
    fn total(&self) -> u64 {
        self.ops.lock().unwrap().values().sum()
    }
}

#[async_trait]
impl TableBackend for Counting {
    async fn ensure_table(&self, t: &str) -> Result<(), TableError> {
        self.count("ensure");
        self.inner.ensure_table(t).await
    }
    async fn get(&self, t: &str, k: &str) -> Result<Option<Item>, TableError> {
        self.count("get");
        self.inner.get(t, k).await
    }
    async fn put(&self, t: &str, k: &str, i: Item, c: Condition) -> Result<(), TableError> {
        self.count("put");
        self.inner.put(t, k, i, c).await
    }
    async fn delete(&self, t: &str, k: &str, c: Condition) -> Result<(), TableError> {
        self.count("delete");
        self.inner.delete(t, k, c).await
    }
    async fn add(&self, t: &str, k: &str, a: &str, d: i64) -> Result<i64, TableError> {
        self.count("add");
        self.inner.add(t, k, a, d).await
    }
    async fn scan(&self, t: &str) -> Result<Vec<(String, Item)>, TableError> {
        self.count("scan");
        self.inner.scan(t).await
    }
}

struct NoOp {
    processed: Arc<AtomicU64>,
}

#[async_trait]
impl RecordProcessor for NoOp {
    async fn process_records(
        &mut self,
        batch: &Batch,
        checkpointer: &mut Checkpointer,
    ) -> Result<(), ProcessError> {
        self.processed
            .fetch_add(batch.records.len() as u64, Ordering::Relaxed);
        checkpointer
            .checkpoint()
            .await
            .map_err(|e| ProcessError::new(e.to_string()))
    }
}

#[tokio::main]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let records: u64 = if full { 400_000 } else { 4_000 };
    let dir = tempfile::tempdir().unwrap();
    let local = LocalBackend::open(dir.path(), LocalStreamOptions::default()).unwrap();
    let streams: Arc<dyn StreamBackend> = local.streams.clone();
    let tables = Arc::new(Counting {
        inner: local.table.clone(),
        ops: Mutex::new(BTreeMap::new()),
    });
    streams.create_stream("events", 4).await.unwrap();
    let producer = Producer::start(streams.clone(), "events", ProducerConfig::default())
        .await
        .unwrap();
    let payload = Bytes::from(vec![b'x'; 1024]);
    for chunk in 0..records / 2000 {
        let batch = (0..2000)
            .map(|i| PutRecord::new(format!("k-{}", (chunk * 2000 + i) % 5000), payload.clone()))
            .collect();
        producer.send(batch).await.unwrap();
    }
    producer.close().await;

    let mut best = 0.0f64;
    for run in 0..if full { 3 } else { 1 } {
        let processed = Arc::new(AtomicU64::new(0));
        let counter = processed.clone();
        let factory: Arc<dyn ProcessorFactory> =
            Arc::new(move |_: &str| -> Box<dyn RecordProcessor> {
                Box::new(NoOp {
                    processed: counter.clone(),
                })
            });
        let mut config = ConsumerConfig::new(&format!("bench-{run}"), "events", "worker");
        config.batch_records = 10_000;
        let worker = Worker::start(streams.clone(), tables.clone(), config, factory);
        let start = Instant::now();
        while processed.load(Ordering::Relaxed) < records {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let rate = records as f64 / elapsed;
        best = best.max(rate);
        println!("run {run}: {records} records of 1 KiB in {elapsed:.2} s = {rate:.0} records/s");
        // Steady state with nothing new: renewals and lease-table reads only.
        if full && run == 0 {
            let before = tables.total();
            tokio::time::sleep(Duration::from_secs(10)).await;
            println!(
                "idle: {:.1} table operations/s with 4 leases",
                (tables.total() - before) as f64 / 10.0
            );
        }
        worker.shutdown().await;
        assert_eq!(
            processed.load(Ordering::Relaxed),
            records,
            "each record once"
        );
    }
    println!(
        "best: {best:.0} records/s; table operations by kind: {:?}",
        tables.ops.lock().unwrap()
    );
}
