//! The producer: batches records into PutRecords calls, retries only the
//! entries that failed, and keeps order per partition key.
//!
//! PutRecords can fail some entries and not others, so retrying a failed
//! record after later records of its key succeeded would reorder the key.
//! The producer prevents it the way the design asks: one queue and at most
//! one call in flight per shard, and never two records of one partition key
//! in the same call. A failed entry goes back to the front of its queue, so
//! it is the next of its key to be sent.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use sluice_core::limits::{put_entry_bytes, MAX_BYTES_PER_PUT, MAX_RECORDS_PER_PUT};
use sluice_core::retry::{Backoff, Retryable};
use sluice_core::stream::{PutRecord, PutResult, StreamError};
use sluice_core::StreamBackend;
use sluice_telemetry::metrics;
use sluice_telemetry::Counter;

/// Producer settings.
#[derive(Clone, Debug)]
pub struct ProducerConfig {
    /// How long a shard waits for more records before sending a part-full call.
    pub linger: Duration,
    /// Records per PutRecords call (at most 500).
    pub max_batch_records: usize,
    /// Bytes per PutRecords call (at most 5 MiB).
    pub max_batch_bytes: usize,
    pub backoff: Backoff,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            linger: Duration::ZERO,
            max_batch_records: MAX_RECORDS_PER_PUT,
            max_batch_bytes: MAX_BYTES_PER_PUT,
            backoff: Backoff::default(),
        }
    }
}

impl ProducerConfig {
    fn clamped(mut self) -> Self {
        self.max_batch_records = self.max_batch_records.clamp(1, MAX_RECORDS_PER_PUT);
        self.max_batch_bytes = self.max_batch_bytes.clamp(1, MAX_BYTES_PER_PUT);
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
        last: String,
    },
    #[error("record rejected by stream {stream}: {reason}")]
    Rejected { stream: String, reason: String },
    #[error("the producer for stream {0} is closed")]
    Closed(String),
}

impl Retryable for ProduceError {
    fn is_retryable(&self) -> bool {
        matches!(self, ProduceError::GaveUp { .. })
            || matches!(self, ProduceError::Stream { error, .. } if error.is_retryable())
    }
}

/// Completion of one `send` call: resolves once every record is resolved.
struct Completion {
    remaining: AtomicUsize,
    error: Mutex<Option<ProduceError>>,
    done: Mutex<Option<oneshot::Sender<Result<(), ProduceError>>>>,
}

impl Completion {
    fn resolve(&self, outcome: Result<(), ProduceError>) {
        if let Err(e) = outcome {
            self.error.lock().expect("completion lock").get_or_insert(e);
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let error = self.error.lock().expect("completion lock").take();
            if let Some(done) = self.done.lock().expect("completion lock").take() {
                let _ = done.send(error.map_or(Ok(()), Err));
            }
        }
    }
}

struct Pending {
    record: PutRecord,
    completion: Arc<Completion>,
    since: Instant,
}

struct ShardQueue {
    queue: Mutex<VecDeque<Pending>>,
    wake: Notify,
}

struct Inner {
    stream: String,
    backend: Arc<dyn StreamBackend>,
    config: ProducerConfig,
    /// Start of each open shard's hash range, ascending; index = queue.
    starts: Vec<u128>,
    queues: Vec<ShardQueue>,
    closed: AtomicBool,
    calls: Counter,
    records: Counter,
    failed_entries: Counter,
    given_up: Counter,
}

/// A producer for one stream. Cheap to clone.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
    workers: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Producer {
    /// Starts a producer for `stream`, one worker per open shard.
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
            queues: starts
                .iter()
                .map(|_| ShardQueue {
                    queue: Mutex::new(VecDeque::new()),
                    wake: Notify::new(),
                })
                .collect(),
            starts,
            closed: AtomicBool::new(false),
            calls: metrics::PUT_CALLS.counter(&labels),
            records: metrics::PUT_RECORDS.counter(&labels),
            failed_entries: metrics::PUT_FAILED_ENTRIES.counter(&labels),
            given_up: metrics::PUT_GIVEN_UP.counter(&labels),
        });
        let workers = (0..inner.queues.len())
            .map(|shard| tokio::spawn(run_shard(inner.clone(), shard)))
            .collect();
        Ok(Self {
            inner,
            workers: Arc::new(Mutex::new(workers)),
        })
    }

    pub fn stream(&self) -> &str {
        &self.inner.stream
    }

    /// Sends records and waits until the stream acknowledged every one, or
    /// one could not be delivered. Records of one partition key are written
    /// in the order given here, across calls as well.
    pub async fn send(&self, records: Vec<PutRecord>) -> Result<(), ProduceError> {
        if records.is_empty() {
            return Ok(());
        }
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(ProduceError::Closed(self.inner.stream.clone()));
        }
        let (done, finished) = oneshot::channel();
        let completion = Arc::new(Completion {
            remaining: AtomicUsize::new(records.len()),
            error: Mutex::new(None),
            done: Mutex::new(Some(done)),
        });
        let since = Instant::now();
        let mut touched = vec![false; self.inner.queues.len()];
        for record in records {
            let shard = self
                .inner
                .starts
                .partition_point(|s| *s <= record.hash_key())
                - 1;
            touched[shard] = true;
            self.inner.queues[shard]
                .queue
                .lock()
                .expect("queue lock")
                .push_back(Pending {
                    record,
                    completion: completion.clone(),
                    since,
                });
        }
        for (shard, touched) in touched.into_iter().enumerate() {
            if touched {
                self.inner.queues[shard].wake.notify_one();
            }
        }
        finished
            .await
            .map_err(|_| ProduceError::Closed(self.inner.stream.clone()))?
    }

    /// Stops taking records, sends everything queued, and waits for it.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        for queue in &self.inner.queues {
            queue.wake.notify_one();
        }
        let workers: Vec<_> = self
            .workers
            .lock()
            .expect("workers lock")
            .drain(..)
            .collect();
        for worker in workers {
            let _ = worker.await;
        }
    }
}

/// Takes the next call's records: in queue order, skipping any record whose
/// key is already in the call (it and its key's later records wait).
fn take_batch(queue: &mut VecDeque<Pending>, max_records: usize, max_bytes: usize) -> Vec<Pending> {
    let mut batch = Vec::new();
    let mut keys: HashSet<String> = HashSet::new();
    let mut kept = VecDeque::new();
    let mut bytes = 0usize;
    // Look a bounded distance past skipped records, so a queue of one hot
    // key does not cost a full scan per call.
    let mut budget = max_records * 4;
    while let Some(pending) = queue.pop_front() {
        let size = put_entry_bytes(&pending.record.partition_key, pending.record.data.len());
        if batch.len() == max_records
            || budget == 0
            || (bytes + size > max_bytes && !batch.is_empty())
        {
            queue.push_front(pending);
            break;
        }
        budget -= 1;
        if keys.contains(&pending.record.partition_key) {
            kept.push_back(pending);
            continue;
        }
        keys.insert(pending.record.partition_key.clone());
        bytes += size;
        batch.push(pending);
    }
    while let Some(pending) = kept.pop_back() {
        queue.push_front(pending);
    }
    batch
}

async fn run_shard(inner: Arc<Inner>, shard: usize) {
    let lane = &inner.queues[shard];
    let mut attempt: u32 = 0;
    loop {
        // Wait for records, or for the end; linger only for a part-full call.
        let linger_from = loop {
            let notified = lane.wake.notified();
            let (oldest, len) = {
                let queue = lane.queue.lock().expect("queue lock");
                (queue.front().map(|p| p.since), queue.len())
            };
            match oldest {
                Some(_)
                    if len >= inner.config.max_batch_records
                        || inner.closed.load(Ordering::Acquire) =>
                {
                    break None
                }
                Some(since) => break Some(since),
                None if inner.closed.load(Ordering::Acquire) => return,
                None => notified.await,
            }
        };
        if let Some(since) = linger_from {
            tokio::time::sleep_until(since + inner.config.linger).await;
        }
        let batch = {
            let mut queue = lane.queue.lock().expect("queue lock");
            take_batch(
                &mut queue,
                inner.config.max_batch_records,
                inner.config.max_batch_bytes,
            )
        };
        if batch.is_empty() {
            continue;
        }
        let records: Vec<PutRecord> = batch.iter().map(|p| p.record.clone()).collect();
        inner.calls.inc();
        let outcome = inner.backend.put_records(&inner.stream, records).await;
        let mut retry = Vec::new();
        let mut progressed = false;
        match outcome {
            Ok(results) if results.len() == batch.len() => {
                for (pending, result) in batch.into_iter().zip(results) {
                    match result {
                        PutResult::Ok { .. } => {
                            progressed = true;
                            inner.records.inc();
                            pending.completion.resolve(Ok(()));
                        }
                        PutResult::Failed(failure) => {
                            inner.failed_entries.inc();
                            retry_or_fail(
                                &inner,
                                pending,
                                &failure,
                                failure.is_retryable(),
                                &mut retry,
                            );
                        }
                    }
                }
            }
            Ok(results) => {
                let error = StreamError::Storage(format!(
                    "{} results for {} records",
                    results.len(),
                    batch.len()
                ));
                for pending in batch {
                    retry_or_fail(&inner, pending, &error, true, &mut retry);
                }
            }
            Err(error) => {
                let retryable = error.is_retryable();
                if !retryable {
                    tracing::error!(stream = %inner.stream, error = %error, "PutRecords failed");
                }
                for pending in batch {
                    retry_or_fail(&inner, pending, &error, retryable, &mut retry);
                }
            }
        }
        // Back off harder only while calls make no progress at all (the shard
        // is throttled or the service is unavailable); a call that stored some
        // records retries the rest after a short jittered pause.
        if retry.is_empty() || progressed {
            attempt = 0;
        }
        if retry.is_empty() {
            continue;
        }
        {
            let mut queue = lane.queue.lock().expect("queue lock");
            for pending in retry.into_iter().rev() {
                queue.push_front(pending);
            }
        }
        tokio::time::sleep(inner.config.backoff.delay(attempt)).await;
        attempt = attempt.saturating_add(1);
    }
}

fn retry_or_fail(
    inner: &Inner,
    pending: Pending,
    reason: &dyn std::fmt::Debug,
    retryable: bool,
    retry: &mut Vec<Pending>,
) {
    let waited = pending.since.elapsed();
    if retryable && waited < inner.config.backoff.max_elapsed() {
        retry.push(pending);
        return;
    }
    let error = if retryable {
        inner.given_up.inc();
        ProduceError::GaveUp {
            stream: inner.stream.clone(),
            waited_ms: waited.as_millis() as u64,
            last: format!("{reason:?}"),
        }
    } else {
        ProduceError::Rejected {
            stream: inner.stream.clone(),
            reason: format!("{reason:?}"),
        }
    };
    pending.completion.resolve(Err(error));
}

#[cfg(test)]
mod tests;
