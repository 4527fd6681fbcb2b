//! page-views: a consumer application written against the Sluice consumer
//! library. It reads website events from a stream, counts page views per
//! URL in a table (a view end users can query), and applies each event once
//! although the consumer delivers records at least once.
//!
//!     cargo run -p sluice -- sample --events 20000 > sample.ndjson
//!     cargo run -p page-views -- --events sample.ndjson
//!
//! On embedded storage the example owns its data directory (embedded
//! storage belongs to one process); `--events` first writes a file of
//! events into the stream. With `--aws` it reads a Kinesis stream and keeps
//! its leases, dedup keys and counts in DynamoDB, and any number of copies
//! share the work.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use clap::Parser;

use sluice_backends::local::{LocalBackend, LocalStreamOptions};
use sluice_client::consumer::{
    Batch, Checkpointer, ConsumerConfig, Dedup, ProcessError, ProcessorFactory, RecordProcessor,
    Worker,
};
use sluice_client::{Producer, ProducerConfig};
use sluice_core::envelope::{decode, HeaderValue};
use sluice_core::stream::PutRecord;
use sluice_core::{StreamBackend, TableBackend};

#[derive(Parser)]
struct Args {
    /// The stream of website events (envelopes, as Sluice's router writes them).
    #[arg(long, default_value = "clickstream")]
    stream: String,
    /// Embedded storage directory (ignored with --aws).
    #[arg(long, default_value = "page-views-data")]
    data_dir: PathBuf,
    /// Use Kinesis and DynamoDB (credentials and region from the AWS chain).
    #[arg(long)]
    aws: bool,
    /// First write these NDJSON events ({"type", "partition_key", "payload"}) to the stream.
    #[arg(long)]
    events: Option<PathBuf>,
    /// Stop after this long without new records (default: run until Ctrl-C).
    #[arg(long)]
    idle_exit_secs: Option<u64>,
}

const COUNTS: &str = "page-views-counts";
const DEDUP: &str = "page-views-dedup";

/// Counts page views per URL, once per event id.
struct PageViews {
    tables: Arc<dyn TableBackend>,
    dedup: Dedup,
    last_record: Arc<std::sync::Mutex<std::time::Instant>>,
}

#[async_trait]
impl RecordProcessor for PageViews {
    async fn process_records(
        &mut self,
        batch: &Batch,
        checkpointer: &mut Checkpointer,
    ) -> Result<(), ProcessError> {
        *self.last_record.lock().unwrap() = std::time::Instant::now();
        for record in &batch.records {
            let Ok(envelope) = decode(&record.data) else {
                continue; // not an envelope: not ours to count
            };
            let (Some(HeaderValue::Str(kind)), Some(HeaderValue::Str(id))) = (
                envelope.headers.get("type"),
                envelope.headers.get("event_id"),
            ) else {
                continue;
            };
            if kind != "page_view" {
                continue;
            }
            let url = envelope
                .payload
                .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                .and_then(|p| p["url"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "(no url)".into());
            let failed = |e: sluice_core::TableError| ProcessError::new(e.to_string());
            // Check, apply, remember: a replayed record is not counted twice.
            if self.dedup.seen(id).await.map_err(failed)? {
                continue;
            }
            self.tables
                .add(COUNTS, &url, "views", 1)
                .await
                .map_err(failed)?;
            self.dedup.remember(id).await.map_err(failed)?;
            *self.last_record.lock().unwrap() = std::time::Instant::now();
        }
        checkpointer
            .checkpoint()
            .await
            .map_err(|e| ProcessError::new(e.to_string()))
    }
}

/// Writes a file of website events to the stream as envelopes.
async fn load(
    streams: Arc<dyn StreamBackend>,
    stream: &str,
    path: &PathBuf,
) -> anyhow::Result<usize> {
    if streams.list_shards(stream).await.is_err() {
        streams.create_stream(stream, 4).await?;
    }
    let producer = Producer::start(streams, stream, ProducerConfig::default()).await?;
    let text = std::fs::read_to_string(path)?;
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let event: serde_json::Value = serde_json::from_str(line)?;
        let envelope = serde_json::json!({
            "headers": {"type": event["type"], "event_id": format!("{}-{i}", path.display())},
            "payload": event["payload"],
        });
        let key = event["partition_key"]
            .as_str()
            .unwrap_or("anonymous")
            .to_owned();
        records.push(PutRecord::new(
            key,
            Bytes::from(serde_json::to_vec(&envelope)?),
        ));
    }
    let count = records.len();
    for chunk in records.chunks(5000) {
        producer.send(chunk.to_vec()).await?;
    }
    producer.close().await;
    Ok(count)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sluice_telemetry::init_logging(sluice_telemetry::LogFormat::Text);
    let args = Args::parse();
    let (streams, tables, _local): (Arc<dyn StreamBackend>, Arc<dyn TableBackend>, _) = if args.aws
    {
        let (streams, tables) = sluice_backends::aws::connect(&Default::default()).await;
        (Arc::new(streams), Arc::new(tables), None)
    } else {
        let local = LocalBackend::open(&args.data_dir, LocalStreamOptions::default())?;
        (local.streams.clone(), local.table.clone(), Some(local))
    };
    if let Some(path) = &args.events {
        let count = load(streams.clone(), &args.stream, path).await?;
        eprintln!("wrote {count} events to {}", args.stream);
    }
    tables.ensure_table(COUNTS).await?;
    let dedup = Dedup::new(tables.clone(), DEDUP, Duration::from_secs(7 * 24 * 3600));
    dedup.ensure().await?;

    let last_record = Arc::new(std::sync::Mutex::new(std::time::Instant::now()));
    let factory: Arc<dyn ProcessorFactory> = {
        let (tables, dedup, last_record) = (tables.clone(), dedup.clone(), last_record.clone());
        Arc::new(move |_: &str| -> Box<dyn RecordProcessor> {
            Box::new(PageViews {
                tables: tables.clone(),
                dedup: dedup.clone(),
                last_record: last_record.clone(),
            })
        })
    };
    let worker_id = format!("page-views-{}", std::process::id());
    let config = ConsumerConfig::new("page-views", &args.stream, &worker_id);
    let worker = Worker::start(streams, tables.clone(), config, factory);
    match args.idle_exit_secs {
        Some(secs) => loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if last_record.lock().unwrap().elapsed() > Duration::from_secs(secs) {
                break;
            }
        },
        None => tokio::signal::ctrl_c().await?,
    }
    worker.shutdown().await;

    let mut counts: Vec<(String, i64)> = tables
        .scan(COUNTS)
        .await?
        .into_iter()
        .filter_map(|(url, item)| Some((url, item.get("views")?.as_i64()?)))
        .collect();
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    println!("{:>8}  URL", "VIEWS");
    for (url, views) in counts.iter().take(10) {
        println!("{views:>8}  {url}");
    }
    Ok(())
}
