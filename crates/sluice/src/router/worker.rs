//! The self-hosted router worker: one reader per shard of the inbound
//! stream, each reading a batch, routing it, writing every output and
//! only then checkpointing the batch's last sequence number.
//!
//! Children of a split or merge are read only after every parent was read
//! to its end and checkpointed there, so order per partition key holds
//! across resharding.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use sluice_core::retry::{Backoff, Retryable};
use sluice_core::stream::{Shard, StartPosition, StreamError};
use sluice_core::table::{AttrValue, Condition, Item};
use sluice_core::{SequenceNumber, StreamBackend, TableBackend};
use sluice_telemetry::metrics;

use super::RouteAndDeliver;

/// The checkpoint of a shard read to its end.
pub const SHARD_END: &str = "SHARD_END";

pub struct WorkerSettings {
    pub inbound: String,
    pub checkpoint_table: String,
    pub batch_records: usize,
    pub idle_poll: Duration,
    pub backoff: Backoff,
}

pub struct RouterWorker {
    pub streams: Arc<dyn StreamBackend>,
    pub table: Arc<dyn TableBackend>,
    pub deliver: Arc<RouteAndDeliver>,
    pub settings: Arc<WorkerSettings>,
}

fn checkpoint_key(stream: &str, shard: &str) -> String {
    format!("{stream}/{shard}")
}

async fn read_checkpoint(
    table: &dyn TableBackend,
    settings: &WorkerSettings,
    shard: &str,
) -> Result<Option<String>, String> {
    let item = table
        .get(
            &settings.checkpoint_table,
            &checkpoint_key(&settings.inbound, shard),
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(item.and_then(|i| {
        i.get("checkpoint")
            .and_then(AttrValue::as_str)
            .map(str::to_owned)
    }))
}

async fn write_checkpoint(
    table: &dyn TableBackend,
    settings: &WorkerSettings,
    shard: &str,
    value: &str,
) -> Result<(), String> {
    let item: Item = [("checkpoint".to_owned(), AttrValue::S(value.to_owned()))].into();
    table
        .put(
            &settings.checkpoint_table,
            &checkpoint_key(&settings.inbound, shard),
            item,
            Condition::Always,
        )
        .await
        .map_err(|e| e.to_string())
}

impl RouterWorker {
    /// Runs until `shutdown` turns true; readers finish their current batch
    /// (delivered and checkpointed, or left for the next start).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), String> {
        self.table
            .ensure_table(&self.settings.checkpoint_table)
            .await
            .map_err(|e| format!("checkpoint table {}: {e}", self.settings.checkpoint_table))?;
        let mut running: JoinSet<String> = JoinSet::new();
        let mut active: HashSet<String> = HashSet::new();
        let mut finished: HashSet<String> = HashSet::new();
        loop {
            match self.streams.list_shards(&self.settings.inbound).await {
                Ok(shards) => {
                    self.start_ready(&shards, &mut running, &mut active, &mut finished, &shutdown)
                        .await
                }
                Err(e) => {
                    tracing::warn!(stream = %self.settings.inbound, error = %e, "could not list shards")
                }
            }
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(done) = running.join_next() => {
                    if let Ok(shard) = done {
                        active.remove(&shard);
                    }
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if *shutdown.borrow() {
                break;
            }
        }
        while running.join_next().await.is_some() {}
        Ok(())
    }

    async fn start_ready(
        &self,
        shards: &[Shard],
        running: &mut JoinSet<String>,
        active: &mut HashSet<String>,
        finished: &mut HashSet<String>,
        shutdown: &watch::Receiver<bool>,
    ) {
        let known: HashMap<&str, &Shard> =
            shards.iter().map(|s| (s.shard_id.as_str(), s)).collect();
        for shard in shards {
            if active.contains(&shard.shard_id) || finished.contains(&shard.shard_id) {
                continue;
            }
            let checkpoint = match read_checkpoint(
                self.table.as_ref(),
                &self.settings,
                &shard.shard_id,
            )
            .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(shard = %shard.shard_id, error = %e, "could not read checkpoint");
                    continue;
                }
            };
            if checkpoint.as_deref() == Some(SHARD_END) {
                finished.insert(shard.shard_id.clone());
                continue;
            }
            // A parent still listed must be finished first; one past retention is gone.
            let parents_done = shard
                .parents()
                .all(|p| !known.contains_key(p) || finished.contains(p));
            if !parents_done {
                continue;
            }
            active.insert(shard.shard_id.clone());
            let reader = ShardReader {
                streams: self.streams.clone(),
                table: self.table.clone(),
                deliver: self.deliver.clone(),
                settings: self.settings.clone(),
                shard: shard.shard_id.clone(),
            };
            let shutdown = shutdown.clone();
            running.spawn(async move {
                let shard = reader.shard.clone();
                reader.run(checkpoint, shutdown).await;
                shard
            });
        }
    }
}

struct ShardReader {
    streams: Arc<dyn StreamBackend>,
    table: Arc<dyn TableBackend>,
    deliver: Arc<RouteAndDeliver>,
    settings: Arc<WorkerSettings>,
    shard: String,
}

impl ShardReader {
    async fn iterator(&self, checkpoint: &Option<String>) -> Result<String, StreamError> {
        let start = match checkpoint.as_deref().and_then(SequenceNumber::parse) {
            Some(seq) => StartPosition::AfterSequence(seq),
            None => StartPosition::TrimHorizon,
        };
        self.streams
            .get_shard_iterator(&self.settings.inbound, &self.shard, start)
            .await
    }

    async fn run(self, mut checkpoint: Option<String>, shutdown: watch::Receiver<bool>) {
        let stream = &self.settings.inbound;
        let behind = metrics::ROUTER_MILLIS_BEHIND.gauge(&[("shard", &self.shard)]);
        let mut attempt = 0u32;
        let mut iterator: Option<String> = None;
        let mut last_read = tokio::time::Instant::now();
        let mut expired = false;
        tracing::info!(stream = %stream, shard = %self.shard, checkpoint = ?checkpoint, "reading shard");
        while !*shutdown.borrow() {
            let it = match iterator.take() {
                Some(it) => it,
                None => match self.iterator(&checkpoint).await {
                    Ok(it) => it,
                    Err(e) => {
                        self.pause_after(&e.to_string(), &mut attempt).await;
                        continue;
                    }
                },
            };
            // Keep to the backend's read rate per shard.
            tokio::time::sleep_until(last_read + self.streams.min_read_interval()).await;
            last_read = tokio::time::Instant::now();
            let output = match self
                .streams
                .get_records(&it, self.settings.batch_records)
                .await
            {
                Ok(output) => output,
                Err(StreamError::ExpiredIterator(reason)) if !expired => {
                    // Re-made right away from the checkpoint: nothing is skipped.
                    // A second expiry in a row backs off like any other error.
                    tracing::info!(stream = %stream, shard = %self.shard, reason = %reason, checkpoint = ?checkpoint, "shard iterator expired; resuming after the checkpoint");
                    expired = true;
                    continue;
                }
                Err(e) => {
                    // Throttled or unavailable: the same iterator is still good.
                    if e.is_retryable() {
                        iterator = Some(it);
                    }
                    self.pause_after(&e.to_string(), &mut attempt).await;
                    continue;
                }
            };
            expired = false;
            attempt = 0;
            behind.set(output.millis_behind_latest.unwrap_or(0) as i64);
            if let Some(last) = output.records.last() {
                // Deliver until it works or we are told to stop; never skip.
                loop {
                    match self.deliver.handle(&output.records).await {
                        Ok(()) => break,
                        Err(e) if *shutdown.borrow() => {
                            tracing::warn!(shard = %self.shard, error = %e, "stopping with a batch undelivered; it will be read again");
                            return;
                        }
                        Err(e) => {
                            if !e.is_retryable() {
                                tracing::error!(shard = %self.shard, error = %e, "delivery failed; retrying the batch");
                            }
                            self.pause_after(&e.to_string(), &mut attempt).await;
                        }
                    }
                }
                let seq = last.sequence_number.to_string();
                if let Err(e) =
                    write_checkpoint(self.table.as_ref(), &self.settings, &self.shard, &seq).await
                {
                    // Without the checkpoint the batch is read again after a restart: duplicates, not loss.
                    tracing::warn!(shard = %self.shard, error = %e, "could not checkpoint");
                }
                checkpoint = Some(seq);
                attempt = 0;
            }
            match output.next_iterator {
                None => {
                    // Read to its end: mark it so the children can start.
                    loop {
                        match write_checkpoint(
                            self.table.as_ref(),
                            &self.settings,
                            &self.shard,
                            SHARD_END,
                        )
                        .await
                        {
                            Ok(()) => break,
                            Err(e) if *shutdown.borrow() => {
                                tracing::warn!(shard = %self.shard, error = %e, "stopping before marking the shard ended");
                                return;
                            }
                            Err(e) => self.pause_after(&e, &mut attempt).await,
                        }
                    }
                    tracing::info!(stream = %stream, shard = %self.shard, "shard ended");
                    return;
                }
                Some(next) => {
                    if output.records.is_empty() {
                        let mut shutdown = shutdown.clone();
                        tokio::select! {
                            _ = tokio::time::sleep(self.settings.idle_poll) => {}
                            _ = shutdown.changed() => {}
                        }
                    }
                    iterator = Some(next);
                }
            }
        }
    }

    async fn pause_after(&self, error: &str, attempt: &mut u32) {
        if *attempt == 0 {
            tracing::warn!(stream = %self.settings.inbound, shard = %self.shard, error = %error, "retrying");
        }
        let delay = self
            .settings
            .backoff
            .delay(*attempt)
            .max(Duration::from_millis(10));
        *attempt = attempt.saturating_add(1);
        tokio::time::sleep(delay).await;
    }
}
