//! Durability of the embedded stream store: what was acknowledged survives
//! reopening, a torn tail is cut, damage is refused, kill -9 of a writing
//! process loses no acknowledged record, and neither does a crash that
//! loses everything not synced (simulated from the log's own syncs).

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};

use bytes::Bytes;
use sluice_backends::conformance::stream::read_shard;
use sluice_backends::local::log::{self, Disk, SyncWitness};
use sluice_backends::local::{LocalStreamOptions, LocalStreams};
use sluice_core::stream::{PutRecord, PutResult, StartPosition};
use sluice_core::StreamBackend;
use std::sync::Arc;

fn open(dir: &Path) -> Arc<dyn StreamBackend> {
    open_with(dir, 16 * 1024)
}

fn open_with(dir: &Path, segment_bytes: u64) -> Arc<dyn StreamBackend> {
    let options = LocalStreamOptions {
        segment_bytes,
        ..Default::default()
    };
    Arc::new(LocalStreams::open(dir, options).expect("open streams"))
}

async fn read_all(backend: &Arc<dyn StreamBackend>, name: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for shard in backend.list_shards(name).await.unwrap() {
        let (records, _) =
            read_shard(backend, name, &shard.shard_id, StartPosition::TrimHorizon).await;
        out.extend(records.into_iter().map(|r| {
            (
                r.sequence_number.to_string(),
                String::from_utf8(r.data.to_vec()).unwrap(),
            )
        }));
    }
    out.sort();
    out
}

async fn put_numbered(backend: &Arc<dyn StreamBackend>, name: &str, range: std::ops::Range<u32>) {
    let records: Vec<PutRecord> = range
        .map(|i| PutRecord::new(format!("k{}", i % 13), Bytes::from(format!("record-{i}"))))
        .collect();
    for chunk in records.chunks(100) {
        let results = backend.put_records(name, chunk.to_vec()).await.unwrap();
        assert!(results.iter().all(|r| matches!(r, PutResult::Ok { .. })));
    }
}

fn last_segment(dir: &Path, stream: &str) -> std::path::PathBuf {
    let mut logs: Vec<_> = std::fs::read_dir(dir.join(stream))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs.pop().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_keeps_every_record_across_segments_and_splits() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let backend = open(dir.path());
        backend.create_stream("s", 2).await.unwrap();
        put_numbered(&backend, "s", 0..1500).await;
        let shard = backend.list_shards("s").await.unwrap()[0].shard_id.clone();
        backend
            .split_shard("s", &shard, u128::MAX / 4)
            .await
            .unwrap();
        put_numbered(&backend, "s", 1500..2000).await;
        read_all(&backend, "s").await
    };
    assert_eq!(before.len(), 2000);
    let segments = std::fs::read_dir(dir.path().join("s"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "idx")
        })
        .count();
    assert!(segments > 2, "the test spans several sealed segments");
    for base in log::list_segments(&dir.path().join("s")).unwrap() {
        let path = log::segment_path(&dir.path().join("s"), base);
        if log::index_path(&dir.path().join("s"), base).exists() {
            let len = std::fs::metadata(&path).unwrap().len();
            assert_eq!(
                len,
                records_end(&path),
                "a sealed segment is cut to its records"
            );
        }
    }

    let backend = open(dir.path());
    assert_eq!(read_all(&backend, "s").await, before);
    assert_eq!(backend.list_shards("s").await.unwrap().len(), 4);
    // New records get larger sequence numbers than any before.
    put_numbered(&backend, "s", 2000..2001).await;
    let after = read_all(&backend, "s").await;
    let newest = after
        .iter()
        .find(|(_, data)| data == "record-2000")
        .unwrap();
    let seq = |s: &str| sluice_core::SequenceNumber::parse(s).unwrap();
    assert!(before.iter().all(|(s, _)| seq(s) < seq(&newest.0)));
}

/// A sealed segment's index is written by a thread of its own, after the
/// segment. A stop before it is written leaves the segment to be scanned at
/// the next start, which writes the index then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_segment_without_its_index_is_scanned_and_indexed_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let stream_dir = dir.path().join("s");
    let before = {
        let backend = open(dir.path());
        backend.create_stream("s", 2).await.unwrap();
        put_numbered(&backend, "s", 0..1500).await;
        read_all(&backend, "s").await
    };
    let mut sealed = log::list_segments(&stream_dir).unwrap();
    sealed.pop();
    assert!(sealed.len() >= 2, "the test spans several sealed segments");
    for base in &sealed {
        let index = log::index_path(&stream_dir, *base);
        assert!(index.exists(), "a stop waits for the index of {base}");
        std::fs::remove_file(index).unwrap();
    }

    let backend = open(dir.path());
    assert_eq!(read_all(&backend, "s").await, before);
    for base in &sealed {
        assert!(
            log::read_index(&stream_dir, *base).is_some(),
            "the index of {base} is written again"
        );
    }
}

/// Bytes of whole records at the start of a segment file.
fn records_end(path: &Path) -> u64 {
    let (_, valid, _) = log::scan_segment(&std::fs::read(path).unwrap(), 0);
    valid as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_cut_and_not_served() {
    let dir = tempfile::tempdir().unwrap();
    {
        let backend = open(dir.path());
        backend.create_stream("s", 1).await.unwrap();
        put_numbered(&backend, "s", 0..100).await;
    }
    let tail = last_segment(dir.path(), "s");
    let end = records_end(&tail);
    // Half a frame right after the records: a length that promises more
    // than is there.
    let file = std::fs::OpenOptions::new().write(true).open(&tail).unwrap();
    file.write_all_at(&[200, 0, 0, 0, 1, 2, 3, 4, 5, 6], end)
        .unwrap();
    drop(file);

    let backend = open(dir.path());
    let records = read_all(&backend, "s").await;
    assert_eq!(records.len(), 100);
    assert_eq!(
        std::fs::metadata(&tail).unwrap().len(),
        end,
        "the torn bytes were cut"
    );
    put_numbered(&backend, "s", 100..110).await;
    assert_eq!(read_all(&backend, "s").await.len(), 110);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zeros_after_the_records_are_a_clean_end_and_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let size = |path: &Path| std::fs::metadata(path).unwrap().len();
    {
        let backend = open_with(dir.path(), 64 * 1024 * 1024);
        backend.create_stream("s", 1).await.unwrap();
        put_numbered(&backend, "s", 0..100).await;
    }
    let tail = last_segment(dir.path(), "s");
    let end = records_end(&tail);
    // Small commits made room with zeros past their records.
    assert!(
        size(&tail) >= end + log::ZERO_AHEAD,
        "{} {end}",
        size(&tail)
    );
    let room = size(&tail);

    let backend = open_with(dir.path(), 64 * 1024 * 1024);
    assert_eq!(read_all(&backend, "s").await.len(), 100);
    assert_eq!(size(&tail), room, "the zeros were kept, not cut");
    put_numbered(&backend, "s", 100..110).await;
    assert_eq!(size(&tail), room, "the new records went into the room");
    drop(backend);

    let backend = open_with(dir.path(), 64 * 1024 * 1024);
    let records = read_all(&backend, "s").await;
    assert_eq!(records.len(), 110);
    assert!(records.iter().any(|(_, data)| data == "record-109"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_in_a_sealed_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let backend = open(dir.path());
        backend.create_stream("s", 1).await.unwrap();
        put_numbered(&backend, "s", 0..2000).await;
    }
    let first = dir.path().join("s").join(format!("{:020}.log", 0));
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&first, bytes).unwrap();

    // With its index, the segment opens, but the damaged record is an error, not data.
    let backend = open(dir.path());
    let shard = backend.list_shards("s").await.unwrap()[0].shard_id.clone();
    let iterator = backend
        .get_shard_iterator("s", &shard, StartPosition::TrimHorizon)
        .await
        .unwrap();
    let err = backend.get_records(&iterator, 10).await.unwrap_err();
    assert!(err.to_string().contains("damaged"), "{err}");
    drop(backend);

    // Without its index, recovery scans it and refuses to serve it.
    std::fs::remove_file(dir.path().join("s").join(format!("{:020}.idx", 0))).unwrap();
    let err = LocalStreams::open(dir.path(), LocalStreamOptions::default())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("damaged"), "{err}");
}

/// The child side of the kill -9 test: writes until killed, printing the
/// ids of acknowledged records. Not a test of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of kill_9_loses_no_acknowledged_record"]
async fn crash_child_writer() {
    let dir = std::env::var("SLUICE_CRASH_CHILD_DIR")
        .expect("started by kill_9_loses_no_acknowledged_record");
    let backend = open(Path::new(&dir));
    backend.create_stream("s", 4).await.unwrap();
    let mut stdout = std::io::stdout();
    let mut next = 0u32;
    loop {
        let batch: Vec<PutRecord> = (next..next + 50)
            .map(|i| {
                PutRecord::new(
                    format!("k{}", i % 97),
                    Bytes::from(format!("record-{i}-{}", "x".repeat((i % 50) as usize))),
                )
            })
            .collect();
        backend.put_records("s", batch).await.unwrap();
        writeln!(stdout, "acked {next} {}", next + 50).unwrap();
        stdout.flush().unwrap();
        next += 50;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "crash_child_writer",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("SLUICE_CRASH_CHILD_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = HashSet::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while acked.len() < 20_000 {
        let line = lines.next().expect("child wrote until killed").unwrap();
        if let Some(range) = line.strip_prefix("acked ") {
            let (from, to) = range.split_once(' ').unwrap();
            acked.extend(from.parse::<u32>().unwrap()..to.parse::<u32>().unwrap());
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let backend = open(dir.path());
    let present: HashSet<u32> = read_all(&backend, "s")
        .await
        .iter()
        .map(|(_, data)| data.split('-').nth(1).unwrap().parse().unwrap())
        .collect();
    let missing: Vec<_> = acked
        .iter()
        .filter(|id| !present.contains(id))
        .take(5)
        .collect();
    assert!(missing.is_empty(), "acknowledged records lost: {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_whole_old_segments_only() {
    let dir = tempfile::tempdir().unwrap();
    let options = LocalStreamOptions {
        segment_bytes: 16 * 1024,
        retention_hours: 1,
        ..Default::default()
    };
    let streams = LocalStreams::open(dir.path(), options.clone()).unwrap();
    let backend: Arc<dyn StreamBackend> = Arc::new(streams);
    backend.create_stream("s", 2).await.unwrap();
    put_numbered(&backend, "s", 0..1000).await;
    let before = read_all(&backend, "s").await;
    let segments = || {
        std::fs::read_dir(dir.path().join("s"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "log")
            })
            .count()
    };
    let sealed = segments() - 1;
    assert!(sealed >= 2);
    drop(backend);

    let streams = LocalStreams::open(dir.path(), options).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert_eq!(
        streams.enforce_retention_at(now).unwrap(),
        0,
        "nothing is old yet"
    );
    let two_hours_later = now + 2 * 3_600_000;
    assert_eq!(
        streams.enforce_retention_at(two_hours_later).unwrap(),
        sealed,
        "every sealed segment went"
    );
    assert_eq!(segments(), 1, "the active segment stays");
    let backend: Arc<dyn StreamBackend> = Arc::new(streams);
    let after = read_all(&backend, "s").await;
    assert!(!after.is_empty() && after.len() < before.len());
    assert!(
        after.iter().all(|r| before.contains(r)),
        "what remains is unchanged"
    );
    assert_eq!(
        backend.describe_stream("s").await.unwrap().record_count,
        Some(after.len() as u64)
    );
    // Reopening after retention still finds the same records and keeps sequence numbers growing.
    drop(backend);
    let backend = open(dir.path());
    assert_eq!(read_all(&backend, "s").await, after);
}

/// The syncs of a run, and the crash that keeps only what they made
/// durable: of each file its first bytes up to its last sync, of each
/// directory only the entries it had at its last sync. That is all POSIX
/// promises after a power cut; kill -9 keeps the page cache and so proves
/// nothing about syncs.
#[derive(Default)]
struct Syncs {
    data: std::sync::Mutex<std::collections::HashMap<std::path::PathBuf, u64>>,
    dirs: std::sync::Mutex<
        std::collections::HashMap<std::path::PathBuf, HashSet<std::ffi::OsString>>,
    >,
}

impl SyncWitness for Syncs {
    fn data(&self, path: &Path, len: u64) {
        self.data.lock().unwrap().insert(path.to_owned(), len);
    }

    fn dir(&self, dir: &Path) {
        let names = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        self.dirs.lock().unwrap().insert(dir.to_owned(), names);
    }
}

impl Syncs {
    /// Turns `dir` into what a crash now would leave of it.
    fn crash(&self, dir: &Path) {
        let kept = self
            .dirs
            .lock()
            .unwrap()
            .get(dir)
            .cloned()
            .unwrap_or_default();
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let is_dir = entry.file_type().unwrap().is_dir();
            match (kept.contains(&entry.file_name()), is_dir) {
                (false, true) => std::fs::remove_dir_all(&path).unwrap(),
                (false, false) => std::fs::remove_file(&path).unwrap(),
                (true, true) => self.crash(&path),
                (true, false) => {
                    let durable = self.data.lock().unwrap().get(&path).copied().unwrap_or(0);
                    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                    file.set_len(durable.min(file.metadata().unwrap().len()))
                        .unwrap();
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_that_loses_what_was_not_synced_keeps_every_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("streams");
    let syncs = Arc::new(Syncs::default());
    let options = LocalStreamOptions {
        segment_bytes: 16 * 1024,
        disk: Disk::witnessed(syncs.clone()),
        ..Default::default()
    };
    let backend: Arc<dyn StreamBackend> =
        Arc::new(LocalStreams::open(&root, options).expect("open streams"));
    backend.create_stream("s", 2).await.unwrap();
    // Writers side by side (group commits), across segments and a split.
    let writers: Vec<_> = (0..4u32)
        .map(|w| {
            let backend = backend.clone();
            tokio::spawn(async move { put_numbered(&backend, "s", w * 1000..w * 1000 + 500).await })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let shards = backend.list_shards("s").await.unwrap();
    backend
        .split_shard("s", &shards[0].shard_id, shards[0].hash_key_range.0 + 1000)
        .await
        .unwrap();
    for w in 0..4u32 {
        put_numbered(&backend, "s", w * 1000 + 500..w * 1000 + 1000).await;
    }
    let acknowledged = read_all(&backend, "s").await;
    assert_eq!(acknowledged.len(), 4000);
    // A stream whose last commit wrote into room an earlier one made.
    backend.create_stream("t", 1).await.unwrap();
    put_numbered(&backend, "t", 0..1).await;
    put_numbered(&backend, "t", 1..2).await;
    let small = read_all(&backend, "t").await;
    assert_eq!(small.len(), 2);
    drop(backend);

    // Bytes written but never synced are what the crash takes.
    let segment = last_segment(&root, "s");
    let synced_len = std::fs::metadata(&segment).unwrap().len();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap()
        .write_all(b"written, never synced")
        .unwrap();
    let t_segment = last_segment(&root, "t");
    let t_len = std::fs::metadata(&t_segment).unwrap().len();
    syncs.crash(&root);
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), synced_len);
    // Its zeros were synced by its first commit: the crash keeps them.
    assert_eq!(std::fs::metadata(&t_segment).unwrap().len(), t_len);

    let reopened = open(&root);
    assert_eq!(read_all(&reopened, "s").await, acknowledged);
    assert_eq!(read_all(&reopened, "t").await, small);
}
