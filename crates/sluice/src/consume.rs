//! `sluice consume` and `sluice leases`: one worker of a consumer
//! application with the built-in processor (each record's envelope as one
//! NDJSON line on stdout), and a look at an application's lease table.
//!
//! Embedded storage belongs to the one process that opened it (`sluice up`);
//! other processes read it through that process's read API (`sluice tail`),
//! and consumers of it run inside that process, as the router does. On AWS
//! any number of `sluice consume` processes share a stream.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use sluice_client::consumer::{
    Batch, Checkpoint, Checkpointer, ConsumerConfig, InitialPosition, LeaseTable, ProcessError,
    ProcessorFactory, RecordProcessor, Worker,
};
use sluice_core::stream::StartPosition;
use sluice_core::{StreamBackend, TableBackend};

/// Writes records to stdout, one per line, then checkpoints.
struct PrintLines {
    out: Arc<Mutex<std::io::Stdout>>,
}

#[async_trait]
impl RecordProcessor for PrintLines {
    async fn process_records(
        &mut self,
        batch: &Batch,
        checkpointer: &mut Checkpointer,
    ) -> Result<(), ProcessError> {
        // The consumer's hop of each event's trace.
        let _spans: Vec<_> = if sluice_telemetry::trace::enabled() {
            let mut contexts: Vec<String> = Vec::new();
            for record in &batch.records {
                if let Ok(headers) = sluice_core::envelope::decode_headers(&record.data) {
                    if let Some(sluice_core::HeaderValue::Str(tp)) = headers.get("traceparent") {
                        if !contexts.iter().any(|c| c == tp.as_ref()) {
                            contexts.push(tp.to_string());
                        }
                    }
                }
            }
            contexts
                .iter()
                .take(128)
                .map(|tp| {
                    sluice_telemetry::trace::start(
                        "consume",
                        sluice_telemetry::trace::Kind::Consumer,
                        Some(tp),
                        &[],
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        {
            let mut out = self.out.lock().expect("stdout lock");
            for record in &batch.records {
                // A JSON text holds raw line breaks only as whitespace.
                let line: Vec<u8> = record
                    .data
                    .iter()
                    .map(|b| if matches!(b, b'\n' | b'\r') { b' ' } else { *b })
                    .collect();
                out.write_all(&line)
                    .and_then(|()| out.write_all(b"\n"))
                    .map_err(|e| ProcessError::new(format!("stdout: {e}")))?;
            }
            out.flush()
                .map_err(|e| ProcessError::new(format!("stdout: {e}")))?;
        }
        checkpointer
            .checkpoint()
            .await
            .map_err(|e| ProcessError::new(e.to_string()))
    }
}

/// What `sluice consume` needs.
pub struct ConsumeOptions {
    pub application: String,
    pub stream: String,
    pub worker_id: String,
    pub failover: Duration,
    pub initial_position: InitialPosition,
    /// Serve `GET /metrics` (Prometheus) here while consuming.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Runs one worker until SIGTERM or Ctrl-C, then stops it gracefully.
pub async fn consume(
    streams: Arc<dyn StreamBackend>,
    tables: Arc<dyn TableBackend>,
    options: ConsumeOptions,
) -> anyhow::Result<()> {
    // A missing stream is a clear error, not a silent wait.
    streams
        .list_shards(&options.stream)
        .await
        .map_err(|e| anyhow::anyhow!("stream {}: {e}", options.stream))?;
    let mut config = ConsumerConfig::new(&options.application, &options.stream, &options.worker_id)
        .with_failover(options.failover);
    config.initial_position = options.initial_position;
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let factory: Arc<dyn ProcessorFactory> = Arc::new(move |_: &str| -> Box<dyn RecordProcessor> {
        Box::new(PrintLines { out: out.clone() })
    });
    let metrics = match options.metrics_listen {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .map_err(|e| anyhow::anyhow!("--metrics-listen {address}: {e}"))?;
            let app = axum::Router::new().route(
                "/metrics",
                axum::routing::get(|| async { sluice_telemetry::registry::render_prometheus() }),
            );
            tracing::info!(address = %listener.local_addr()?, "metrics at /metrics");
            Some(tokio::spawn(
                async move { axum::serve(listener, app).await },
            ))
        }
        None => None,
    };
    let worker = Worker::start(streams, tables, config, factory);
    tracing::info!(application = %options.application, stream = %options.stream, worker = %options.worker_id, "consuming");
    crate::server::shutdown_signal().await;
    worker.shutdown().await;
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    Ok(())
}

/// One row of `sluice leases`.
#[derive(Debug, serde::Serialize)]
pub struct LeaseRow {
    pub shard: String,
    pub owner: Option<String>,
    pub counter: i64,
    pub checkpoint: String,
    /// How far the checkpoint is behind the tip of the shard, when known.
    pub lag_ms: Option<u64>,
}

/// The lease table of `application`, with each shard's lag behind its tip.
pub async fn leases(
    streams: Arc<dyn StreamBackend>,
    tables: Arc<dyn TableBackend>,
    application: &str,
    stream: &str,
) -> anyhow::Result<Vec<LeaseRow>> {
    let table = LeaseTable::new(tables, application);
    let (leases, bad) = table
        .list()
        .await
        .map_err(|e| anyhow::anyhow!("lease table {application}: {e}"))?;
    let mut rows = Vec::new();
    for lease in leases {
        let start = match &lease.checkpoint {
            Checkpoint::At { sequence, .. } => Some(StartPosition::AfterSequence(sequence.clone())),
            Checkpoint::TrimHorizon => Some(StartPosition::TrimHorizon),
            Checkpoint::AtTimestamp(ms) => Some(StartPosition::AtTimestamp(*ms)),
            Checkpoint::Latest | Checkpoint::ShardEnd => None,
        };
        let lag_ms = match start {
            Some(start) => match streams
                .get_shard_iterator(stream, &lease.shard_id, start)
                .await
            {
                Ok(it) => streams
                    .get_records(&it, 1)
                    .await
                    .ok()
                    .and_then(|page| page.millis_behind_latest),
                Err(_) => None,
            },
            None => Some(0),
        };
        rows.push(LeaseRow {
            checkpoint: match &lease.checkpoint {
                Checkpoint::At {
                    sequence,
                    sub_sequence,
                } if *sub_sequence > 0 => format!("{sequence}/{sub_sequence}"),
                Checkpoint::At { sequence, .. } => sequence.to_string(),
                Checkpoint::TrimHorizon => "TRIM_HORIZON".into(),
                Checkpoint::Latest => "LATEST".into(),
                Checkpoint::AtTimestamp(ms) => format!("AT_TIMESTAMP {ms}"),
                Checkpoint::ShardEnd => "SHARD_END".into(),
            },
            shard: lease.shard_id,
            owner: lease.owner,
            counter: lease.counter,
            lag_ms,
        });
    }
    for b in bad {
        rows.push(LeaseRow {
            shard: b.shard,
            owner: None,
            counter: 0,
            checkpoint: format!("unreadable: {}", b.problem),
            lag_ms: None,
        });
    }
    rows.sort_by(|a, b| a.shard.cmp(&b.shard));
    Ok(rows)
}
