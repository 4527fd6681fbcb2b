//! Local stream append with durable group commit: 1 KiB records, written by
//! 8 concurrent callers in PutRecords calls of 500, next to what the disk
//! itself does with a write + fdatasync of the same 500 KiB, and with what
//! `dd bs=500k oflag=dsync` does.
//!
//! cargo bench -p sluice-backends --bench local_append

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use sluice_backends::local::{LocalStreamOptions, LocalStreams};
use sluice_core::stream::PutRecord;
use sluice_core::StreamBackend;

const CALLERS: usize = 8;
const BATCH: usize = 500;

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Keep data on the same disk as the project, not a tmpfs.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let streams: Arc<dyn StreamBackend> = Arc::new(
        LocalStreams::open(dir.path().join("streams"), LocalStreamOptions::default()).unwrap(),
    );
    runtime.block_on(streams.create_stream("bench", 4)).unwrap();
    let batch: Vec<PutRecord> = (0..BATCH)
        .map(|i| PutRecord::new(format!("user-{i}"), Bytes::from(vec![b'x'; 1024])))
        .collect();

    let mut group = c.benchmark_group("local_append");
    group.throughput(Throughput::Elements((CALLERS * BATCH) as u64));
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("put_records_8x500x1KiB", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let start = Instant::now();
                let mut tasks = Vec::new();
                for _ in 0..CALLERS {
                    let (streams, batch) = (streams.clone(), batch.clone());
                    tasks.push(tokio::spawn(async move {
                        for _ in 0..iterations {
                            streams.put_records("bench", batch.clone()).await.unwrap();
                        }
                    }));
                }
                for task in tasks {
                    task.await.unwrap();
                }
                start.elapsed()
            })
        })
    });

    // The disk's own limit: one synchronous 500 KiB write at a time.
    let raw = dir.path().join("raw");
    let mut file = std::fs::File::create(&raw).unwrap();
    let chunk = vec![b'x'; BATCH * 1024];
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("disk_write_fdatasync_500KiB", |b| {
        b.iter(|| {
            file.write_all(&chunk).unwrap();
            file.sync_data().unwrap();
        })
    });

    // What `dd if=/dev/zero of=FILE bs=500k count=1000 oflag=dsync` does:
    // synchronous (O_DSYNC) 500 KiB writes into a file started over every
    // 1,000 writes.
    const O_DSYNC: i32 = 0o10000; // Linux
    let dd = dir.path().join("dd");
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .custom_flags(O_DSYNC)
            .open(&dd)
            .unwrap()
    };
    let mut writes = 0u64;
    group.bench_function("dd_oflag_dsync_500KiB", |b| {
        b.iter(|| {
            if writes.is_multiple_of(1000) {
                use std::io::Seek;
                file.set_len(0).unwrap();
                file.rewind().unwrap();
            }
            writes += 1;
            file.write_all(&chunk).unwrap();
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
