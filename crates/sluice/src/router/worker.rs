//! The self-hosted router worker: a consumer application of the inbound
//! stream on Sluice's consumer library. Each batch is routed, every output
//! written, and only then checkpointed; leases share the shards among router
//! processes on AWS, children of a split or merge are read only after their
//! parents ended, and a crashed process's shards are taken over.
//!
//! The lease table is `router.checkpoint_table`. Checkpoint rows written by
//! earlier versions (key `inbound/shard`) are turned into leases at start.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use sluice_client::consumer::{
    Batch, Checkpoint, Checkpointer, ConsumerConfig, Lease, LeaseError, LeaseTable, ProcessError,
    ProcessorFactory, RecordProcessor, Worker, WorkerHandle,
};
use sluice_core::retry::Backoff;
use sluice_core::stream::Record;
use sluice_core::table::{AttrValue, Condition};
use sluice_core::{SequenceNumber, StreamBackend, TableBackend, TableError};
use sluice_telemetry::metrics;

use super::RouteAndDeliver;

pub struct WorkerSettings {
    pub inbound: String,
    /// The router's lease table.
    pub checkpoint_table: String,
    /// This process's name in the lease table; unique among router processes.
    pub worker_id: String,
    pub batch_records: usize,
    pub idle_poll: Duration,
    /// A router process silent this long loses its shards to the others.
    pub failover: Duration,
    pub backoff: Backoff,
}

pub struct RouterWorker {
    pub streams: Arc<dyn StreamBackend>,
    pub table: Arc<dyn TableBackend>,
    pub deliver: Arc<RouteAndDeliver>,
    pub settings: Arc<WorkerSettings>,
}

/// Routes each batch; checkpoints once every output acknowledged it.
struct RouterProcessor {
    deliver: Arc<RouteAndDeliver>,
    shard: String,
}

impl Drop for RouterProcessor {
    /// The shard is no longer read here: its lag is someone else's to report.
    fn drop(&mut self) {
        metrics::ROUTER_MILLIS_BEHIND.remove(&[("shard", &self.shard)]);
    }
}

#[async_trait]
impl RecordProcessor for RouterProcessor {
    async fn process_records(
        &mut self,
        batch: &Batch,
        checkpointer: &mut Checkpointer,
    ) -> Result<(), ProcessError> {
        metrics::ROUTER_MILLIS_BEHIND
            .gauge(&[("shard", &batch.shard_id)])
            .set(batch.millis_behind_latest.unwrap_or(0) as i64);
        let records: Vec<Record> = batch
            .records
            .iter()
            .map(|r| Record {
                sequence_number: r.sequence_number.clone(),
                partition_key: r.partition_key.clone(),
                data: r.data.clone(),
                arrival_ms: r.arrival_ms,
            })
            .collect();
        self.deliver
            .handle(&records)
            .await
            .map_err(|e| ProcessError::new(format!("delivery failed: {e}")))?;
        // Without the checkpoint the batch is routed again later: duplicates, not loss.
        checkpointer
            .checkpoint()
            .await
            .map_err(|e| ProcessError::new(format!("checkpoint: {e}")))
    }
}

/// Why the router could not start.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("checkpoint table {table}: {source}")]
    Table {
        table: String,
        #[source]
        source: TableError,
    },
    #[error("checkpoint table {table}: carrying over the checkpoint of {shard}: {source}")]
    Migration {
        table: String,
        shard: String,
        #[source]
        source: LeaseError,
    },
}

impl RouterWorker {
    /// Starts the router's consumer worker: the lease table made and
    /// earlier versions' checkpoints carried over first.
    pub async fn start(self) -> Result<WorkerHandle, RouterError> {
        let settings = &self.settings;
        let table_error = |source| RouterError::Table {
            table: settings.checkpoint_table.clone(),
            source,
        };
        self.table
            .ensure_table(&settings.checkpoint_table)
            .await
            .map_err(table_error)?;
        migrate_checkpoints(self.table.clone(), settings).await?;
        let mut config = ConsumerConfig::new(
            &settings.checkpoint_table,
            &settings.inbound,
            &settings.worker_id,
        )
        .with_failover(settings.failover);
        config.batch_records = settings.batch_records;
        config.idle_poll = settings.idle_poll;
        config.backoff = settings.backoff.clone();
        let deliver = self.deliver.clone();
        let factory: Arc<dyn ProcessorFactory> =
            Arc::new(move |shard: &str| -> Box<dyn RecordProcessor> {
                Box::new(RouterProcessor {
                    deliver: deliver.clone(),
                    shard: shard.to_owned(),
                })
            });
        Ok(Worker::start(
            self.streams.clone(),
            self.table.clone(),
            config,
            factory,
        ))
    }

    /// Runs until `shutdown` turns true; shard readers finish their batch
    /// (delivered and checkpointed, or left for the next start).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), RouterError> {
        let worker = self.start().await?;
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        worker.shutdown().await;
        Ok(())
    }
}

/// Turns checkpoint rows of earlier versions (`inbound/shard` ->
/// `checkpoint`) into leases, so an upgrade resumes where it stopped.
async fn migrate_checkpoints(
    table: Arc<dyn TableBackend>,
    settings: &WorkerSettings,
) -> Result<(), RouterError> {
    let prefix = format!("{}/", settings.inbound);
    let name = &settings.checkpoint_table;
    let rows = table
        .scan(name)
        .await
        .map_err(|source| RouterError::Table {
            table: name.clone(),
            source,
        })?;
    let migration = |shard: &str, source| RouterError::Migration {
        table: name.clone(),
        shard: shard.to_owned(),
        source,
    };
    let leases = LeaseTable::new(table.clone(), &settings.checkpoint_table);
    for (key, item) in rows {
        let Some(shard) = key.strip_prefix(&prefix) else {
            continue;
        };
        let checkpoint = match item.get("checkpoint").and_then(AttrValue::as_str) {
            Some("SHARD_END") => Checkpoint::ShardEnd,
            Some(text) => match SequenceNumber::parse(text) {
                Some(sequence) => Checkpoint::At {
                    sequence,
                    sub_sequence: 0,
                },
                None => continue,
            },
            None => continue,
        };
        let lease = Lease::new(shard, Vec::new(), checkpoint);
        leases
            .create(&lease)
            .await
            .map_err(|e| migration(shard, e.into()))?;
        table
            .delete(name, &key, Condition::Always)
            .await
            .map_err(|e| migration(shard, e.into()))?;
        tracing::info!(shard = %shard, "checkpoint of an earlier version carried over");
    }
    Ok(())
}
