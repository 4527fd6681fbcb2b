//! Liveness and readiness, for load balancers and orchestrators.
//!
//! `GET /healthz` is liveness: 200 while the process serves HTTP at all.
//! `GET /readyz` is readiness: 200 while this process can do its work, 503
//! with the reasons while it cannot —
//! - `backend`: the streams or tables do not answer (probed every
//!   [`PROBE_EVERY`]; a probe that takes longer than [`PROBE_TIMEOUT`]
//!   counts as no answer);
//! - `router`: the router holds fewer leases than it should, or cannot read
//!   its lease table (see [`Standing`]);
//! - `collector`: the collector's queue is full, or was within the last second.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{Map, Value};
use tokio::sync::watch;

use sluice_client::consumer::Standing;
use sluice_core::{StreamBackend, TableBackend, TableError};

use crate::collector::Collector;

/// How often the backend is probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(2);
/// How long a probe may take before the backend counts as unreachable.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/readyz` looks at.
pub struct Health {
    collector: Arc<Collector>,
    backend: Option<BackendProbe>,
    router: Option<watch::Receiver<Standing>>,
}

impl Health {
    /// Readiness from the collector's queue alone.
    pub fn new(collector: Arc<Collector>) -> Self {
        Self {
            collector,
            backend: None,
            router: None,
        }
    }

    pub fn with_backend(mut self, probe: BackendProbe) -> Self {
        self.backend = Some(probe);
        self
    }

    pub fn with_router(mut self, standing: watch::Receiver<Standing>) -> Self {
        self.router = Some(standing);
        self
    }

    /// Each check's finding: `None` when it is fine.
    fn checks(&self) -> Vec<(&'static str, Option<String>)> {
        let mut checks = Vec::new();
        if let Some(probe) = &self.backend {
            checks.push(("backend", probe.last.borrow().clone().err()));
        }
        if let Some(standing) = &self.router {
            let problem = match &*standing.borrow() {
                Standing::Serving => None,
                Standing::Starting => Some("the router has not taken its leases yet".to_owned()),
                Standing::Short(why) => Some(format!("the router: {why}")),
            };
            checks.push(("router", problem));
        }
        checks.push(("collector", self.collector.queue_problem()));
        checks
    }
}

/// `GET /readyz`.
pub async fn ready(State(health): State<Arc<Health>>) -> Response {
    let checks = health.checks();
    let problems: Vec<&str> = checks.iter().filter_map(|(_, p)| p.as_deref()).collect();
    let findings: Map<String, Value> = checks
        .iter()
        .map(|(name, problem)| {
            let finding = problem.clone().unwrap_or_else(|| "ok".to_owned());
            ((*name).to_owned(), Value::String(finding))
        })
        .collect();
    if problems.is_empty() {
        (
            StatusCode::OK,
            Json(serde_json::json!({ "ready": true, "checks": findings })),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "ready": false,
                "error": problems.join("; "),
                "checks": findings,
            })),
        )
            .into_response()
    }
}

/// The backend's last answer to a probe, kept fresh by a task that ends
/// when the probe is dropped.
pub struct BackendProbe {
    last: watch::Receiver<Result<(), String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for BackendProbe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl BackendProbe {
    /// Probes `stream`'s shards and a read of `table` every `every`: calls
    /// the pipeline makes all the time, cheap and within Kinesis's and
    /// DynamoDB's limits. A missing table still counts as an answer.
    pub async fn start(
        streams: Arc<dyn StreamBackend>,
        stream: String,
        tables: Arc<dyn TableBackend>,
        table: String,
        every: Duration,
    ) -> Self {
        let probe = move || {
            let (streams, tables) = (streams.clone(), tables.clone());
            let (stream, table) = (stream.clone(), table.clone());
            async move {
                let asked = async {
                    streams
                        .list_shards(&stream)
                        .await
                        .map_err(|e| format!("the stream {stream} does not answer: {e}"))?;
                    match tables.get(&table, "-").await {
                        Ok(_) | Err(TableError::TableNotFound(_)) => Ok(()),
                        Err(e) => Err(format!("the table {table} does not answer: {e}")),
                    }
                };
                tokio::time::timeout(PROBE_TIMEOUT, asked)
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!(
                            "the backend did not answer within {} s",
                            PROBE_TIMEOUT.as_secs()
                        ))
                    })
            }
        };
        let (tx, last) = watch::channel(probe().await);
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let now = probe().await;
                if let Err(why) = &now {
                    if tx.borrow().is_ok() {
                        tracing::warn!(problem = %why, "backend unreachable: not ready");
                    }
                } else if tx.borrow().is_err() {
                    tracing::info!("backend reachable again");
                }
                let _ = tx.send_replace(now);
            }
        });
        Self { last, task }
    }
}
