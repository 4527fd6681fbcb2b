//! The consumer: what the Kinesis Client Library does, over Sluice's stream
//! and table traits, so it runs on the embedded backend and on Kinesis +
//! DynamoDB alike.
//!
//! Workers of one application share a stream's shards through a lease table
//! ([`lease`]): one lease per shard, renewed by its owner, taken over when
//! its owner stops renewing it (failover), stolen to even out the load.
//! For each lease it holds, a worker runs a shard reader that hands batches
//! to the application's [`RecordProcessor`] and checkpoints only what the
//! processor says it processed. A child shard is read only after its parents
//! were read to their end and checkpointed there, so order per partition key
//! holds across splits and merges.

pub mod dedup;
pub mod lease;
pub(crate) mod reader;
mod worker;

#[cfg(test)]
mod tests;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use sluice_core::retry::Backoff;
use sluice_core::stream::PartitionKey;
use sluice_core::SequenceNumber;

pub use dedup::Dedup;
pub use lease::{Checkpoint, Lease, LeaseError, LeaseTable};
pub use reader::Checkpointer;
pub use worker::{Standing, Worker, WorkerHandle};

/// Where a new application starts reading a shard that has no checkpoint.
/// Children of a split or merge always start at their beginning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InitialPosition {
    TrimHorizon,
    Latest,
    /// Milliseconds since the Unix epoch: replay from then.
    AtTimestamp(i64),
}

/// Settings of one worker.
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    /// The application; its lease table is named after it.
    pub application: String,
    pub stream: String,
    /// This worker's name in the lease table (unique per process).
    pub worker_id: String,
    /// A lease not renewed for this long is taken over (default 10 s).
    pub failover: Duration,
    /// How often held leases are renewed (default a third of `failover`).
    pub renewal: Duration,
    pub initial_position: InitialPosition,
    /// Records per GetRecords call (default 1,000).
    pub batch_records: usize,
    /// Pause before reading a shard again when it had nothing (default 200 ms).
    pub idle_poll: Duration,
    /// Least time between two checkpoint writes of a shard (default 1 s);
    /// a checkpoint asked for sooner is written with the next renewal, so
    /// table writes do not grow with the record rate.
    pub checkpoint_interval: Duration,
    pub backoff: Backoff,
}

impl ConsumerConfig {
    pub fn new(application: &str, stream: &str, worker_id: &str) -> Self {
        let failover = Duration::from_secs(10);
        Self {
            application: application.to_owned(),
            stream: stream.to_owned(),
            worker_id: worker_id.to_owned(),
            failover,
            renewal: failover / 3,
            initial_position: InitialPosition::TrimHorizon,
            batch_records: 1000,
            idle_poll: Duration::from_millis(200),
            checkpoint_interval: Duration::from_secs(1),
            backoff: Backoff::default(),
        }
    }

    /// Sets the failover time and renewal at a third of it.
    pub fn with_failover(mut self, failover: Duration) -> Self {
        self.failover = failover;
        self.renewal = failover / 3;
        self
    }
}

/// One user record: a Kinesis record, or one record of a KPL aggregate.
#[derive(Clone, Debug, PartialEq)]
pub struct UserRecord {
    pub sequence_number: SequenceNumber,
    /// Position inside an aggregate; `None` for a plain record.
    pub sub_sequence: Option<u64>,
    pub partition_key: PartitionKey,
    pub data: Bytes,
    /// Milliseconds since the Unix epoch when the stream accepted it.
    pub arrival_ms: i64,
}

/// What a processor gets at a time.
#[derive(Debug)]
pub struct Batch {
    pub shard_id: String,
    pub records: Vec<UserRecord>,
    /// How far behind the tip of the shard this batch is.
    pub millis_behind_latest: Option<u64>,
}

/// An error from a processor: the batch is offered again after a pause,
/// never skipped.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProcessError(pub String);

impl ProcessError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// The application's code for one shard. One instance per lease held;
/// calls for one shard never overlap.
#[async_trait]
pub trait RecordProcessor: Send + Sync {
    /// Called once before the first batch, with where reading resumes.
    async fn initialize(
        &mut self,
        _shard_id: &str,
        _from: &Checkpoint,
    ) -> Result<(), ProcessError> {
        Ok(())
    }

    /// Processes a batch. Checkpoint through `checkpointer` what is done; an
    /// error offers the same batch again.
    async fn process_records(
        &mut self,
        batch: &Batch,
        checkpointer: &mut Checkpointer,
    ) -> Result<(), ProcessError>;

    /// The lease went to another worker: stop; do not checkpoint.
    async fn lease_lost(&mut self) {}

    /// The shard was read to its end. The processor must call
    /// `checkpointer.checkpoint_shard_end()` so the children can start; until
    /// it does, this is called again.
    async fn shard_ended(&mut self, checkpointer: &mut Checkpointer) -> Result<(), ProcessError> {
        checkpointer
            .checkpoint_shard_end()
            .await
            .map_err(|e| ProcessError(e.to_string()))
    }

    /// The worker is stopping: a last chance to checkpoint.
    async fn shutdown_requested(
        &mut self,
        _checkpointer: &mut Checkpointer,
    ) -> Result<(), ProcessError> {
        Ok(())
    }
}

/// Makes a processor for each shard a worker takes on.
pub trait ProcessorFactory: Send + Sync + 'static {
    fn create(&self, shard_id: &str) -> Box<dyn RecordProcessor>;
}

impl<F> ProcessorFactory for F
where
    F: Fn(&str) -> Box<dyn RecordProcessor> + Send + Sync + 'static,
{
    fn create(&self, shard_id: &str) -> Box<dyn RecordProcessor> {
        self(shard_id)
    }
}
