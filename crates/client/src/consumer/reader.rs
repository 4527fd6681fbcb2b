//! The reader of one leased shard: waits for the shard's parents to end,
//! reads from the checkpoint, opens KPL aggregates, and hands batches to the
//! processor until the shard ends, the lease is lost, or the worker stops.

use std::sync::Arc;
use std::time::Duration;

use sluice_core::aggregate;
use sluice_core::retry::Retryable;
use sluice_core::stream::{Record, StartPosition, StreamError};
use sluice_core::SequenceNumber;
use sluice_telemetry::metrics;

use super::lease::{Checkpoint, LeaseError, LeaseTable};
use super::worker::{Held, Shared};
use super::{Batch, RecordProcessor, UserRecord};

/// How a reader ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadOutcome {
    /// Read to its end and checkpointed there.
    Ended,
    /// Another worker has the lease now.
    Lost,
    /// The worker is stopping.
    Stopped,
    /// The stream no longer has the shard (past retention, or the stream
    /// was made anew): its lease has nothing left to track.
    Gone,
}

/// Records what the processor has done, in the lease table.
pub struct Checkpointer {
    shard_id: String,
    held: Arc<Held>,
    table: LeaseTable,
    interval: Duration,
    /// The last record of the batch being processed.
    batch_end: Option<(SequenceNumber, u64)>,
    ended: bool,
}

impl Checkpointer {
    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    /// Everything up to the end of the current batch is processed.
    pub async fn checkpoint(&mut self) -> Result<(), LeaseError> {
        match self.batch_end.clone() {
            Some((sequence, sub_sequence)) => {
                self.set(
                    Checkpoint::At {
                        sequence,
                        sub_sequence,
                    },
                    false,
                )
                .await
            }
            None => Ok(()),
        }
    }

    /// Everything up to this record is processed.
    pub async fn checkpoint_at(&mut self, record: &UserRecord) -> Result<(), LeaseError> {
        self.set(
            Checkpoint::At {
                sequence: record.sequence_number.clone(),
                sub_sequence: record.sub_sequence.unwrap_or(0),
            },
            false,
        )
        .await
    }

    /// The shard is done (only when it has ended): its children may start.
    pub async fn checkpoint_shard_end(&mut self) -> Result<(), LeaseError> {
        self.set(Checkpoint::ShardEnd, true).await?;
        self.ended = true;
        Ok(())
    }

    /// Writes the checkpoint now, or, within `interval` of the last write,
    /// leaves it for the next renewal to write.
    async fn set(&mut self, checkpoint: Checkpoint, now: bool) -> Result<(), LeaseError> {
        *self
            .held
            .checkpointed_at
            .lock()
            .expect("checkpoint time lock") = std::time::Instant::now().into();
        let due = now
            || self
                .held
                .last_write
                .lock()
                .expect("write time lock")
                .elapsed()
                >= self.interval;
        if due {
            self.held
                .write(&self.table, |lease| {
                    lease.checkpoint = checkpoint;
                    lease.owner_switches = 0;
                })
                .await
        } else {
            let mut lease = self.held.lease.lock().await;
            if self.held.is_lost() {
                return Err(LeaseError::Lost(self.shard_id.clone()));
            }
            lease.checkpoint = checkpoint;
            lease.owner_switches = 0;
            Ok(())
        }
    }

    /// Writes a checkpoint left for the renewal.
    async fn flush(&mut self) -> Result<(), LeaseError> {
        self.held.write(&self.table, |_| {}).await
    }
}

pub(crate) struct ShardReader {
    shared: Arc<Shared>,
    held: Arc<Held>,
    processor: Box<dyn RecordProcessor>,
    shard_id: String,
}

/// Skips what a checkpoint inside or at a record already covers.
pub(crate) struct Skip {
    pub sequence: SequenceNumber,
    pub sub_sequence: u64,
}

impl ShardReader {
    pub fn new(shared: Arc<Shared>, held: Arc<Held>, processor: Box<dyn RecordProcessor>) -> Self {
        let shard_id = held
            .lease
            .try_lock()
            .map(|l| l.shard_id.clone())
            .unwrap_or_default();
        Self {
            shared,
            held,
            processor,
            shard_id,
        }
    }

    fn stopping(&self) -> bool {
        *self.shared.shutdown.borrow()
    }

    async fn pause(&self, delay: Duration) {
        let mut shutdown = self.shared.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => {}
        }
    }

    pub async fn run(mut self) -> ReadOutcome {
        let outcome = self.read().await;
        if outcome == ReadOutcome::Lost {
            tracing::info!(shard = %self.shard_id, "lease lost; the processor stops");
            self.processor.lease_lost().await;
        }
        outcome
    }

    /// Waits until every parent shard was read to its end.
    async fn parents_done(&self) -> Option<ReadOutcome> {
        let parents = self.held.lease.lock().await.parents.clone();
        let mut logged = false;
        loop {
            let mut waiting = Vec::new();
            for parent in &parents {
                match self.shared.leases.get(parent).await {
                    Ok(None) => {}
                    Ok(Some(lease)) if lease.checkpoint == Checkpoint::ShardEnd => {}
                    Ok(Some(_)) => waiting.push(parent.clone()),
                    Err(e) => waiting.push(format!("{parent} ({e})")),
                }
            }
            if waiting.is_empty() {
                return None;
            }
            if !logged {
                tracing::info!(shard = %self.shard_id, parents = ?waiting, "waiting for the parent shards to end");
                logged = true;
            }
            if self.held.is_lost() {
                return Some(ReadOutcome::Lost);
            }
            if self.stopping() {
                return Some(ReadOutcome::Stopped);
            }
            self.pause(self.shared.config.renewal / 2).await;
        }
    }

    fn start_of(checkpoint: &Checkpoint) -> (StartPosition, Option<Skip>) {
        match checkpoint {
            Checkpoint::TrimHorizon | Checkpoint::ShardEnd => (StartPosition::TrimHorizon, None),
            Checkpoint::Latest => (StartPosition::Latest, None),
            Checkpoint::AtTimestamp(ms) => (StartPosition::AtTimestamp(*ms), None),
            Checkpoint::At {
                sequence,
                sub_sequence,
            } => (
                StartPosition::AtSequence(sequence.clone()),
                Some(Skip {
                    sequence: sequence.clone(),
                    sub_sequence: *sub_sequence,
                }),
            ),
        }
    }

    async fn read(&mut self) -> ReadOutcome {
        if let Some(outcome) = self.parents_done().await {
            return outcome;
        }
        let config = self.shared.config.clone();
        let start = self.held.lease.lock().await.checkpoint.clone();
        if start == Checkpoint::ShardEnd {
            return ReadOutcome::Ended;
        }
        let mut checkpointer = Checkpointer {
            shard_id: self.shard_id.clone(),
            held: self.held.clone(),
            table: self.shared.leases.clone(),
            interval: config.checkpoint_interval,
            batch_end: None,
            ended: false,
        };
        let mut attempt = 0u32;
        while let Err(e) = self.processor.initialize(&self.shard_id, &start).await {
            if let Some(outcome) = self.interrupted() {
                return outcome;
            }
            self.retry(&format!("initialize: {e}"), &mut attempt).await;
        }
        tracing::info!(shard = %self.shard_id, from = ?start, "reading shard");
        // Where to continue: from the checkpoint, then after what was handed over.
        let (mut position, mut skip) = Self::start_of(&start);
        let mut iterator: Option<String> = None;
        let mut expired = false;
        let processed = metrics::CONSUMER_RECORDS.counter(&[("application", &config.application)]);
        let mut last_read = tokio::time::Instant::now() - self.shared.streams.min_read_interval();
        loop {
            if let Some(outcome) = self.interrupted() {
                if outcome == ReadOutcome::Stopped {
                    self.stop(&mut checkpointer).await;
                }
                return outcome;
            }
            let it = match iterator.take() {
                Some(it) => it,
                None => match self
                    .shared
                    .streams
                    .get_shard_iterator(&config.stream, &self.shard_id, position.clone())
                    .await
                {
                    Ok(it) => it,
                    Err(StreamError::ShardNotFound { .. }) => {
                        tracing::warn!(stream = %config.stream, shard = %self.shard_id, "the shard no longer exists; its lease is removed");
                        return ReadOutcome::Gone;
                    }
                    Err(e) => {
                        self.retry(&e.to_string(), &mut attempt).await;
                        continue;
                    }
                },
            };
            tokio::time::sleep_until(last_read + self.shared.streams.min_read_interval()).await;
            last_read = tokio::time::Instant::now();
            let page = match self
                .shared
                .streams
                .get_records(&it, config.batch_records)
                .await
            {
                Ok(page) => page,
                // Made again from what was handed over: nothing is skipped.
                // A second expiry in a row backs off like any other error.
                Err(StreamError::ExpiredIterator(reason)) if !expired => {
                    tracing::info!(stream = %config.stream, shard = %self.shard_id, reason = %reason, "shard iterator expired; resuming after the checkpoint");
                    expired = true;
                    continue;
                }
                Err(e) => {
                    if e.is_retryable() {
                        iterator = Some(it);
                    }
                    self.retry(&e.to_string(), &mut attempt).await;
                    continue;
                }
            };
            attempt = 0;
            expired = false;
            // Looked up at each page, not held: when a lease moves between
            // workers of one process, the reader that ended removes the
            // shard's series, and the one reading now puts it back.
            metrics::CONSUMER_MILLIS_BEHIND
                .gauge(&[
                    ("application", &config.application),
                    ("shard", &self.shard_id),
                ])
                .set(page.millis_behind_latest.unwrap_or(0) as i64);
            let records = user_records(&self.shard_id, page.records, &mut skip);
            let idle = records.is_empty();
            if let Some(last) = records.last() {
                let end = (last.sequence_number.clone(), last.sub_sequence.unwrap_or(0));
                checkpointer.batch_end = Some(end.clone());
                let batch = Batch {
                    shard_id: self.shard_id.clone(),
                    records,
                    millis_behind_latest: page.millis_behind_latest,
                };
                // Offered until processed: a failing processor is never skipped past.
                while let Err(e) = self
                    .processor
                    .process_records(&batch, &mut checkpointer)
                    .await
                {
                    if let Some(outcome) = self.interrupted() {
                        if outcome == ReadOutcome::Stopped {
                            self.stop(&mut checkpointer).await;
                        }
                        return outcome;
                    }
                    self.retry(&format!("processing: {e}"), &mut attempt).await;
                }
                attempt = 0;
                processed.add(batch.records.len() as u64);
                let last = batch.records.last().expect("not empty");
                match last.sub_sequence {
                    Some(sub) => {
                        position = StartPosition::AtSequence(end.0.clone());
                        skip = Some(Skip {
                            sequence: end.0,
                            sub_sequence: sub,
                        });
                    }
                    None => {
                        position = StartPosition::AfterSequence(end.0);
                        skip = None;
                    }
                }
            }
            match page.next_iterator {
                Some(next) => {
                    iterator = Some(next);
                    if idle {
                        self.pause(config.idle_poll).await;
                    }
                }
                None => return self.end(&mut checkpointer).await,
            }
        }
    }

    fn interrupted(&self) -> Option<ReadOutcome> {
        if self.held.is_lost() {
            Some(ReadOutcome::Lost)
        } else if self.stopping() {
            Some(ReadOutcome::Stopped)
        } else {
            None
        }
    }

    async fn retry(&self, error: &str, attempt: &mut u32) {
        if *attempt == 0 {
            tracing::warn!(stream = %self.shared.config.stream, shard = %self.shard_id, error = %error, "retrying");
        }
        let delay = self
            .shared
            .config
            .backoff
            .delay(*attempt)
            .max(Duration::from_millis(10));
        *attempt = attempt.saturating_add(1);
        self.pause(delay).await;
    }

    /// The shard ended: the processor must checkpoint SHARD_END.
    async fn end(&mut self, checkpointer: &mut Checkpointer) -> ReadOutcome {
        let mut attempt = 0u32;
        loop {
            match self.processor.shard_ended(checkpointer).await {
                Ok(()) if checkpointer.ended => {
                    tracing::info!(shard = %self.shard_id, "shard ended");
                    return ReadOutcome::Ended;
                }
                Ok(()) => {
                    self.retry(
                        "the processor returned from shard_ended without checkpointing SHARD_END",
                        &mut attempt,
                    )
                    .await
                }
                Err(e) => self.retry(&format!("shard_ended: {e}"), &mut attempt).await,
            }
            if let Some(outcome) = self.interrupted() {
                if outcome == ReadOutcome::Stopped {
                    self.stop(checkpointer).await;
                }
                return outcome;
            }
        }
    }

    async fn stop(&mut self, checkpointer: &mut Checkpointer) {
        if let Err(e) = self.processor.shutdown_requested(checkpointer).await {
            tracing::warn!(shard = %self.shard_id, error = %e, "shutdown_requested failed");
        }
        if let Err(e) = checkpointer.flush().await {
            tracing::warn!(shard = %self.shard_id, error = %e, "could not write the last checkpoint");
        }
    }
}

/// A page's records as user records, aggregates opened, minus what `skip`
/// says was processed already.
pub(crate) fn user_records(
    shard: &str,
    records: Vec<Record>,
    skip: &mut Option<Skip>,
) -> Vec<UserRecord> {
    let mut out = Vec::with_capacity(records.len());
    for record in records {
        let covered = skip
            .as_ref()
            .filter(|s| s.sequence == record.sequence_number);
        match aggregate::deaggregate(&record.data) {
            Ok(Some(inside)) => {
                let from = covered.map_or(0, |s| s.sub_sequence + 1);
                out.extend(inside.into_iter().enumerate().skip(from as usize).map(
                    |(sub, user)| UserRecord {
                        sequence_number: record.sequence_number.clone(),
                        sub_sequence: Some(sub as u64),
                        partition_key: user.partition_key,
                        data: user.data,
                        arrival_ms: record.arrival_ms,
                    },
                ));
            }
            opened => {
                if let Err(e) = opened {
                    tracing::warn!(shard = %shard, sequence = %record.sequence_number, error = %e, "corrupt aggregate handed over as one record");
                }
                if covered.is_none() {
                    out.push(UserRecord {
                        sequence_number: record.sequence_number,
                        sub_sequence: None,
                        partition_key: record.partition_key,
                        data: record.data,
                        arrival_ms: record.arrival_ms,
                    });
                }
            }
        }
        *skip = None;
    }
    out
}
