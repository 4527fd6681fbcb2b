//! The embedded stream backend: Kinesis semantics over the segment log.
//!
//! Each stream has one writer thread. It takes every PutRecords call that
//! is waiting, assigns shards (MD5 of the partition key over the hash-key
//! ranges) and sequence numbers, appends all frames with one write and one
//! fdatasync (group commit), and only then indexes and acknowledges them.
//! Splits and merges go through the same writer, so a parent's ending
//! sequence number is final once the shard is closed. Readers look records
//! up in an in-memory index per shard (the newest records'; older ones in
//! the segments' index files, see `resident`) and read frames with `pread`,
//! checking each checksum.
//!
//! A sealed segment's index (which lets the next start skip scanning it)
//! is written by a second thread: writing and syncing megabytes of index
//! on the writer thread held every waiting call for tens of milliseconds.
//! Until it is written, recovery scans the sealed segment instead.
//!
//! Here: the stream's shape (meta), the shared state and the backend;
//! `recovery` opens a stream after a stop or a crash, `writer` is the
//! writer thread and the index thread, `read` serves shard iterators and
//! GetRecords.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
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

mod entries;
mod read;
mod recovery;
mod resident;
mod writer;

use entries::Entries;
use read::IteratorToken;
use recovery::recover;
use resident::Loaded;
use writer::start_writer;

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
    /// Records per stream whose index entries (40 bytes each) are kept in
    /// memory; the oldest sealed segments' entries beyond it are read back
    /// from their index files when a reader gets there (default 1,000,000).
    pub resident_records: usize,
}

impl Default for LocalStreamOptions {
    fn default() -> Self {
        Self {
            retention_hours: 24,
            segment_bytes: 128 * 1024 * 1024,
            disk: Disk::default(),
            resident_records: 1_000_000,
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

/// `shardId-` and the number in twelve digits, as Kinesis names shards.
/// Written by hand: PutRecords answers with one per record, and the
/// formatter's padding cost several times what the rest of the answer did.
fn shard_id(number: u32) -> String {
    let mut id = *b"shardId-000000000000";
    let mut rest = number;
    // A u32 has at most ten digits.
    for digit in id.iter_mut().rev() {
        if rest == 0 {
            break;
        }
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    String::from_utf8(id.to_vec()).expect("ASCII")
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
    /// The records it holds, once their entries left memory (see
    /// `resident`); `None` while they are in memory.
    evicted: Option<u64>,
}

struct State {
    meta: StreamMeta,
    shards: Vec<Entries>,
    segments: BTreeMap<u64, SegmentInfo>,
    active_base: u64,
    /// Sealed segments whose index is being written: kept until it is.
    indexing: BTreeSet<u64>,
    /// Records from this sequence number on have their entries in `shards`.
    resident_from: u64,
    next_seq: u64,
}

struct Shared {
    name: String,
    disk: Disk,
    dir: PathBuf,
    state: RwLock<State>,
    /// Most entries kept in memory (see `resident`).
    resident_records: usize,
    loaded: Loaded,
}

/// Where the writer put the records of one call: consecutive sequence
/// numbers from `first_seq`, each in its shard.
struct Placed {
    first_seq: u64,
    shards: Vec<u32>,
}

enum Command {
    Put {
        records: Vec<PutRecord>,
        /// Each record's hash key, worked out by the caller: the writer
        /// thread does only what must be done in log order.
        hashes: Vec<u128>,
        reply: oneshot::Sender<Result<Placed, StreamError>>,
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
    /// Joined when the stream is dropped: it ends once no command can come,
    /// after the index thread wrote what it was given.
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LocalStream {
    fn drop(&mut self) {
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.commands, closed));
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::error!(stream = %self.shared.name, "the log writer panicked");
            }
        }
    }
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
                    **base != state.active_base
                        && !state.indexing.contains(base)
                        && info.max_arrival_ms < cutoff
                })
                .map(|(base, _)| *base)
                .collect();
            if let Some(&last) = doomed.last() {
                for shard in &mut state.shards {
                    shard.pop_front_while(|e| e.segment <= last);
                }
                for base in &doomed {
                    state.segments.remove(base);
                }
            }
            doomed
        };
        for base in &doomed {
            self.loaded.forget(*base);
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
            resident_records: self.options.resident_records,
            loaded: Loaded::default(),
            state: RwLock::new(State {
                shards: meta.shards.iter().map(|_| Entries::default()).collect(),
                meta,
                segments: BTreeMap::from([(
                    0,
                    SegmentInfo {
                        file: Arc::new(file),
                        max_arrival_ms: i64::MIN,
                        evicted: None,
                    },
                )]),
                active_base: 0,
                indexing: BTreeSet::new(),
                resident_from: 0,
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
        let dir = stream.shared.dir.clone();
        // Its threads end here, before the directory goes, unless a call
        // in flight still holds the stream: they end with that call, and
        // what it wrote goes with the removed files.
        drop(stream);
        fs::remove_dir_all(&dir).map_err(storage)?;
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
            record_count: Some(
                state.shards.iter().map(|s| s.len() as u64).sum::<u64>()
                    + state
                        .segments
                        .values()
                        .filter_map(|s| s.evicted)
                        .sum::<u64>(),
            ),
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
        let hashes = records.iter().map(PutRecord::hash_key).collect();
        let placed = self
            .command(name, |reply| Command::Put {
                records,
                hashes,
                reply,
            })
            .await?;
        Ok(placed
            .shards
            .iter()
            .zip(placed.first_seq..)
            .map(|(&shard, seq)| PutResult::Ok {
                shard_id: shard_id(shard),
                sequence_number: SequenceNumber::from_u64(seq),
            })
            .collect())
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
        let known = |state: &State| (number as usize) < state.meta.shards.len();
        if !known(&stream.shared.state.read().expect("state lock")) {
            return Err(not_found());
        }
        let at_timestamp = match start {
            StartPosition::AtTimestamp(ms) => Some(stream.at_timestamp(number, ms)?),
            _ => None,
        };
        let state = stream.shared.state.read().expect("state lock");
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
            StartPosition::AtTimestamp(_) => at_timestamp.expect("worked out above"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_ids_are_twelve_digits_as_kinesis_writes_them() {
        for number in [0, 1, 42, 1_000, 999_999_999, u32::MAX] {
            let id = shard_id(number);
            assert_eq!(id, format!("shardId-{number:012}"));
            assert_eq!(parse_shard_id(&id), Some(number));
        }
    }
}
