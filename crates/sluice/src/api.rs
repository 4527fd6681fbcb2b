//! The read API for end users and debugging:
//! `GET /v1/streams` and `GET /v1/streams/{name}/records`.
//!
//! Records come back as NDJSON, shards interleaved by arrival time, a child
//! shard after its parents. A `Sluice-Cursor` response header carries each
//! shard's position; passing it back as `cursor` continues exactly after the
//! last record returned (it is also a live feed's `Last-Event-ID`). KPL
//! aggregates are opened: each user record is one line, and a cursor can stop
//! inside an aggregate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};

use sluice_client::follow::{Followed, Follower, Position, Positions};
use sluice_core::stream::StreamError;
use sluice_core::StreamBackend;

use crate::error::AppError;

/// Most records one request returns.
pub const MAX_LIMIT: usize = 100_000;
/// Most bytes one response holds; past it the cursor continues.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
const PAGE: usize = 1000;
/// The longest one page reads before it answers what it has.
pub const MAX_PAGE_TIME: Duration = Duration::from_secs(2);
/// Pause between reads of a shard that answered an empty page while behind.
const EMPTY_PAGE_PAUSE: Duration = Duration::from_millis(10);

pub fn stream_error(e: StreamError) -> AppError {
    match e {
        StreamError::StreamNotFound(_) | StreamError::ShardNotFound { .. } => {
            AppError::NotFound(e.to_string())
        }
        StreamError::InvalidArgument(_) | StreamError::ExpiredIterator(_) => {
            AppError::BadRequest(e.to_string())
        }
        StreamError::Throttled(_) | StreamError::Unavailable(_) => AppError::Unavailable {
            reason: e.to_string(),
            retry_after_secs: 1,
        },
        other => AppError::Internal(other.to_string()),
    }
}

#[derive(Serialize)]
pub struct StreamInfo {
    pub name: String,
    pub open_shards: usize,
    pub retention_hours: u32,
    pub record_count: Option<u64>,
}

/// `GET /v1/streams`.
pub async fn list_streams(
    State(streams): State<Arc<dyn StreamBackend>>,
) -> Result<Json<Vec<StreamInfo>>, AppError> {
    let mut out = Vec::new();
    for name in streams.list_streams().await.map_err(stream_error)? {
        let summary = streams.describe_stream(&name).await.map_err(stream_error)?;
        out.push(StreamInfo {
            name,
            open_shards: summary.open_shards,
            retention_hours: summary.retention_hours,
            record_count: summary.record_count,
        });
    }
    Ok(Json(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordsQuery {
    from: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

fn parse_from(from: Option<&str>) -> Result<Position, AppError> {
    match from.unwrap_or("trim_horizon") {
        "trim_horizon" => Ok(Position::TrimHorizon),
        // The tip of every shard now: records arriving from here on.
        "latest" => Ok(Position::AtMs(chrono::Utc::now().timestamp_millis() + 1)),
        text => chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| Position::AtMs(t.timestamp_millis()))
            .map_err(|_| {
                AppError::BadRequest(format!(
                    "from={text:?}: expected trim_horizon, latest or an RFC 3339 time"
                ))
            }),
    }
}

/// `GET /v1/streams/{name}/records?from=…&limit=…&cursor=…`.
///
/// Reads every shard (children after their parents) until the page is
/// full or every shard is read to its tip: an empty page from a shard that
/// is still behind (Kinesis answers so on sparse shards and after
/// TRIM_HORIZON) is read past, not taken for the end. A page that takes
/// longer than [`MAX_PAGE_TIME`] ends early with `Sluice-More: true`.
pub async fn read_records(
    State(streams): State<Arc<dyn StreamBackend>>,
    Path(name): Path<String>,
    query: Result<Query<RecordsQuery>, QueryRejection>,
) -> Result<impl IntoResponse, AppError> {
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(AppError::BadRequest(format!(
            "limit: expected 1 to {MAX_LIMIT}, found {limit}"
        )));
    }
    let mut positions = match &query.cursor {
        Some(text) => {
            if query.from.is_some() {
                return Err(AppError::BadRequest(
                    "give `from` or `cursor`, not both".into(),
                ));
            }
            Positions::decode(text).map_err(|e| AppError::BadRequest(format!("cursor: {e}")))?
        }
        None => Positions::from(parse_from(query.from.as_deref())?),
    };
    let mut follower = Follower::new(streams, &name, positions.clone(), limit.min(PAGE))
        .await
        .map_err(stream_error)?;
    let started = Instant::now();
    let mut body = Vec::new();
    let mut count = 0usize;
    let mut more = false;
    'page: loop {
        let round = follower.round().await;
        let had_records = !round.records.is_empty();
        for Followed { shard, record } in round.records {
            if count == limit || body.len() >= MAX_RESPONSE_BYTES {
                more = true;
                break 'page;
            }
            append_line(&mut body, &record.data);
            count += 1;
            positions.set(&shard, Position::after(&record));
        }
        if let Some(e) = round.error {
            if count == 0 {
                return Err(stream_error(e));
            }
            // What was read is answered; the cursor continues from it.
            more = true;
            break;
        }
        if follower.caught_up() {
            break;
        }
        if started.elapsed() >= MAX_PAGE_TIME {
            more = true;
            break;
        }
        let pause = follower.pause(had_records, EMPTY_PAGE_PAUSE);
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    headers.insert(
        "sluice-cursor",
        HeaderValue::from_str(&positions.encode()).expect("base64 is a valid header"),
    );
    headers.insert(
        "sluice-more",
        HeaderValue::from_static(if more { "true" } else { "false" }),
    );
    headers.insert("sluice-count", HeaderValue::from(count));
    Ok((headers, body))
}

/// Appends a record as one line. A JSON text can hold raw line breaks only
/// as whitespace between tokens, so they become spaces without changing it.
fn append_line(body: &mut Vec<u8>, data: &[u8]) {
    let start = body.len();
    body.extend_from_slice(data);
    for b in &mut body[start..] {
        if *b == b'\n' || *b == b'\r' {
            *b = b' ';
        }
    }
    body.push(b'\n');
}
