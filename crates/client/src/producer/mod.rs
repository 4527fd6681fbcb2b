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
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smallvec::{smallvec, SmallVec};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use sluice_core::aggregate::{self, Aggregator};
use sluice_core::hash::partition_hash;
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
                let key_hash = partition_hash(&record.partition_key);
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

/// One PutRecords entry: a user record, or several of one lane packed into
/// a KPL aggregate that succeeds or fails as one.
struct Entry {
    /// The aggregate, when the entry packs several records.
    aggregate: Option<PutRecord>,
    /// Held inline when alone, the usual case without aggregation.
    members: SmallVec<[Pending; 1]>,
}

impl Entry {
    /// What the entry puts: its aggregate, or its one record.
    fn record(&self) -> &PutRecord {
        self.aggregate.as_ref().unwrap_or(&self.members[0].record)
    }
}

/// The entries of the next call, within the call's limits.
struct CallBuilder {
    entries: Vec<Entry>,
    /// Partition keys in the call: a key appears in one entry at most.
    keys: HashSet<u64, BuildHasherDefault<KeyHasher>>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl CallBuilder {
    fn full(&self) -> bool {
        self.entries.len() >= self.max_entries || self.bytes >= self.max_bytes
    }

    /// Whether one more entry of `size` bytes fits (the first always does).
    fn fits(&self, size: usize) -> bool {
        self.entries.is_empty()
            || (self.entries.len() < self.max_entries && self.bytes + size <= self.max_bytes)
    }

    fn push(&mut self, entry: Entry) {
        let record = entry.record();
        self.bytes += put_entry_bytes(&record.partition_key, record.data.len());
        for member in &entry.members {
            self.keys.insert(member.key);
        }
        self.entries.push(entry);
    }
}

/// Hashes a [`Pending::key`] to itself: it is already 64 bits of an MD5.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }
}

/// User records being packed into one aggregate.
#[derive(Default)]
struct Packing {
    members: Vec<Pending>,
    aggregator: Aggregator,
}

impl Packing {
    /// The entry's bytes in the call if `pending` joined it.
    fn size_with(&self, pending: &Pending) -> usize {
        let record = &pending.record;
        let growth = self.aggregator.growth(
            &record.partition_key,
            explicit_hash_key(record).as_deref(),
            record.data.len(),
        );
        let key = self
            .members
            .first()
            .map_or(record.partition_key.len(), |first| {
                first.record.partition_key.len()
            });
        key + self.aggregator.encoded_len() + growth
    }

    fn add(&mut self, pending: Pending) {
        let record = &pending.record;
        self.aggregator.push(
            &record.partition_key,
            explicit_hash_key(record).as_deref(),
            record.data.clone(),
        );
        self.members.push(pending);
    }

    /// The entry: the record itself when alone, as the KPL sends it.
    fn seal(&mut self) -> Option<Entry> {
        if self.members.is_empty() {
            return None;
        }
        let mut members = std::mem::take(&mut self.members);
        let first = &members[0];
        // The aggregate goes where its first record goes.
        let aggregate = match members.len() {
            1 => {
                self.aggregator = Aggregator::default();
                None
            }
            _ => Some(PutRecord {
                partition_key: first.record.partition_key.clone(),
                explicit_hash_key: Some(first.hash),
                data: self.aggregator.finish(),
            }),
        };
        members.shrink_to_fit();
        Some(Entry {
            aggregate,
            members: SmallVec::from_vec(members),
        })
    }
}

fn explicit_hash_key(record: &PutRecord) -> Option<String> {
    record.explicit_hash_key.map(|k| k.to_string())
}

/// Takes records of one lane into the call, in queue order, skipping any
/// record whose key is already in another entry of the call (it and its
/// key's later records wait for the next call). With `aggregate_max`, the
/// lane's records are packed into aggregates of at most that many bytes.
fn take_from_lane(
    queue: &mut VecDeque<Pending>,
    kept: &mut VecDeque<Pending>,
    call: &mut CallBuilder,
    aggregate_max: Option<usize>,
    now: Instant,
    expired: &mut Vec<Pending>,
) {
    debug_assert!(kept.is_empty());
    // Look a bounded distance past skipped records, so a queue of one hot
    // key does not cost a full scan per call.
    let mut skips_left = MAX_RECORDS_PER_PUT * 4;
    let mut packing = Packing::default();
    while let Some(pending) = queue.pop_front() {
        if pending.completion.deadline <= now {
            expired.push(pending);
            continue;
        }
        // A full aggregate is sealed first: its keys then count as taken.
        if let Some(max) = aggregate_max {
            if !packing.members.is_empty() && packing.size_with(&pending) > max {
                if let Some(entry) = packing.seal() {
                    call.push(entry);
                }
            }
        }
        if call.keys.contains(&pending.key) {
            if skips_left == 0 {
                queue.push_front(pending);
                break;
            }
            skips_left -= 1;
            kept.push_back(pending);
            continue;
        }
        let size = match aggregate_max {
            Some(_) => packing.size_with(&pending),
            None => put_entry_bytes(&pending.record.partition_key, pending.record.data.len()),
        };
        if !call.fits(size) {
            queue.push_front(pending);
            break;
        }
        if aggregate_max.is_some() {
            packing.add(pending);
        } else {
            call.push(Entry {
                aggregate: None,
                members: smallvec![pending],
            });
        }
    }
    if let Some(entry) = packing.seal() {
        call.push(entry);
    }
    while let Some(pending) = kept.pop_back() {
        queue.push_front(pending);
    }
}

/// What the dispatcher does next.
enum Next {
    Call(Vec<Entry>),
    WaitUntil(Instant),
    Wait,
    Done,
}

/// Chooses the next call: records of every lane that is neither in a call nor
/// backing off, one call for all of them while they fit (PutRecords takes
/// records of any shard), so a call carries as many records as are waiting.
fn next_call(inner: &Inner, state: &mut Lanes, now: Instant) -> Next {
    let closed = inner.closed.load(Ordering::Acquire);
    let mut waiting = 0usize;
    let mut oldest: Option<Instant> = None;
    let mut earliest_ready: Option<Instant> = None;
    for lane in &state.lanes {
        if lane.busy || lane.queue.is_empty() {
            continue;
        }
        match lane.ready_at {
            Some(at) if at > now => {
                earliest_ready = Some(earliest_ready.map_or(at, |e| e.min(at)));
            }
            _ => {
                waiting += lane.queue.len();
                let since = lane
                    .queue
                    .front()
                    .map(|p| p.completion.since)
                    .expect("non-empty");
                oldest = Some(oldest.map_or(since, |o| o.min(since)));
            }
        }
    }
    let Some(oldest) = oldest else {
        let idle = state.in_flight == 0 && state.lanes.iter().all(|l| l.queue.is_empty());
        return match earliest_ready {
            Some(at) => Next::WaitUntil(at),
            None if closed && idle => Next::Done,
            None => Next::Wait,
        };
    };
    // Linger only for a part-full call.
    let linger_until = oldest + inner.config.linger;
    if !closed && waiting < inner.config.max_batch_records && linger_until > now {
        let at = earliest_ready.map_or(linger_until, |e| e.min(linger_until));
        return Next::WaitUntil(at);
    }
    let count = state.lanes.len();
    let mut call = CallBuilder {
        entries: Vec::with_capacity(waiting.min(inner.config.max_batch_records)),
        keys: HashSet::with_capacity_and_hasher(
            waiting.min(inner.config.max_batch_records),
            Default::default(),
        ),
        bytes: 0,
        max_entries: inner.config.max_batch_records,
        max_bytes: inner.config.max_batch_bytes,
    };
    let mut last = state.next;
    let mut expired = Vec::new();
    for offset in 0..count {
        let index = (state.next + offset) % count;
        let Lanes { lanes, skipped, .. } = &mut *state;
        let lane = &mut lanes[index];
        if lane.busy || lane.queue.is_empty() || lane.ready_at.is_some_and(|at| at > now) {
            continue;
        }
        let before = call.entries.len();
        take_from_lane(
            &mut lane.queue,
            skipped,
            &mut call,
            inner.config.aggregate_max_bytes,
            now,
            &mut expired,
        );
        if call.entries.len() > before {
            lane.busy = true;
            last = index;
        }
        if call.full() {
            break;
        }
    }
    state.next = (last + 1) % count;
    for pending in expired {
        give_up(inner, pending, SendFailure::Deadline);
    }
    if call.entries.is_empty() {
        return Next::Wait;
    }
    state.in_flight += 1;
    Next::Call(call.entries)
}

async fn dispatch(inner: Arc<Inner>) {
    loop {
        let notified = inner.wake.notified();
        let next = {
            let mut state = inner.lanes.lock().expect("lanes lock");
            next_call(&inner, &mut state, Instant::now())
        };
        match next {
            Next::Call(batch) => {
                tokio::spawn(call(inner.clone(), batch));
            }
            Next::WaitUntil(at) => {
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep_until(at) => {}
                }
            }
            Next::Wait => notified.await,
            Next::Done => return,
        }
    }
}

/// One PutRecords call; failed entries go back to the front of their lanes.
async fn call(inner: Arc<Inner>, entries: Vec<Entry>) {
    let records: Vec<PutRecord> = entries.iter().map(|e| e.record().clone()).collect();
    tracing::trace!(stream = %inner.stream, entries = records.len(), "PutRecords");
    inner.calls.inc();
    let started = Instant::now();
    let outcome = inner.backend.put_records(&inner.stream, records).await;
    inner.call_duration.observe(started.elapsed());
    let mut retry = Vec::new();
    let mut lanes_in_call = Vec::new();
    let mut progressed = Vec::new();
    for entry in &entries {
        let lane = entry.members[0].lane;
        if !lanes_in_call.contains(&lane) {
            lanes_in_call.push(lane);
        }
    }
    match outcome {
        Ok(results) if results.len() == entries.len() => {
            let mut stored = Stored::default();
            let (mut records, mut user_records) = (0, 0);
            for (entry, result) in entries.into_iter().zip(results) {
                match result {
                    PutResult::Ok { .. } => {
                        let lane = entry.members[0].lane;
                        if !progressed.contains(&lane) {
                            progressed.push(lane);
                        }
                        records += 1;
                        user_records += entry.members.len() as u64;
                        for pending in entry.members {
                            stored.add(pending);
                        }
                    }
                    PutResult::Failed(failure) => {
                        inner.failed_entries.inc();
                        let retryable = failure.is_retryable();
                        let failure = SendFailure::Entry(failure);
                        for pending in entry.members {
                            retry_or_fail(&inner, pending, &failure, retryable, &mut retry);
                        }
                    }
                }
            }
            stored.flush();
            inner.records.add(records);
            inner.user_records.add(user_records);
        }
        Ok(results) => {
            let error = StreamError::Storage(format!(
                "{} results for {} records",
                results.len(),
                entries.len()
            ));
            let failure = SendFailure::Call(error);
            for pending in entries.into_iter().flat_map(|e| e.members) {
                retry_or_fail(&inner, pending, &failure, true, &mut retry);
            }
        }
        Err(error) => {
            let retryable = error.is_retryable();
            if !retryable {
                tracing::error!(stream = %inner.stream, error = %error, "PutRecords failed");
            }
            let failure = SendFailure::Call(error);
            for pending in entries.into_iter().flat_map(|e| e.members) {
                retry_or_fail(&inner, pending, &failure, retryable, &mut retry);
            }
        }
    }
    {
        let mut state = inner.lanes.lock().expect("lanes lock");
        let now = Instant::now();
        for &index in &lanes_in_call {
            let lane = &mut state.lanes[index];
            lane.busy = false;
            let failed = retry.iter().any(|p| p.lane == index);
            if !failed {
                lane.attempt = 0;
                lane.ready_at = None;
                continue;
            }
            // Back off harder only while a lane makes no progress at all (the
            // shard is throttled or the service is unavailable); a lane that
            // stored some records retries the rest after a short pause.
            if progressed.contains(&index) {
                lane.attempt = 0;
            }
            // Not past the earliest deadline of what waits, so it is given
            // up on time.
            let deadline = retry
                .iter()
                .filter(|p| p.lane == index)
                .map(|p| p.completion.deadline)
                .min()
                .unwrap_or(now);
            lane.ready_at = Some((now + inner.config.backoff.delay(lane.attempt)).min(deadline));
            lane.attempt = lane.attempt.saturating_add(1);
        }
        for pending in retry.into_iter().rev() {
            state.lanes[pending.lane].queue.push_front(pending);
        }
        state.in_flight -= 1;
    }
    inner.wake.notify_one();
}

fn retry_or_fail(
    inner: &Inner,
    pending: Pending,
    reason: &SendFailure,
    retryable: bool,
    retry: &mut Vec<Pending>,
) {
    if retryable && Instant::now() < pending.completion.deadline {
        retry.push(pending);
    } else if retryable {
        give_up(inner, pending, reason.clone());
    } else {
        let error = ProduceError::Rejected {
            stream: inner.stream.clone(),
            reason: reason.clone(),
        };
        pending.fail(error);
    }
}

fn give_up(inner: &Inner, pending: Pending, reason: SendFailure) {
    inner.given_up.inc();
    let error = ProduceError::GaveUp {
        stream: inner.stream.clone(),
        waited_ms: pending.completion.since.elapsed().as_millis() as u64,
        last: reason,
    };
    pending.fail(error);
}

/// Stored records, counted per completion: a call's records mostly share
/// one, which is then told once rather than record by record.
#[derive(Default)]
struct Stored {
    run: Option<(Arc<Completion>, usize)>,
}

impl Stored {
    fn add(&mut self, pending: Pending) {
        let Pending { completion, .. } = pending;
        match &mut self.run {
            Some((current, count)) if Arc::ptr_eq(current, &completion) => *count += 1,
            _ => {
                self.flush();
                self.run = Some((completion, 1));
            }
        }
    }

    fn flush(&mut self) {
        if let Some((completion, count)) = self.run.take() {
            completion.resolved(count);
        }
    }
}

#[cfg(test)]
mod tests;
