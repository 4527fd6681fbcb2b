//! The read API for end users and debugging:
//! `GET /v1/streams` and `GET /v1/streams/{name}/records`.
//!
//! Records come back as NDJSON, merged across shards by arrival time. A
//! `Sluice-Cursor` response header carries each shard's position; passing it
//! back as `cursor` continues exactly after the last record returned.
//! KPL aggregates are opened: each user record is one line, and a cursor can
//! stop inside an aggregate.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::IntoResponse;
use axum::Json;
use base64::Engine;
use serde::{Deserialize, Serialize};

use sluice_core::stream::{Record, StartPosition, StreamError};
use sluice_core::{SequenceNumber, StreamBackend};

use crate::error::AppError;

/// Most records one request returns.
pub const MAX_LIMIT: usize = 100_000;
/// Most bytes one response holds; past it the cursor continues.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
const PAGE: usize = 1000;

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

/// Where one shard continues from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum Position {
    TrimHorizon,
    AtMs(i64),
    After(String),
    /// Inside an aggregate: its first `skip` user records were returned.
    Within {
        at: String,
        skip: u32,
    },
}

impl Position {
    fn start(&self) -> Result<StartPosition, AppError> {
        Ok(match self {
            Position::TrimHorizon => StartPosition::TrimHorizon,
            Position::AtMs(ms) => StartPosition::AtTimestamp(*ms),
            Position::After(seq) => StartPosition::AfterSequence(parse_sequence(seq)?),
            Position::Within { at, .. } => StartPosition::AtSequence(parse_sequence(at)?),
        })
    }
}

fn parse_sequence(text: &str) -> Result<SequenceNumber, AppError> {
    SequenceNumber::parse(text).ok_or_else(|| AppError::BadRequest("cursor is damaged".into()))
}

#[derive(Serialize, Deserialize, Default)]
struct Cursor {
    /// Where shards not listed start.
    default: Option<Position>,
    shards: BTreeMap<String, Position>,
}

impl Cursor {
    fn encode(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(self).expect("cursor serializes"))
    }

    fn decode(text: &str) -> Result<Self, AppError> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| AppError::BadRequest("cursor is not one this API returned".into()))?;
        serde_json::from_slice(&bytes)
            .map_err(|_| AppError::BadRequest("cursor is not one this API returned".into()))
    }
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

/// One line to return: a record, or one user record of an aggregate.
struct Line {
    sequence: SequenceNumber,
    /// Position inside an aggregate and the aggregate's size.
    within: Option<(u32, u32)>,
    arrival_ms: i64,
    data: bytes::Bytes,
}

impl Line {
    /// Where the shard continues after this line.
    fn next_position(&self) -> Position {
        match self.within {
            Some((sub, count)) if sub + 1 < count => Position::Within {
                at: self.sequence.to_string(),
                skip: sub + 1,
            },
            _ => Position::After(self.sequence.to_string()),
        }
    }
}

struct ShardCursor {
    shard: String,
    iterator: Option<String>,
    buffer: VecDeque<Line>,
    drained: bool,
    /// User records of the first aggregate already returned before.
    skip: Option<(String, u32)>,
}

impl ShardCursor {
    async fn fill(&mut self, streams: &dyn StreamBackend) -> Result<(), AppError> {
        if !self.buffer.is_empty() || self.drained {
            return Ok(());
        }
        let Some(iterator) = self.iterator.take() else {
            self.drained = true;
            return Ok(());
        };
        let out = streams
            .get_records(&iterator, PAGE)
            .await
            .map_err(stream_error)?;
        if out.records.is_empty() {
            self.drained = true;
        }
        for record in out.records {
            self.push(record);
        }
        self.iterator = out.next_iterator;
        Ok(())
    }

    fn push(&mut self, record: Record) {
        let skip = match self.skip.take() {
            Some((at, skip)) if at == record.sequence_number.as_str() => skip,
            _ => 0,
        };
        // A corrupt aggregate is shown as it is stored.
        match sluice_core::aggregate::deaggregate(&record.data) {
            Ok(Some(inside)) => {
                let count = inside.len() as u32;
                for (sub, user) in inside.into_iter().enumerate().skip(skip as usize) {
                    self.buffer.push_back(Line {
                        sequence: record.sequence_number.clone(),
                        within: Some((sub as u32, count)),
                        arrival_ms: record.arrival_ms,
                        data: user.data,
                    });
                }
            }
            _ => self.buffer.push_back(Line {
                sequence: record.sequence_number,
                within: None,
                arrival_ms: record.arrival_ms,
                data: record.data,
            }),
        }
    }
}

/// `GET /v1/streams/{name}/records?from=…&limit=…&cursor=…`.
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
    let mut cursor = match &query.cursor {
        Some(text) => {
            if query.from.is_some() {
                return Err(AppError::BadRequest(
                    "give `from` or `cursor`, not both".into(),
                ));
            }
            Cursor::decode(text)?
        }
        None => Cursor {
            default: Some(parse_from(query.from.as_deref())?),
            shards: BTreeMap::new(),
        },
    };
    let shards = streams.list_shards(&name).await.map_err(stream_error)?;
    let mut cursors = Vec::with_capacity(shards.len());
    for shard in &shards {
        let position = cursor
            .shards
            .get(&shard.shard_id)
            .or(cursor.default.as_ref())
            .cloned()
            .unwrap_or(Position::TrimHorizon);
        cursor
            .shards
            .insert(shard.shard_id.clone(), position.clone());
        let iterator = streams
            .get_shard_iterator(&name, &shard.shard_id, position.start()?)
            .await
            .map_err(stream_error)?;
        let skip = match &position {
            Position::Within { at, skip } => Some((at.clone(), *skip)),
            _ => None,
        };
        cursors.push(ShardCursor {
            shard: shard.shard_id.clone(),
            iterator: Some(iterator),
            buffer: VecDeque::new(),
            drained: false,
            skip,
        });
    }
    let mut body = Vec::new();
    let mut count = 0usize;
    let mut more = false;
    loop {
        for c in cursors.iter_mut() {
            c.fill(streams.as_ref()).await?;
        }
        let next = cursors
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.buffer.front().map(|r| (r.arrival_ms, i)))
            .min();
        let Some((_, i)) = next else { break };
        if count == limit || body.len() >= MAX_RESPONSE_BYTES {
            more = true;
            break;
        }
        let line = cursors[i].buffer.pop_front().expect("front exists");
        append_line(&mut body, &line.data);
        count += 1;
        cursor
            .shards
            .insert(cursors[i].shard.clone(), line.next_position());
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    headers.insert(
        "sluice-cursor",
        HeaderValue::from_str(&cursor.encode()).expect("base64 is a valid header"),
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
