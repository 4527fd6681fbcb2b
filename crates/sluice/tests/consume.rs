//! `sluice consume` as separate processes, sharing a stream of 8 shards on
//! moto (streams and lease table): the leases balance, a worker killed with
//! SIGKILL loses its shards to the others within the failover time and one
//! renewal, and every record is printed. `sluice leases` shows the table.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use sluice_backends::conformance::servers::{kinesis, moto};
use sluice_client::{Producer, ProducerConfig};
use sluice_core::stream::PutRecord;
use sluice_core::StreamBackend;
use support::wait::wait_until;

const FAILOVER_MS: u64 = 3000;

struct Consumer {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn aws_env(command: &mut Command) -> &mut Command {
    command
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
}

fn write_config(dir: &Path) -> std::path::PathBuf {
    let moto = moto();
    let path = dir.join("consume.toml");
    std::fs::write(
        &path,
        format!("[backend]\nkind = \"aws\"\nkinesis_endpoint = \"{moto}\"\ndynamodb_endpoint = \"{moto}\"\ncreate_missing = true\n"),
    )
    .unwrap();
    path
}

fn start(config: &Path, app: &str, stream: &str, worker: &str) -> Consumer {
    start_with(config, app, stream, worker, &[])
}

fn start_with(config: &Path, app: &str, stream: &str, worker: &str, args: &[&str]) -> Consumer {
    let mut child = aws_env(&mut Command::new(env!("CARGO_BIN_EXE_sluice")))
        .args([
            "consume",
            "--app",
            app,
            "--stream",
            stream,
            "--worker-id",
            worker,
        ])
        .args(["--failover-ms", &FAILOVER_MS.to_string(), "--config"])
        .arg(config)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sluice consume");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stdout = child.stdout.take().unwrap();
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    Consumer { child, lines }
}

/// Owner of each shard, from `sluice leases --json`.
fn owners(config: &Path, app: &str, stream: &str) -> BTreeMap<String, Option<String>> {
    try_owners(config, app, stream).unwrap_or_else(|e| panic!("{e}"))
}

fn try_owners(
    config: &Path,
    app: &str,
    stream: &str,
) -> Result<BTreeMap<String, Option<String>>, String> {
    let output = aws_env(&mut Command::new(env!("CARGO_BIN_EXE_sluice")))
        .args([
            "leases", "--json", "--app", app, "--stream", stream, "--config",
        ])
        .arg(config)
        .output()
        .unwrap();
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let row: Value = serde_json::from_str(l).unwrap();
            (
                row["shard"].as_str().unwrap().to_owned(),
                row["owner"].as_str().map(str::to_owned),
            )
        })
        .collect())
}

fn per_owner(owners: &BTreeMap<String, Option<String>>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for owner in owners.values().flatten() {
        *counts.entry(owner.clone()).or_insert(0) += 1;
    }
    counts
}

fn printed(consumers: &[&Consumer]) -> BTreeSet<String> {
    consumers
        .iter()
        .flat_map(|c| c.lines.lock().unwrap().clone())
        .map(|line| {
            let v: Value = serde_json::from_str(&line).unwrap();
            v["headers"]["event_id"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// Whether every id sent was printed by one of the consumers.
fn all_printed(sent: &BTreeSet<String>, consumers: &[&Consumer]) -> Result<(), String> {
    let missing = sent.difference(&printed(consumers)).count();
    if missing == 0 {
        Ok(())
    } else {
        Err(format!("{missing} missing"))
    }
}

async fn write(producer: &Producer, from: usize, count: usize) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let records = (from..from + count)
        .map(|i| {
            let id = format!("e-{i}");
            ids.insert(id.clone());
            let data =
                format!(r#"{{"headers":{{"type":"click","event_id":"{id}"}},"payload":{{}}}}"#);
            PutRecord::new(format!("user-{}", i % 97), Bytes::from(data))
        })
        .collect();
    producer.send(records).await.unwrap();
    ids
}

/// A stream on moto with `shards` shards, a producer for it, and the
/// config file `sluice consume` reads (kept in the returned directory).
struct Setup {
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
    stream: String,
    app: String,
    producer: Producer,
}

async fn setup(name: &str, shards: u32) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let stream = format!("{name}-{}", std::process::id());
    let app = format!("{stream}-app");
    let streams: Arc<dyn StreamBackend> = Arc::new(kinesis(&moto()));
    streams.create_stream(&stream, shards).await.unwrap();
    let producer = Producer::start(streams, &stream, ProducerConfig::default())
        .await
        .unwrap();
    Setup {
        _dir: dir,
        config,
        stream,
        app,
        producer,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_consume_processes_share_eight_shards_and_survive_a_kill() {
    let Setup {
        _dir,
        config,
        stream,
        app,
        producer,
    } = setup("consume", 8).await;
    let mut sent = write(&producer, 0, 400).await;

    let a = start(&config, &app, &stream, "a");
    let b = start(&config, &app, &stream, "b");
    let mut c = start(&config, &app, &stream, "c");
    wait_until(Duration::from_secs(60), "the leases to balance", || {
        let mut counts: Vec<usize> = per_owner(&try_owners(&config, &app, &stream)?)
            .into_values()
            .collect();
        counts.sort();
        if counts == [2, 3, 3] {
            Ok(())
        } else {
            Err(format!("{counts:?}"))
        }
    })
    .await;
    wait_until(Duration::from_secs(60), "every record printed", || {
        all_printed(&sent, &[&a, &b, &c])
    })
    .await;

    // SIGKILL: no release, no last checkpoint.
    let orphaned: BTreeSet<String> = owners(&config, &app, &stream)
        .into_iter()
        .filter(|(_, owner)| owner.as_deref() == Some("c"))
        .map(|(shard, _)| shard)
        .collect();
    c.child.kill().unwrap();
    c.child.wait().unwrap();
    let killed_at = Instant::now();
    wait_until(Duration::from_secs(60), "c's shards to be taken", || {
        let now = owners(&config, &app, &stream);
        let free: Vec<&String> = orphaned
            .iter()
            .filter(|shard| !matches!(now[*shard].as_deref(), Some("a" | "b")))
            .collect();
        if free.is_empty() {
            Ok(())
        } else {
            Err(format!("{free:?} not taken yet"))
        }
    })
    .await;
    let took = killed_at.elapsed();
    // The failover time, counted from when a survivor saw c's last renewal
    // (up to one pass of its loop after the kill), then the pass that finds
    // the lease stale and one more if both survivors reach for the same
    // lease; a second for this test's polling and a loaded machine.
    let pass = FAILOVER_MS / 3;
    let bound = Duration::from_millis(FAILOVER_MS + 3 * pass + 1000);
    assert!(took <= bound, "taken after {took:?}, more than {bound:?}");
    let mut counts: Vec<usize> = per_owner(&owners(&config, &app, &stream))
        .into_values()
        .collect();
    counts.sort();
    assert_eq!(counts, [4, 4]);
    // Written after the takeover (not timed with it): the survivors read
    // c's shards on from its last checkpoints and these after them.
    sent.extend(write(&producer, 400, 400).await);
    wait_until(
        Duration::from_secs(60),
        "every record printed after the kill",
        || {
            let got = printed(&[&a, &b, &c]);
            let missing = sent.difference(&got).count();
            if missing == 0 {
                Ok(())
            } else {
                Err(format!("{missing} missing"))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consume_process_serves_its_metrics_for_prometheus() {
    let Setup {
        _dir,
        config,
        stream,
        app,
        producer,
    } = setup("consume-metrics", 2).await;
    let sent = write(&producer, 0, 50).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let consumer = start_with(&config, &app, &stream, "m", &["--metrics-listen", &listen]);
    wait_until(Duration::from_secs(60), "every record printed", || {
        all_printed(&sent, &[&consumer])
    })
    .await;
    let url = format!("http://{listen}/metrics");
    let processed = format!("sluice_consumer_records_processed_total{{application=\"{app}\"}} 50");
    let held = format!("sluice_consumer_leases_held{{application=\"{app}\",worker=\"m\"}} 2");
    let mut text = String::new();
    for _ in 0..100 {
        text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        if text.contains(&processed) && text.contains(&held) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{processed} and {held} not in\n{text}");
}
