//! The collector: `POST /v1/events`. Checks every event, wraps each in an
//! envelope, and answers `202 {"accepted": n}` only once the inbound stream
//! acknowledged all of them.

pub mod ingest;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use tokio::sync::Semaphore;

use sluice_client::{ProduceError, Producer};
use sluice_core::retry::Retryable;
use sluice_telemetry::{metrics, Counter, Gauge, Histogram};

use crate::error::AppError;
use ingest::{BodyError, BodyFormat, IngestRules, Ingested};

/// The collector's shared state.
pub struct Collector {
    pub producer: Producer,
    pub rules: IngestRules,
    /// Bounds the events waiting for the stream across all requests.
    pub queue: Arc<Semaphore>,
    received: Counter,
    accepted: Counter,
    queue_depth: Gauge,
}

impl Collector {
    pub fn new(producer: Producer, rules: IngestRules, queue_events: usize) -> Self {
        Self {
            producer,
            rules,
            queue: Arc::new(Semaphore::new(queue_events)),
            received: metrics::COLLECTOR_EVENTS_RECEIVED.counter(&[]),
            accepted: metrics::COLLECTOR_EVENTS_ACCEPTED.counter(&[]),
            queue_depth: metrics::COLLECTOR_QUEUE_DEPTH.gauge(&[]),
        }
    }
}

/// Counts every collector request by status and times it to its answer.
pub async fn measure(request: Request, next: Next) -> Response {
    static DURATION: OnceLock<Histogram> = OnceLock::new();
    /// A counter per status code, looked up once each.
    static BY_STATUS: [OnceLock<Counter>; 500] = [const { OnceLock::new() }; 500];
    let started = Instant::now();
    let response = next.run(request).await;
    DURATION
        .get_or_init(|| metrics::COLLECTOR_REQUEST_DURATION.histogram(&[]))
        .observe(started.elapsed());
    let status = response.status().as_u16();
    let counter = BY_STATUS[usize::from(status.clamp(100, 599) - 100)].get_or_init(|| {
        metrics::COLLECTOR_REQUESTS.counter(&[("status", response.status().as_str())])
    });
    counter.inc();
    response
}

fn reject_reason(reason: &str) {
    metrics::COLLECTOR_EVENTS_REJECTED
        .counter(&[("reason", reason)])
        .inc();
}

/// `POST /v1/events`.
pub async fn post_events(
    State(collector): State<Arc<Collector>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, AppError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let format = BodyFormat::from_content_type(content_type).ok_or_else(|| {
        AppError::UnsupportedMediaType(format!(
            "content type {content_type:?} is not supported; send application/json (an event or an array) or application/x-ndjson"
        ))
    })?;
    // A span per request; its context goes into every envelope.
    let span = sluice_telemetry::trace::start(
        "collector.request",
        sluice_telemetry::trace::Kind::Server,
        None,
        &[],
    );
    let traceparent = span.traceparent();
    let outcome = ingest::ingest_traced(
        &body,
        format,
        &collector.rules,
        &ingest::SystemClock,
        traceparent.as_deref(),
    )
    .map_err(|e| {
        reject_reason(match e {
            BodyError::TooManyEvents { .. } => "too_many_events",
            _ => "bad_body",
        });
        match e {
            BodyError::TooManyEvents { .. } => AppError::TooLarge(e.to_string()),
            other => AppError::BadRequest(other.to_string()),
        }
    })?;
    let records = match outcome {
        Ingested::Accepted(records) => records,
        Ingested::Rejected(rejections) => {
            for r in &rejections {
                reject_reason(if r.status == 413 {
                    "too_large"
                } else {
                    "invalid"
                });
            }
            return Err(AppError::Rejected(rejections));
        }
    };
    let count = records.len();
    collector.received.add(count as u64);
    let Ok(permit) = collector.queue.clone().try_acquire_many_owned(count as u32) else {
        reject_reason("queue_full");
        return Err(AppError::Unavailable {
            reason: "the collector's queue is full; retry shortly".into(),
            retry_after_secs: 1,
        });
    };
    collector.queue_depth.add(count as i64);
    let sent = collector.producer.send(records).await;
    collector.queue_depth.add(-(count as i64));
    drop(permit);
    match sent {
        Ok(()) => {
            collector.accepted.add(count as u64);
            Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "accepted": count }))))
        }
        Err(e @ ProduceError::Closed(_)) => Err(AppError::Unavailable {
            reason: format!("shutting down: {e}"),
            retry_after_secs: 1,
        }),
        Err(e) if e.is_retryable() => Err(AppError::Unavailable {
            reason: format!("the stream did not acknowledge every event ({e}); retry the request, ideally with event_id set"),
            retry_after_secs: 1,
        }),
        Err(e) => Err(AppError::Internal(format!("the stream refused the events: {e}"))),
    }
}
