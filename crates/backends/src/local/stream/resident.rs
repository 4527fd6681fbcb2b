//! Which records' index entries stay in memory.
//!
//! Every record's entry is in memory while its segment is active or its
//! index file is being written. Past that, a stream keeps the entries of
//! its newest segments up to [`LocalStreamOptions::resident_records`], and
//! drops the oldest sealed segments' entries beyond it, so memory does not
//! grow with the records kept for the retention period (40 bytes a record:
//! a day of 2,000 events a second would be 7 GB). A read before the
//! resident records loads the index file of the segment it is in, and
//! keeps the last few loaded.

use std::sync::Mutex;

use super::*;

/// Dropped segments' indexes kept loaded, for readers going through them.
const LOADED: usize = 2;

/// The entries of a segment whose entries left memory, by shard.
pub(super) struct SegmentIndex {
    shards: Vec<Vec<Entry>>,
}

impl SegmentIndex {
    fn new(entries: Vec<Entry>) -> Self {
        let mut shards: Vec<Vec<Entry>> = Vec::new();
        for entry in entries {
            let shard = entry.shard as usize;
            if shards.len() <= shard {
                shards.resize_with(shard + 1, Vec::new);
            }
            shards[shard].push(entry);
        }
        Self { shards }
    }

    /// The shard's entries in the segment, in log order.
    pub(super) fn shard(&self, shard: u32) -> &[Entry] {
        self.shards.get(shard as usize).map_or(&[], Vec::as_slice)
    }
}

/// Indexes of dropped segments read back lately.
#[derive(Default)]
pub(super) struct Loaded(Mutex<VecDeque<(u64, Arc<SegmentIndex>)>>);

impl Loaded {
    pub(super) fn forget(&self, base: u64) {
        self.0
            .lock()
            .expect("loaded lock")
            .retain(|(b, _)| *b != base);
    }
}

impl State {
    /// Drops the entries of the oldest segments from memory while more than
    /// `budget` are held, sparing the active one and any whose index file
    /// is not written yet.
    pub(super) fn evict(&mut self, budget: usize) {
        let mut held: usize = self.shards.iter().map(Entries::len).sum();
        while held > budget {
            let Some((&base, info)) = self
                .segments
                .iter_mut()
                .find(|(_, info)| info.evicted.is_none())
            else {
                return;
            };
            if base == self.active_base || self.indexing.contains(&base) {
                return;
            }
            let gone: usize = self
                .shards
                .iter_mut()
                .map(|shard| shard.pop_front_while(|e| e.segment == base))
                .sum();
            info.evicted = Some(gone as u64);
            held -= gone;
            self.resident_from = self
                .segments
                .range(base + 1..)
                .next()
                .map_or(self.active_base, |(next, _)| *next);
        }
    }

    /// The segments whose entries left memory and that may hold records
    /// from `position` on, oldest first, with their files.
    pub(super) fn evicted_from(&self, position: u64) -> Vec<(u64, Arc<File>)> {
        if position >= self.resident_from {
            return Vec::new();
        }
        let mut bases = self.segments.range(..self.resident_from).peekable();
        let mut out = Vec::new();
        while let Some((&base, info)) = bases.next() {
            let end = bases.peek().map_or(self.resident_from, |(next, _)| **next);
            if info.evicted.is_some() && end > position {
                out.push((base, info.file.clone()));
            }
        }
        out
    }
}

impl Shared {
    /// A dropped segment's entries, from its index file, or from a scan of
    /// the segment when the index file is missing or damaged.
    pub(super) fn segment_index(
        &self,
        base: u64,
        file: &File,
    ) -> Result<Arc<SegmentIndex>, StreamError> {
        if let Some((_, index)) = self
            .loaded
            .0
            .lock()
            .expect("loaded lock")
            .iter()
            .find(|(b, _)| *b == base)
        {
            return Ok(index.clone());
        }
        let entries = match log::read_index(&self.dir, base) {
            Some(entries) => entries,
            None => {
                let len = file.metadata().map_err(storage)?.len();
                let bytes = log::read_at(file, 0, len as usize).map_err(storage)?;
                log::scan_segment(&bytes, base).0
            }
        };
        let index = Arc::new(SegmentIndex::new(entries));
        let mut loaded = self.loaded.0.lock().expect("loaded lock");
        if loaded.len() == LOADED {
            loaded.pop_front();
        }
        loaded.push_back((base, index.clone()));
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::stream::read_shard;
    use sluice_core::stream::{PutRecord, Record};
    use std::time::Duration;

    type Backend = Arc<dyn StreamBackend>;

    async fn put(backend: &Backend, range: std::ops::Range<u32>) {
        let records: Vec<PutRecord> = range
            .map(|i| PutRecord::new(format!("k{}", i % 13), Bytes::from(format!("record-{i}"))))
            .collect();
        for chunk in records.chunks(100) {
            backend.put_records("s", chunk.to_vec()).await.unwrap();
        }
    }

    fn number(record: &Record) -> u32 {
        std::str::from_utf8(&record.data).unwrap()["record-".len()..]
            .parse()
            .unwrap()
    }

    /// Each shard's records from `start`, as their numbers.
    async fn numbers(backend: &Backend, start: impl Fn() -> StartPosition) -> Vec<Vec<u32>> {
        let mut out = Vec::new();
        for shard in backend.list_shards("s").await.unwrap() {
            let (records, _) = read_shard(backend, "s", &shard.shard_id, start()).await;
            out.push(records.iter().map(number).collect());
        }
        out
    }

    async fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn old_entries_leave_memory_and_are_read_back_from_index_files() {
        let dir = tempfile::tempdir().unwrap();
        let options = LocalStreamOptions {
            segment_bytes: 16 * 1024,
            resident_records: 100,
            ..Default::default()
        };
        let streams = Arc::new(LocalStreams::open(dir.path(), options.clone()).unwrap());
        let backend: Backend = streams.clone();
        backend.create_stream("s", 2).await.unwrap();
        put(&backend, 0..1000).await;
        let first_done = now_ms();
        until("the clock moves on", || now_ms() > first_done).await;
        let between = now_ms();
        put(&backend, 1000..2000).await;

        let stream = streams.stream("s").unwrap();
        let indexed = || stream.shared.state.read().unwrap().indexing.is_empty();
        until("sealed segments are indexed", indexed).await;
        {
            let state = stream.shared.state.read().unwrap();
            let held: usize = state.shards.iter().map(Entries::len).sum();
            let active = state
                .shards
                .iter()
                .flat_map(|s| s.iter())
                .filter(|e| e.segment == state.active_base)
                .count();
            assert!(
                held - active <= 100,
                "{held} held, {active} of the active segment"
            );
            let evicted = state.segments.values().filter(|s| s.evicted.is_some());
            assert!(evicted.count() >= 4, "most segments left memory");
        }

        let all = numbers(&backend, || StartPosition::TrimHorizon).await;
        let mut every: Vec<u32> = all.iter().flatten().copied().collect();
        every.sort_unstable();
        assert_eq!(every, (0..2000).collect::<Vec<_>>());
        for shard in &all {
            assert!(shard.windows(2).all(|w| w[0] < w[1]), "in order");
        }
        let described = backend.describe_stream("s").await.unwrap();
        assert_eq!(described.record_count, Some(2000));

        // The first record that arrived at `between` or later, in the past
        // whose entries left memory.
        let second = numbers(&backend, || StartPosition::AtTimestamp(between)).await;
        let expected: Vec<Vec<u32>> = all
            .iter()
            .map(|s| s.iter().copied().filter(|n| *n >= 1000).collect())
            .collect();
        assert_eq!(second, expected);
        assert_eq!(
            numbers(&backend, || StartPosition::AtTimestamp(0)).await,
            all
        );

        // Without their index files, the segments are scanned instead.
        for base in log::list_segments(&dir.path().join("s")).unwrap() {
            stream.shared.loaded.forget(base);
            fs::remove_file(log::index_path(&dir.path().join("s"), base)).ok();
        }
        assert_eq!(numbers(&backend, || StartPosition::TrimHorizon).await, all);
        drop((stream, backend, streams));

        // Reopened, the same records, and memory bounded again.
        let streams = Arc::new(LocalStreams::open(dir.path(), options).unwrap());
        let backend: Backend = streams.clone();
        assert_eq!(numbers(&backend, || StartPosition::TrimHorizon).await, all);
        let stream = streams.stream("s").unwrap();
        let state = stream.shared.state.read().unwrap();
        assert!(
            state
                .segments
                .values()
                .filter(|s| s.evicted.is_some())
                .count()
                >= 4
        );
    }
}
