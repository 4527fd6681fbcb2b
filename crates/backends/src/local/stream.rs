//! The embedded stream backend: Kinesis semantics over the segment log.
//!
//! Each stream has one writer thread. It takes every PutRecords call that
//! is waiting, assigns shards (MD5 of the partition key over the hash-key
//! ranges) and sequence numbers, appends all frames with one write and one
//! fdatasync (group commit), and only then indexes and acknowledges them.
//! Splits and merges go through the same writer, so a parent's ending
//! sequence number is final once the shard is closed. Readers look records
//! up in an in-memory index per shard and read frames with `pread`,
//! checking each checksum.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use sluice_core::hash::even_ranges;
use sluice_core::limits::{MAX_GET_BYTES, MAX_GET_RECORDS};
use sluice_core::rules::check_stream_name;
use sluice_core::stream::{
    validate_put, GetRecordsOutput, PutRecord, PutResult, Record, Shard, StartPosition,
    StreamError, StreamSummary,
};
use sluice_core::{SequenceNumber, StreamBackend};

use super::log::{self, ActiveSegment, Disk, Entry};

/// Most shards a local stream may have.
pub const MAX_SHARDS: u32 = 1024;
/// Most bytes of records the writer commits in one group.
const MAX_GROUP_BYTES: usize = 16 * 1024 * 1024;
/// Waiting commands per stream before callers wait for room.
const COMMAND_QUEUE: usize = 4096;

/// Settings of the embedded stream store.
#[derive(Clone, Debug)]
pub struct LocalStreamOptions {
    /// How long records are kept (default 24 hours, as Kinesis).
    pub retention_hours: u32,
    /// Size at which a segment is sealed and a new one started.
    pub segment_bytes: u64,
    /// Where the logs' syncs go (a test can witness them).
    pub disk: Disk,
}

impl Default for LocalStreamOptions {
    fn default() -> Self {
        Self {
            retention_hours: 24,
            segment_bytes: 128 * 1024 * 1024,
            disk: Disk::default(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ShardMeta {
    number: u32,
    parent: Option<u32>,
    adjacent_parent: Option<u32>,
    /// Decimal strings: JSON has no 128-bit integers.
    start_hash: String,
    end_hash: String,
    starting_seq: u64,
    ending_seq: Option<u64>,
}

impl ShardMeta {
    fn range(&self) -> (u128, u128) {
        (
            self.start_hash.parse().expect("validated at load"),
            self.end_hash.parse().expect("validated at load"),
        )
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct StreamMeta {
    name: String,
    created_ms: i64,
    retention_hours: u32,
    shards: Vec<ShardMeta>,
}

impl StreamMeta {
    fn validate(&self) -> Result<(), String> {
        for (i, shard) in self.shards.iter().enumerate() {
            if shard.number as usize != i {
                return Err(format!("shard {i} is numbered {}", shard.number));
            }
            let start: u128 = shard.start_hash.parse().map_err(|_| "bad start hash")?;
            let end: u128 = shard.end_hash.parse().map_err(|_| "bad end hash")?;
            if start > end {
                return Err(format!("shard {i} has an empty hash range"));
            }
        }
        Ok(())
    }

    fn open_ranges(&self) -> Vec<(u128, u128, u32)> {
        let mut open: Vec<_> = self
            .shards
            .iter()
            .filter(|s| s.ending_seq.is_none())
            .map(|s| {
                let (start, end) = s.range();
                (start, end, s.number)
            })
            .collect();
        open.sort_unstable();
        open
    }
}

fn shard_id(number: u32) -> String {
    format!("shardId-{number:012}")
}

fn parse_shard_id(id: &str) -> Option<u32> {
    id.strip_prefix("shardId-")?.parse().ok()
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn storage(e: impl std::fmt::Display) -> StreamError {
    StreamError::Storage(e.to_string())
}

struct SegmentInfo {
    file: Arc<File>,
    max_arrival_ms: i64,
}

struct State {
    meta: StreamMeta,
    shards: Vec<VecDeque<Entry>>,
    segments: BTreeMap<u64, SegmentInfo>,
    active_base: u64,
    next_seq: u64,
}

struct Shared {
    name: String,
    disk: Disk,
    dir: PathBuf,
    state: RwLock<State>,
}

enum Command {
    Put {
        records: Vec<PutRecord>,
        reply: oneshot::Sender<Result<Vec<PutResult>, StreamError>>,
    },
    Split {
        shard: u32,
        at: u128,
        reply: oneshot::Sender<Result<(), StreamError>>,
    },
    Merge {
        shard: u32,
        adjacent: u32,
        reply: oneshot::Sender<Result<(), StreamError>>,
    },
}

struct LocalStream {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
}

/// Embedded, durable streams under one directory.
pub struct LocalStreams {
    root: PathBuf,
    options: LocalStreamOptions,
    streams: RwLock<HashMap<String, Arc<LocalStream>>>,
}

impl LocalStreams {
    /// Opens (recovering) every stream under `root`, creating `root` if needed.
    pub fn open(
        root: impl Into<PathBuf>,
        options: LocalStreamOptions,
    ) -> Result<Self, StreamError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(storage)?;
        let mut streams = HashMap::new();
        for entry in fs::read_dir(&root).map_err(storage)? {
            let dir = entry.map_err(storage)?.path();
            if !dir.join("meta.json").exists() {
                // A stream whose creation did not finish: it was never acknowledged.
                tracing::warn!(dir = %dir.display(), "removing unfinished stream directory");
                fs::remove_dir_all(&dir).map_err(storage)?;
                continue;
            }
            let stream = recover(&dir, &options)?;
            streams.insert(stream.shared.name.clone(), Arc::new(stream));
        }
        Ok(Self {
            root,
            options,
            streams: RwLock::new(streams),
        })
    }

    fn stream(&self, name: &str) -> Result<Arc<LocalStream>, StreamError> {
        self.streams
            .read()
            .expect("streams lock")
            .get(name)
            .cloned()
            .ok_or_else(|| StreamError::StreamNotFound(name.to_owned()))
    }

    /// Sends a command to a stream's writer and waits for its answer.
    async fn command<T>(
        &self,
        name: &str,
        make: impl FnOnce(oneshot::Sender<Result<T, StreamError>>) -> Command,
    ) -> Result<T, StreamError> {
        let stream = self.stream(name)?;
        let gone = || StreamError::StreamNotFound(name.to_owned());
        let (reply, answer) = oneshot::channel();
        stream
            .commands
            .send(make(reply))
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// Deletes sealed segments whose records are all past retention. Returns
    /// how many segments went.
    pub fn enforce_retention(&self) -> Result<usize, StreamError> {
        self.enforce_retention_at(now_ms())
    }

    /// [`Self::enforce_retention`] as if the time were `now_ms`.
    pub fn enforce_retention_at(&self, now_ms: i64) -> Result<usize, StreamError> {
        let streams: Vec<_> = self
            .streams
            .read()
            .expect("streams lock")
            .values()
            .cloned()
            .collect();
        let mut removed = 0;
        for stream in streams {
            removed += stream.shared.trim(now_ms)?;
        }
        Ok(removed)
    }
}

impl Shared {
    fn trim(&self, now: i64) -> Result<usize, StreamError> {
        let doomed: Vec<u64> = {
            let mut state = self.state.write().expect("state lock");
            let cutoff = now - i64::from(state.meta.retention_hours) * 3_600_000;
            let doomed: Vec<u64> = state
                .segments
                .iter()
                .take_while(|(base, info)| {
                    **base != state.active_base && info.max_arrival_ms < cutoff
                })
                .map(|(base, _)| *base)
                .collect();
            if let Some(&last) = doomed.last() {
                for shard in &mut state.shards {
                    while shard.front().is_some_and(|e| e.segment <= last) {
                        shard.pop_front();
                    }
                }
                for base in &doomed {
                    state.segments.remove(base);
                }
            }
            doomed
        };
        for base in &doomed {
            fs::remove_file(log::index_path(&self.dir, *base)).ok();
            fs::remove_file(log::segment_path(&self.dir, *base)).map_err(storage)?;
        }
        if !doomed.is_empty() {
            self.disk.sync_dir(&self.dir).map_err(storage)?;
            tracing::info!(stream = %self.name, segments = doomed.len(), "removed segments past retention");
        }
        Ok(doomed.len())
    }
}

fn write_meta(disk: &Disk, dir: &Path, meta: &StreamMeta) -> Result<(), StreamError> {
    let bytes = serde_json::to_vec_pretty(meta).map_err(storage)?;
    disk.write_atomically(dir, &dir.join("meta.json"), &bytes)
        .map_err(storage)
}

fn recover(dir: &Path, options: &LocalStreamOptions) -> Result<LocalStream, StreamError> {
    let meta_bytes = fs::read(dir.join("meta.json")).map_err(storage)?;
    let meta: StreamMeta = serde_json::from_slice(&meta_bytes)
        .map_err(|e| storage(format!("{}: {e}", dir.join("meta.json").display())))?;
    meta.validate()
        .map_err(|e| storage(format!("{}: {e}", dir.join("meta.json").display())))?;
    let bases = log::list_segments(dir).map_err(storage)?;
    let mut shards: Vec<VecDeque<Entry>> = vec![VecDeque::new(); meta.shards.len()];
    let mut segments = BTreeMap::new();
    let mut next_seq = meta
        .shards
        .iter()
        .map(|s| s.ending_seq.map_or(s.starting_seq, |e| e + 1))
        .max()
        .unwrap_or(0);
    let mut active = None;
    for (i, &base) in bases.iter().enumerate() {
        let last = i + 1 == bases.len();
        let path = log::segment_path(dir, base);
        let entries = match (last, log::read_index(dir, base)) {
            (false, Some(entries)) => entries,
            _ => {
                let bytes = fs::read(&path).map_err(storage)?;
                let (entries, valid, error) = log::scan_segment(&bytes, base);
                match (error, last) {
                    (None, _) => {}
                    (Some(e), true) => tracing::warn!(
                        segment = %path.display(), valid_bytes = valid, cut_bytes = bytes.len() - valid,
                        reason = ?e, "cut a torn tail from the last segment"
                    ),
                    (Some(e), false) => {
                        return Err(storage(format!(
                            "{}: damaged at byte {valid} ({e:?}); it holds acknowledged records, refusing to serve it",
                            path.display()
                        )))
                    }
                }
                if last {
                    active = Some(
                        ActiveSegment::reopen(&options.disk, dir, base, valid as u64)
                            .map_err(storage)?,
                    );
                }
                entries
            }
        };
        let mut max_arrival_ms = i64::MIN;
        for entry in entries {
            let Some(shard) = shards.get_mut(entry.shard as usize) else {
                return Err(storage(format!(
                    "{}: record for unknown shard {}",
                    path.display(),
                    entry.shard
                )));
            };
            next_seq = next_seq.max(entry.seq + 1);
            max_arrival_ms = max_arrival_ms.max(entry.arrival_ms);
            shard.push_back(entry);
        }
        next_seq = next_seq.max(base);
        let file = File::open(&path).map_err(storage)?;
        segments.insert(
            base,
            SegmentInfo {
                file: Arc::new(file),
                max_arrival_ms,
            },
        );
    }
    let active = match active {
        Some(active) => active,
        None => {
            let active = ActiveSegment::create(&options.disk, dir, next_seq).map_err(storage)?;
            let file = File::open(log::segment_path(dir, next_seq)).map_err(storage)?;
            segments.insert(
                next_seq,
                SegmentInfo {
                    file: Arc::new(file),
                    max_arrival_ms: i64::MIN,
                },
            );
            active
        }
    };
    let last_arrival = shards
        .iter()
        .filter_map(|s| s.back())
        .map(|e| e.arrival_ms)
        .max()
        .unwrap_or(0);
    let active_entries: Vec<Entry> = shards
        .iter()
        .flat_map(|s| s.iter().filter(|e| e.segment == active.base_seq).copied())
        .collect();
    let shared = Arc::new(Shared {
        name: meta.name.clone(),
        disk: options.disk.clone(),
        dir: dir.to_owned(),
        state: RwLock::new(State {
            meta,
            shards,
            segments,
            active_base: active.base_seq,
            next_seq,
        }),
    });
    Ok(start_writer(
        shared,
        active,
        next_seq,
        last_arrival,
        active_entries,
        options.segment_bytes,
    ))
}

fn start_writer(
    shared: Arc<Shared>,
    active: ActiveSegment,
    next_seq: u64,
    last_arrival: i64,
    mut active_entries: Vec<Entry>,
    segment_bytes: u64,
) -> LocalStream {
    active_entries.sort_unstable_by_key(|e| e.offset);
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let writer = Writer {
        shared: shared.clone(),
        active,
        active_entries,
        next_seq,
        last_arrival,
        segment_bytes,
        buf: Vec::new(),
    };
    std::thread::Builder::new()
        .name(format!("sluice-log-{}", shared.name))
        .spawn(move || writer.run(rx))
        .expect("spawn log writer");
    LocalStream {
        shared,
        commands: tx,
    }
}

struct Writer {
    shared: Arc<Shared>,
    active: ActiveSegment,
    active_entries: Vec<Entry>,
    next_seq: u64,
    last_arrival: i64,
    segment_bytes: u64,
    buf: Vec<u8>,
}

type PutReply = oneshot::Sender<Result<Vec<PutResult>, StreamError>>;

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut group: Vec<(Vec<PutRecord>, PutReply)> = Vec::new();
        let mut control: Option<Command> = None;
        while let Some(first) = control.take().or_else(|| rx.blocking_recv()) {
            match first {
                Command::Put { records, reply } => {
                    let mut bytes: usize = records.iter().map(|r| r.data.len()).sum();
                    group.push((records, reply));
                    while bytes < MAX_GROUP_BYTES {
                        match rx.try_recv() {
                            Ok(Command::Put { records, reply }) => {
                                bytes += records.iter().map(|r| r.data.len()).sum::<usize>();
                                group.push((records, reply));
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

    fn commit(&mut self, group: &mut Vec<(Vec<PutRecord>, PutReply)>) {
        let arrival = now_ms().max(self.last_arrival);
        let open = self
            .shared
            .state
            .read()
            .expect("state lock")
            .meta
            .open_ranges();
        let first_seq = self.next_seq;
        let mut seq = first_seq;
        let mut entries = Vec::new();
        let mut results = Vec::with_capacity(group.len());
        self.buf.clear();
        for (records, _) in group.iter() {
            let mut answers = Vec::with_capacity(records.len());
            for record in records {
                let hash = record.hash_key();
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
                answers.push(PutResult::Ok {
                    shard_id: shard_id(shard),
                    sequence_number: SequenceNumber::from_u64(seq),
                });
                seq += 1;
            }
            results.push(answers);
        }
        if let Err(e) = self.active.append_durably(&self.buf) {
            tracing::error!(stream = %self.shared.name, error = %e, "append failed; nothing acknowledged");
            for (_, reply) in group.drain(..) {
                let _ = reply.send(Err(storage(format!("append failed: {e}"))));
            }
            return;
        }
        self.next_seq = seq;
        self.last_arrival = arrival;
        {
            let mut state = self.shared.state.write().expect("state lock");
            for entry in &entries {
                state.shards[entry.shard as usize].push_back(*entry);
            }
            state.next_seq = seq;
            if let Some(info) = state.segments.get_mut(&self.active.base_seq) {
                info.max_arrival_ms = info.max_arrival_ms.max(arrival);
            }
        }
        self.active_entries.extend_from_slice(&entries);
        for ((_, reply), answers) in group.drain(..).zip(results) {
            let _ = reply.send(Ok(answers));
        }
        if self.active.len >= self.segment_bytes {
            if let Err(e) = self.roll() {
                tracing::error!(stream = %self.shared.name, error = %e, "could not start a new segment; staying on the current one");
            }
        }
    }

    /// Seals the active segment (its index written first) and starts a new one.
    fn roll(&mut self) -> std::io::Result<()> {
        let dir = self.shared.dir.clone();
        let disk = &self.shared.disk;
        log::write_index(disk, &dir, self.active.base_seq, &self.active_entries)?;
        let next = ActiveSegment::create(disk, &dir, self.next_seq)?;
        let file = File::open(log::segment_path(&dir, self.next_seq))?;
        let mut state = self.shared.state.write().expect("state lock");
        state.segments.insert(
            self.next_seq,
            SegmentInfo {
                file: Arc::new(file),
                max_arrival_ms: i64::MIN,
            },
        );
        state.active_base = self.next_seq;
        drop(state);
        self.active = next;
        self.active_entries.clear();
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
            state.shards.push(VecDeque::new());
        }
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

struct IteratorToken {
    stream: String,
    created_ms: i64,
    shard: u32,
    position: u64,
}

impl IteratorToken {
    fn encode(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.stream, self.created_ms, self.shard, self.position
        )
    }

    fn decode(text: &str) -> Option<Self> {
        let mut parts = text.split(':');
        let token = Self {
            stream: parts.next()?.to_owned(),
            created_ms: parts.next()?.parse().ok()?,
            shard: parts.next()?.parse().ok()?,
            position: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(token)
    }
}

impl LocalStream {
    fn read(&self, token: &IteratorToken, limit: usize) -> Result<GetRecordsOutput, StreamError> {
        let limit = limit.clamp(1, MAX_GET_RECORDS);
        let (picked, files, closed_children, remaining_from) = {
            let state = self.shared.state.read().expect("state lock");
            let shard_meta = state.meta.shards.get(token.shard as usize).ok_or_else(|| {
                StreamError::ExpiredIterator("iterator names an unknown shard".into())
            })?;
            let index = &state.shards[token.shard as usize];
            let start = index.partition_point(|e| e.seq < token.position);
            let mut bytes = 0usize;
            let mut picked = Vec::new();
            for entry in index.range(start..) {
                if picked.len() == limit
                    || (bytes + entry.len as usize > MAX_GET_BYTES && !picked.is_empty())
                {
                    break;
                }
                bytes += entry.len as usize;
                picked.push(*entry);
            }
            let files: Vec<Arc<File>> = picked
                .iter()
                .map(|e| state.segments.get(&e.segment).map(|s| s.file.clone()))
                .collect::<Option<_>>()
                .ok_or_else(|| storage("index points at a removed segment"))?;
            let next = start + picked.len();
            let remaining_from = index.get(next).map(|e| e.arrival_ms);
            let children = if shard_meta.ending_seq.is_some() && remaining_from.is_none() {
                Some(
                    state
                        .meta
                        .shards
                        .iter()
                        .filter(|s| {
                            s.parent == Some(token.shard) || s.adjacent_parent == Some(token.shard)
                        })
                        .map(|s| shard_id(s.number))
                        .collect::<Vec<_>>(),
                )
            } else {
                None
            };
            (picked, files, children, remaining_from)
        };
        let mut records = Vec::with_capacity(picked.len());
        for (entry, file) in picked.iter().zip(&files) {
            let bytes =
                log::read_at(file, u64::from(entry.offset), entry.len as usize).map_err(storage)?;
            let (body, _) = log::decode_frame(&bytes)
                .map_err(|e| storage(format!("record {} is damaged: {e:?}", entry.seq)))?;
            if body.seq != entry.seq {
                return Err(storage(format!(
                    "index and log disagree at record {}",
                    entry.seq
                )));
            }
            records.push(Record {
                sequence_number: SequenceNumber::from_u64(body.seq),
                partition_key: String::from_utf8_lossy(body.key).into_owned().into(),
                data: Bytes::copy_from_slice(body.data),
                arrival_ms: body.arrival_ms,
            });
        }
        let position = picked.last().map_or(token.position, |e| e.seq + 1);
        let millis_behind_latest = remaining_from.map_or(0, |at| (now_ms() - at).max(0) as u64);
        Ok(GetRecordsOutput {
            records,
            next_iterator: closed_children.is_none().then(|| {
                IteratorToken {
                    position,
                    stream: token.stream.clone(),
                    ..*token
                }
                .encode()
            }),
            millis_behind_latest: Some(millis_behind_latest),
            child_shards: closed_children.unwrap_or_default(),
        })
    }
}

#[async_trait]
impl StreamBackend for LocalStreams {
    async fn create_stream(&self, name: &str, shards: u32) -> Result<(), StreamError> {
        check_stream_name(name).map_err(StreamError::InvalidArgument)?;
        if shards == 0 || shards > MAX_SHARDS {
            return Err(StreamError::InvalidArgument(format!(
                "a stream has 1 to {MAX_SHARDS} shards, not {shards}"
            )));
        }
        let mut streams = self.streams.write().expect("streams lock");
        if streams.contains_key(name) {
            return Err(StreamError::AlreadyExists(name.to_owned()));
        }
        let dir = self.root.join(name);
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(storage)?;
        }
        fs::create_dir_all(&dir).map_err(storage)?;
        let meta = StreamMeta {
            name: name.to_owned(),
            created_ms: now_ms(),
            retention_hours: self.options.retention_hours,
            shards: even_ranges(shards)
                .into_iter()
                .enumerate()
                .map(|(i, (start, end))| ShardMeta {
                    number: i as u32,
                    parent: None,
                    adjacent_parent: None,
                    start_hash: start.to_string(),
                    end_hash: end.to_string(),
                    starting_seq: 0,
                    ending_seq: None,
                })
                .collect(),
        };
        let disk = &self.options.disk;
        let segment = ActiveSegment::create(disk, &dir, 0).map_err(storage)?;
        write_meta(disk, &dir, &meta)?;
        disk.sync_dir(&self.root).map_err(storage)?;
        let file = File::open(log::segment_path(&dir, 0)).map_err(storage)?;
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            disk: self.options.disk.clone(),
            dir,
            state: RwLock::new(State {
                shards: vec![VecDeque::new(); meta.shards.len()],
                meta,
                segments: BTreeMap::from([(
                    0,
                    SegmentInfo {
                        file: Arc::new(file),
                        max_arrival_ms: i64::MIN,
                    },
                )]),
                active_base: 0,
                next_seq: 0,
            }),
        });
        let stream = start_writer(
            shared,
            segment,
            0,
            0,
            Vec::new(),
            self.options.segment_bytes,
        );
        streams.insert(name.to_owned(), Arc::new(stream));
        Ok(())
    }

    async fn delete_stream(&self, name: &str) -> Result<(), StreamError> {
        let stream = self
            .streams
            .write()
            .expect("streams lock")
            .remove(name)
            .ok_or_else(|| StreamError::StreamNotFound(name.to_owned()))?;
        fs::remove_dir_all(&stream.shared.dir).map_err(storage)?;
        self.options.disk.sync_dir(&self.root).map_err(storage)
    }

    async fn list_streams(&self) -> Result<Vec<String>, StreamError> {
        let mut names: Vec<String> = self
            .streams
            .read()
            .expect("streams lock")
            .keys()
            .cloned()
            .collect();
        names.sort();
        Ok(names)
    }

    async fn describe_stream(&self, name: &str) -> Result<StreamSummary, StreamError> {
        let stream = self.stream(name)?;
        let state = stream.shared.state.read().expect("state lock");
        Ok(StreamSummary {
            name: name.to_owned(),
            open_shards: state
                .meta
                .shards
                .iter()
                .filter(|s| s.ending_seq.is_none())
                .count(),
            retention_hours: state.meta.retention_hours,
            record_count: Some(state.shards.iter().map(|s| s.len() as u64).sum()),
        })
    }

    async fn list_shards(&self, name: &str) -> Result<Vec<Shard>, StreamError> {
        let stream = self.stream(name)?;
        let state = stream.shared.state.read().expect("state lock");
        Ok(state
            .meta
            .shards
            .iter()
            .map(|s| Shard {
                shard_id: shard_id(s.number),
                parent_shard_id: s.parent.map(shard_id),
                adjacent_parent_shard_id: s.adjacent_parent.map(shard_id),
                hash_key_range: s.range(),
                starting_sequence_number: SequenceNumber::from_u64(s.starting_seq),
                ending_sequence_number: s.ending_seq.map(SequenceNumber::from_u64),
            })
            .collect())
    }

    async fn put_records(
        &self,
        name: &str,
        records: Vec<PutRecord>,
    ) -> Result<Vec<PutResult>, StreamError> {
        validate_put(&records)?;
        self.command(name, |reply| Command::Put { records, reply })
            .await
    }

    async fn get_shard_iterator(
        &self,
        name: &str,
        shard_id: &str,
        start: StartPosition,
    ) -> Result<String, StreamError> {
        let stream = self.stream(name)?;
        let not_found = || StreamError::ShardNotFound {
            stream: name.to_owned(),
            shard: shard_id.to_owned(),
        };
        let number = parse_shard_id(shard_id).ok_or_else(not_found)?;
        let state = stream.shared.state.read().expect("state lock");
        if number as usize >= state.meta.shards.len() {
            return Err(not_found());
        }
        let index = &state.shards[number as usize];
        let sequence = |seq: &SequenceNumber| {
            seq.to_u64().filter(|s| *s < state.next_seq).ok_or_else(|| {
                StreamError::InvalidArgument(format!("sequence number {seq} is not in {shard_id}"))
            })
        };
        let position = match start {
            StartPosition::TrimHorizon => 0,
            StartPosition::Latest => state.next_seq,
            StartPosition::AtSequence(seq) => sequence(&seq)?,
            StartPosition::AfterSequence(seq) => sequence(&seq)? + 1,
            StartPosition::AtTimestamp(ms) => {
                let at = index.partition_point(|e| e.arrival_ms < ms);
                index.get(at).map_or(state.next_seq, |e| e.seq)
            }
        };
        Ok(IteratorToken {
            stream: name.to_owned(),
            created_ms: state.meta.created_ms,
            shard: number,
            position,
        }
        .encode())
    }

    async fn get_records(
        &self,
        iterator: &str,
        limit: usize,
    ) -> Result<GetRecordsOutput, StreamError> {
        let token = IteratorToken::decode(iterator)
            .ok_or_else(|| StreamError::InvalidArgument("malformed shard iterator".into()))?;
        let stream = self.stream(&token.stream)?;
        if stream
            .shared
            .state
            .read()
            .expect("state lock")
            .meta
            .created_ms
            != token.created_ms
        {
            return Err(StreamError::ExpiredIterator(
                "the stream was deleted and created again".into(),
            ));
        }
        tokio::task::spawn_blocking(move || stream.read(&token, limit))
            .await
            .map_err(|e| storage(format!("read task failed: {e}")))?
    }

    async fn split_shard(
        &self,
        name: &str,
        shard_id: &str,
        new_starting_hash_key: u128,
    ) -> Result<(), StreamError> {
        let shard = parse_shard_id(shard_id).ok_or_else(|| StreamError::ShardNotFound {
            stream: name.to_owned(),
            shard: shard_id.to_owned(),
        })?;
        self.command(name, |reply| Command::Split {
            shard,
            at: new_starting_hash_key,
            reply,
        })
        .await
    }

    async fn merge_shards(
        &self,
        name: &str,
        shard_id: &str,
        adjacent_shard_id: &str,
    ) -> Result<(), StreamError> {
        let parse = |id: &str| {
            parse_shard_id(id).ok_or_else(|| StreamError::ShardNotFound {
                stream: name.to_owned(),
                shard: id.to_owned(),
            })
        };
        let (shard, adjacent) = (parse(shard_id)?, parse(adjacent_shard_id)?);
        self.command(name, |reply| Command::Merge {
            shard,
            adjacent,
            reply,
        })
        .await
    }
}
