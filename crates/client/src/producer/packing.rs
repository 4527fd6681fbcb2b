//! Building PutRecords calls: each shard's lane of waiting records taken
//! in turn, at most one entry per partition key in a call, records packed
//! into KPL aggregates when the producer aggregates.

use super::*;
use sluice_core::hash::BuildPrehashed;

/// One PutRecords entry: a user record, or several of one lane packed into
/// a KPL aggregate that succeeds or fails as one.
pub(super) struct Entry {
    /// The aggregate, when the entry packs several records.
    pub(super) aggregate: Option<PutRecord>,
    /// Held inline when alone, the usual case without aggregation.
    pub(super) members: SmallVec<[Pending; 1]>,
}

impl Entry {
    /// What the entry puts: its aggregate, or its one record.
    pub(super) fn record(&self) -> &PutRecord {
        self.aggregate.as_ref().unwrap_or(&self.members[0].record)
    }
}

/// The entries of the next call, within the call's limits.
pub(super) struct CallBuilder {
    pub(super) entries: Vec<Entry>,
    /// Partition keys in the call: a key appears in one entry at most.
    pub(super) keys: HashSet<u64, BuildPrehashed>,
    pub(super) bytes: usize,
    pub(super) max_entries: usize,
    pub(super) max_bytes: usize,
}

impl CallBuilder {
    pub(super) fn full(&self) -> bool {
        self.entries.len() >= self.max_entries || self.bytes >= self.max_bytes
    }

    /// Whether one more entry of `size` bytes fits (the first always does).
    pub(super) fn fits(&self, size: usize) -> bool {
        self.entries.is_empty()
            || (self.entries.len() < self.max_entries && self.bytes + size <= self.max_bytes)
    }

    pub(super) fn push(&mut self, entry: Entry) {
        let record = entry.record();
        self.bytes += put_entry_bytes(&record.partition_key, record.data.len());
        for member in &entry.members {
            self.keys.insert(member.key);
        }
        self.entries.push(entry);
    }
}

/// User records being packed into one aggregate.
#[derive(Default)]
pub(super) struct Packing {
    pub(super) members: Vec<Pending>,
    pub(super) aggregator: Aggregator,
}

impl Packing {
    /// The entry's bytes in the call if `pending` joined it.
    pub(super) fn size_with(&self, pending: &Pending) -> usize {
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

    pub(super) fn add(&mut self, pending: Pending) {
        let record = &pending.record;
        self.aggregator.push(
            &record.partition_key,
            explicit_hash_key(record).as_deref(),
            record.data.clone(),
        );
        self.members.push(pending);
    }

    /// The entry: the record itself when alone, as the KPL sends it.
    pub(super) fn seal(&mut self) -> Option<Entry> {
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

pub(super) fn explicit_hash_key(record: &PutRecord) -> Option<String> {
    record.explicit_hash_key.map(|k| k.to_string())
}

/// Takes records of one lane into the call, in queue order, skipping any
/// record whose key is already in another entry of the call (it and its
/// key's later records wait for the next call). With `aggregate_max`, the
/// lane's records are packed into aggregates of at most that many bytes.
pub(super) fn take_from_lane(
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
pub(super) enum Next {
    Call(Vec<Entry>),
    WaitUntil(Instant),
    Wait,
    Done,
}

/// Chooses the next call: records of every lane that is neither in a call nor
/// backing off, one call for all of them while they fit (PutRecords takes
/// records of any shard), so a call carries as many records as are waiting.
pub(super) fn next_call(inner: &Inner, state: &mut Lanes, now: Instant) -> Next {
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
