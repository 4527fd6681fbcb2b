//! A stream's one writer thread: group commits of PutRecords calls (one
//! write and one sync each), segments sealed and started, and resharding,
//! all in log order. Beside it, the index thread writes the indexes of
//! the segments it sealed.

use super::*;

pub(super) fn start_writer(
    shared: Arc<Shared>,
    active: ActiveSegment,
    next_seq: u64,
    last_arrival: i64,
    mut active_entries: Vec<Entry>,
    segment_bytes: u64,
) -> LocalStream {
    active_entries.sort_unstable_by_key(|e| e.offset);
    let active_entries = active_entries.into_iter().collect();
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let (to_index, sealed) = std::sync::mpsc::sync_channel(SEALED_QUEUE);
    let index_shared = shared.clone();
    let indexer = std::thread::Builder::new()
        .name(format!("sluice-index-{}", shared.name))
        .spawn(move || write_indexes(&index_shared, sealed))
        .expect("spawn index writer");
    let open = shared.state.read().expect("state lock").meta.open_ranges();
    let writer = Writer {
        shared: shared.clone(),
        open,
        active,
        active_entries,
        next_seq,
        last_arrival,
        segment_bytes,
        buf: Vec::new(),
        to_index,
    };
    let writer = std::thread::Builder::new()
        .name(format!("sluice-log-{}", shared.name))
        .spawn(move || {
            writer.run(rx);
            if indexer.join().is_err() {
                tracing::error!("the index writer panicked");
            }
        })
        .expect("spawn log writer");
    LocalStream {
        shared,
        commands: tx,
        writer: Some(writer),
    }
}

/// Sealed segments waiting for their index before the writer waits too.
const SEALED_QUEUE: usize = 4;

/// A sealed segment and its entries in log order.
type Sealed = (u64, Entries);

/// The index thread: writes each sealed segment's index, until the writer
/// is gone. A segment stays (past retention too) until its index is written.
fn write_indexes(shared: &Shared, sealed: std::sync::mpsc::Receiver<Sealed>) {
    for (base, entries) in sealed {
        if let Err(e) = log::write_index(&shared.disk, &shared.dir, base, entries.iter()) {
            tracing::warn!(stream = %shared.name, segment = base, error = %e, "could not write a sealed segment's index; the next start scans the segment instead");
        }
        let mut state = shared.state.write().expect("state lock");
        state.indexing.remove(&base);
        state.evict(shared.resident_records);
    }
}

struct Writer {
    shared: Arc<Shared>,
    /// The open shards' hash ranges, in order: changed only here, by resharding.
    open: Vec<(u128, u128, u32)>,
    active: ActiveSegment,
    active_entries: Entries,
    next_seq: u64,
    last_arrival: i64,
    segment_bytes: u64,
    buf: Vec<u8>,
    to_index: std::sync::mpsc::SyncSender<Sealed>,
}

type PutReply = oneshot::Sender<Result<Placed, StreamError>>;

/// The records of one call, their hash keys, and where to answer.
type Put = (Vec<PutRecord>, Vec<u128>, PutReply);

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut group: Vec<Put> = Vec::new();
        let mut control: Option<Command> = None;
        while let Some(first) = control.take().or_else(|| rx.blocking_recv()) {
            match first {
                Command::Put {
                    records,
                    hashes,
                    reply,
                } => {
                    let mut bytes: usize = records.iter().map(|r| r.data.len()).sum();
                    group.push((records, hashes, reply));
                    while bytes < MAX_GROUP_BYTES {
                        match rx.try_recv() {
                            Ok(Command::Put {
                                records,
                                hashes,
                                reply,
                            }) => {
                                bytes += records.iter().map(|r| r.data.len()).sum::<usize>();
                                group.push((records, hashes, reply));
                            }
                            Ok(other) => {
                                control = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.commit(&mut group);
                }
                Command::Split { shard, at, reply } => {
                    let _ = reply.send(self.reshard(|meta, next| split(meta, shard, at, next)));
                }
                Command::Merge {
                    shard,
                    adjacent,
                    reply,
                } => {
                    let _ =
                        reply.send(self.reshard(|meta, next| merge(meta, shard, adjacent, next)));
                }
            }
        }
    }

    fn commit(&mut self, group: &mut Vec<Put>) {
        let arrival = now_ms().max(self.last_arrival);
        let open = &self.open;
        let mut seq = self.next_seq;
        let mut entries = Vec::new();
        let mut results = Vec::with_capacity(group.len());
        self.buf.clear();
        for (records, hashes, _) in group.iter() {
            let mut shards = Vec::with_capacity(records.len());
            let call_first = seq;
            for (record, &hash) in records.iter().zip(hashes) {
                let at = open.partition_point(|(start, _, _)| *start <= hash) - 1;
                let shard = open[at].2;
                let offset = self.active.len as usize + self.buf.len();
                let len = log::encode_frame(
                    &mut self.buf,
                    seq,
                    arrival,
                    shard,
                    &record.partition_key,
                    &record.data,
                );
                entries.push(Entry {
                    shard,
                    seq,
                    arrival_ms: arrival,
                    segment: self.active.base_seq,
                    offset: offset as u32,
                    len: len as u32,
                });
                shards.push(shard);
                seq += 1;
            }
            results.push(Placed {
                first_seq: call_first,
                shards,
            });
        }
        if let Err(e) = self.active.append_durably(&self.buf) {
            tracing::error!(stream = %self.shared.name, error = %e, "append failed; nothing acknowledged");
            for (_, _, reply) in group.drain(..) {
                let _ = reply.send(Err(storage(format!("append failed: {e}"))));
            }
            return;
        }
        self.next_seq = seq;
        self.last_arrival = arrival;
        {
            let mut state = self.shared.state.write().expect("state lock");
            for entry in &entries {
                state.shards[entry.shard as usize].push(*entry);
            }
            state.next_seq = seq;
            if let Some(info) = state.segments.get_mut(&self.active.base_seq) {
                info.max_arrival_ms = info.max_arrival_ms.max(arrival);
            }
        }
        for entry in entries {
            self.active_entries.push(entry);
        }
        for ((_, _, reply), placed) in group.drain(..).zip(results) {
            let _ = reply.send(Ok(placed));
        }
        if self.active.len >= self.segment_bytes {
            if let Err(e) = self.roll() {
                tracing::error!(stream = %self.shared.name, error = %e, "could not start a new segment; staying on the current one");
            }
        }
    }

    /// Seals the active segment, starts a new one, and gives the sealed
    /// segment's entries to the index thread.
    fn roll(&mut self) -> std::io::Result<()> {
        let dir = self.shared.dir.clone();
        let disk = &self.shared.disk;
        self.active.seal()?;
        let next = ActiveSegment::create(disk, &dir, self.next_seq)?;
        let file = File::open(log::segment_path(&dir, self.next_seq))?;
        let sealed = std::mem::replace(&mut self.active, next).base_seq;
        let mut state = self.shared.state.write().expect("state lock");
        state.segments.insert(
            self.next_seq,
            SegmentInfo {
                file: Arc::new(file),
                max_arrival_ms: i64::MIN,
                evicted: None,
            },
        );
        state.active_base = self.next_seq;
        state.indexing.insert(sealed);
        drop(state);
        let entries = std::mem::take(&mut self.active_entries);
        if self.to_index.send((sealed, entries)).is_err() {
            tracing::error!(stream = %self.shared.name, segment = sealed, "the index writer is gone; the next start scans the segment");
            let mut state = self.shared.state.write().expect("state lock");
            state.indexing.remove(&sealed);
        }
        Ok(())
    }

    fn reshard(
        &mut self,
        change: impl FnOnce(&mut StreamMeta, u64) -> Result<(), StreamError>,
    ) -> Result<(), StreamError> {
        let mut meta = self.shared.state.read().expect("state lock").meta.clone();
        change(&mut meta, self.next_seq)?;
        write_meta(&self.shared.disk, &self.shared.dir, &meta)?;
        let mut state = self.shared.state.write().expect("state lock");
        while state.shards.len() < meta.shards.len() {
            state.shards.push(Entries::default());
        }
        self.open = meta.open_ranges();
        state.meta = meta;
        Ok(())
    }
}

fn open_shard(meta: &StreamMeta, number: u32) -> Result<&ShardMeta, StreamError> {
    let shard = meta
        .shards
        .get(number as usize)
        .ok_or_else(|| StreamError::ShardNotFound {
            stream: meta.name.clone(),
            shard: shard_id(number),
        })?;
    if shard.ending_seq.is_some() {
        return Err(StreamError::InvalidArgument(format!(
            "{} is closed",
            shard_id(number)
        )));
    }
    Ok(shard)
}

fn child(
    meta: &StreamMeta,
    parent: u32,
    adjacent: Option<u32>,
    range: (u128, u128),
    next_seq: u64,
) -> ShardMeta {
    ShardMeta {
        number: meta.shards.len() as u32,
        parent: Some(parent),
        adjacent_parent: adjacent,
        start_hash: range.0.to_string(),
        end_hash: range.1.to_string(),
        starting_seq: next_seq,
        ending_seq: None,
    }
}

fn close(meta: &mut StreamMeta, number: u32, next_seq: u64) {
    let shard = &mut meta.shards[number as usize];
    shard.ending_seq = Some(next_seq.saturating_sub(1).max(shard.starting_seq));
}

fn split(meta: &mut StreamMeta, number: u32, at: u128, next_seq: u64) -> Result<(), StreamError> {
    let (start, end) = open_shard(meta, number)?.range();
    if at <= start || at > end {
        return Err(StreamError::InvalidArgument(format!(
            "new starting hash key {at} is not inside ({start}, {end}] of {}",
            shard_id(number)
        )));
    }
    let low = child(meta, number, None, (start, at - 1), next_seq);
    meta.shards.push(low);
    let high = child(meta, number, None, (at, end), next_seq);
    meta.shards.push(high);
    close(meta, number, next_seq);
    Ok(())
}

fn merge(
    meta: &mut StreamMeta,
    number: u32,
    adjacent: u32,
    next_seq: u64,
) -> Result<(), StreamError> {
    let a = open_shard(meta, number)?.range();
    let b = open_shard(meta, adjacent)?.range();
    if number == adjacent || !(a.1.checked_add(1) == Some(b.0) || b.1.checked_add(1) == Some(a.0)) {
        return Err(StreamError::InvalidArgument(format!(
            "{} and {} are not adjacent",
            shard_id(number),
            shard_id(adjacent)
        )));
    }
    let merged = child(
        meta,
        number,
        Some(adjacent),
        (a.0.min(b.0), a.1.max(b.1)),
        next_seq,
    );
    meta.shards.push(merged);
    close(meta, number, next_seq);
    close(meta, adjacent, next_seq);
    Ok(())
}
