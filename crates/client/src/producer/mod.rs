//! The producer: batches records into PutRecords calls, retries only the
//! entries that failed, and keeps order per partition key.
//!
//! PutRecords can fail some entries and not others, so retrying a failed
//! record after later records of its key succeeded would reorder the key.
//! The producer prevents it the way the design asks: one queue (a lane) per
//! shard, at most one call in flight holding records of a lane, and never two
//! records of one partition key in the same call. A failed entry goes back to
//! the front of its lane, so it is the next of its key to be sent. One call
//! takes records of every free lane, as PutRecords accepts records of any
//! shard, so calls stay full without waiting.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smallvec::{smallvec, SmallVec};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use sluice_core::aggregate::{self, Aggregator};
use sluice_core::limits::{
    put_entry_bytes, MAX_BYTES_PER_PUT, MAX_RECORDS_PER_PUT, MAX_RECORD_BYTES,
};
use sluice_core::retry::{Backoff, Retryable};
use sluice_core::stream::{PutFailure, PutRecord, PutResult, StreamError};
use sluice_core::StreamBackend;
use sluice_telemetry::metrics;
use sluice_telemetry::{Counter, Histogram};

/// Producer settings.
#[derive(Clone, Debug)]
pub struct ProducerConfig {
    /// How long a shard waits for more records before sending a part-full call.
    pub linger: Duration,
    /// Records per PutRecords call (at most 500).
    pub max_batch_records: usize,
    /// Bytes per PutRecords call (at most 5 MiB).
    pub max_batch_bytes: usize,
    /// Packs records of a shard into KPL aggregated records of at most this
    /// many bytes (at most 1 MiB); off when `None`. Consumers de-aggregate.
    pub aggregate_max_bytes: Option<usize>,
    pub backoff: Backoff,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            linger: Duration::ZERO,
            max_batch_records: MAX_RECORDS_PER_PUT,
            max_batch_bytes: MAX_BYTES_PER_PUT,
            aggregate_max_bytes: None,
            backoff: Backoff::default(),
        }
    }
}

impl ProducerConfig {
    fn clamped(mut self) -> Self {
        self.max_batch_records = self.max_batch_records.clamp(1, MAX_RECORDS_PER_PUT);
        self.max_batch_bytes = self.max_batch_bytes.clamp(1, MAX_BYTES_PER_PUT);
        self.aggregate_max_bytes = self
            .aggregate_max_bytes
            .map(|max| max.clamp(aggregate::OVERHEAD + 1, MAX_RECORD_BYTES));
        self
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProduceError {
    #[error("stream {stream}: {error}")]
    Stream { stream: String, error: StreamError },
    #[error("stream {stream}: record not accepted within {waited_ms} ms ({last})")]
    GaveUp {
        stream: String,
        waited_ms: u64,
        last: SendFailure,
    },
    #[error("record rejected by stream {stream}: {reason}")]
    Rejected { stream: String, reason: SendFailure },
    #[error("the producer for stream {0} is closed")]
    Closed(String),
}

impl Retryable for ProduceError {
    fn is_retryable(&self) -> bool {
        matches!(self, ProduceError::GaveUp { .. })
            || matches!(self, ProduceError::Stream { error, .. } if error.is_retryable())
    }
}

/// What last kept a record from being stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendFailure {
    /// The stream refused the record's entry of a call.
    #[error("entry failed: {0}")]
    Entry(PutFailure),
    /// The whole call failed.
    #[error(transparent)]
    Call(StreamError),
    /// It was still waiting for its turn when its time was up.
    #[error("its deadline passed before it could be sent")]
    Deadline,
}

/// The records of one [`Producer::send_each`] that were not delivered: each
/// one's position in the call and why, in order of position.
pub type Undelivered = Vec<(usize, ProduceError)>;

/// One `send_each`: what its records share, and the failures so far.
struct Completion {
    /// When the records were handed over.
    since: Instant,
    /// Given up when not stored by then.
    deadline: Instant,
    remaining: AtomicUsize,
    failed: Mutex<Undelivered>,
    done: Mutex<Option<oneshot::Sender<Undelivered>>>,
}

impl Completion {
    fn fail(&self, index: u32, error: ProduceError) {
        self.failed
            .lock()
            .expect("completion lock")
            .push((index as usize, error));
        self.resolved(1);
    }

    /// `count` more records are resolved (stored, or failed and noted).
    fn resolved(&self, count: usize) {
        if self.remaining.fetch_sub(count, Ordering::AcqRel) == count {
            let mut failed = std::mem::take(&mut *self.failed.lock().expect("completion lock"));
            failed.sort_unstable_by_key(|(index, _)| *index);
            if let Some(done) = self.done.lock().expect("completion lock").take() {
                let _ = done.send(failed);
            }
        }
    }
}

struct Pending {
    record: PutRecord,
    /// The hash key that places the record (its own, or its key's MD5).
    hash: u128,
    /// Stands for the partition key in the one-entry-per-key rule (64 bits
    /// of its MD5; a collision only defers a record to the next call).
    key: u64,
    lane: usize,
    /// Position in its `send`.
    index: u32,
    completion: Arc<Completion>,
}

impl Pending {
    fn fail(self, error: ProduceError) {
        self.completion.fail(self.index, error);
    }
}

/// The queue of one open shard.
#[derive(Default)]
struct Lane {
    queue: VecDeque<Pending>,
    /// A call holds records of this lane.
    busy: bool,
    /// Calls in a row whose failed entries of this lane made no progress.
    attempt: u32,
    /// Not before this time (backing off after failed entries).
    ready_at: Option<Instant>,
}

struct Lanes {
    lanes: Vec<Lane>,
    /// Where the next call starts taking records, so every lane gets a turn.
    next: usize,
    in_flight: usize,
    /// Records a call passed over (their key was taken), on their way back
    /// to their lane: empty between calls, kept for its capacity.
    skipped: VecDeque<Pending>,
}

struct Inner {
    stream: String,
    backend: Arc<dyn StreamBackend>,
    config: ProducerConfig,
    /// Start of each open shard's hash range, ascending; index = lane.
    starts: Vec<u128>,
    lanes: Mutex<Lanes>,
    wake: Notify,
    closed: AtomicBool,
    calls: Counter,
    call_duration: Histogram,
    records: Counter,
    user_records: Counter,
    failed_entries: Counter,
    given_up: Counter,
}

/// A producer for one stream. Cheap to clone.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
    dispatcher: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Producer {
    /// Starts a producer for `stream`, with one lane per open shard.
    pub async fn start(
        backend: Arc<dyn StreamBackend>,
        stream: &str,
        config: ProducerConfig,
    ) -> Result<Self, ProduceError> {
        let shards = backend
            .list_shards(stream)
            .await
            .map_err(|error| ProduceError::Stream {
                stream: stream.to_owned(),
                error,
            })?;
        let mut starts: Vec<u128> = shards
            .iter()
            .filter(|s| s.is_open())
            .map(|s| s.hash_key_range.0)
            .collect();
        starts.sort_unstable();
        if starts.is_empty() {
            starts.push(0);
        }
        let labels = [("stream", stream)];
        let inner = Arc::new(Inner {
            stream: stream.to_owned(),
            backend,
            config: config.clamped(),
            lanes: Mutex::new(Lanes {
                lanes: starts.iter().map(|_| Lane::default()).collect(),
                next: 0,
                in_flight: 0,
                skipped: VecDeque::new(),
            }),
            starts,
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            calls: metrics::PUT_CALLS.counter(&labels),
            call_duration: metrics::PUT_DURATION.histogram(&labels),
            records: metrics::PUT_RECORDS.counter(&labels),
            user_records: metrics::PUT_USER_RECORDS.counter(&labels),
            failed_entries: metrics::PUT_FAILED_ENTRIES.counter(&labels),
            given_up: metrics::PUT_GIVEN_UP.counter(&labels),
        });
        let dispatcher = tokio::spawn(dispatch(inner.clone()));
        Ok(Self {
            inner,
            dispatcher: Arc::new(Mutex::new(Some(dispatcher))),
        })
    }

    pub fn stream(&self) -> &str {
        &self.inner.stream
    }

    /// Sends records and waits until the stream acknowledged every one, or
    /// one could not be delivered. Records of one partition key are written
    /// in the order given here, across calls as well.
    pub async fn send(&self, records: Vec<PutRecord>) -> Result<(), ProduceError> {
        let deadline = Instant::now() + self.inner.config.backoff.max_elapsed();
        let undelivered = self.send_each(records, deadline).await;
        match undelivered.into_iter().next() {
            Some((_, error)) => Err(error),
            None => Ok(()),
        }
    }

    /// Sends records and waits until each was acknowledged or given up, at
    /// the latest soon after `deadline` (a call in flight then is waited
    /// for). Returns the records not delivered (none when all were), by
    /// their position in `records`.
    pub async fn send_each(&self, records: Vec<PutRecord>, deadline: Instant) -> Undelivered {
        let count = records.len();
        let every = |error: ProduceError| (0..count).map(|i| (i, error.clone())).collect();
        if records.is_empty() {
            return Vec::new();
        }
        if self.inner.closed.load(Ordering::Acquire) {
            return every(ProduceError::Closed(self.inner.stream.clone()));
        }
        let (done, finished) = oneshot::channel();
        let completion = Arc::new(Completion {
            since: Instant::now(),
            deadline,
            remaining: AtomicUsize::new(count),
            failed: Mutex::new(Vec::new()),
            done: Mutex::new(Some(done)),
        });
        {
            let mut lanes = self.inner.lanes.lock().expect("lanes lock");
            for (index, record) in records.into_iter().enumerate() {
                let key_hash = record.partition_key.hash();
                let hash = record.explicit_hash_key.unwrap_or(key_hash);
                let lane = self.inner.starts.partition_point(|s| *s <= hash) - 1;
                lanes.lanes[lane].queue.push_back(Pending {
                    record,
                    hash,
                    key: key_hash as u64,
                    lane,
                    index: index as u32,
                    completion: completion.clone(),
                });
            }
        }
        self.inner.wake.notify_one();
        finished
            .await
            .unwrap_or_else(|_| every(ProduceError::Closed(self.inner.stream.clone())))
    }

    /// Stops taking records, sends everything queued, and waits for it.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.wake.notify_one();
        let dispatcher = self.dispatcher.lock().expect("dispatcher lock").take();
        if let Some(dispatcher) = dispatcher {
            let _ = dispatcher.await;
        }
    }
}

mod calls;
mod packing;

use calls::{dispatch, give_up};
use packing::{next_call, Entry, Next};

#[cfg(test)]
mod tests;
