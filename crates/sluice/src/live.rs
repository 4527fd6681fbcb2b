//! Live feeds: `GET /v1/streams/{name}/live`, one Server-Sent Event per
//! record as it arrives.
//!
//! One reader (a [`Follower`]) per stream per process fans out to every
//! subscriber of that stream through a bounded ring ([`broadcast`]), so
//! subscribers never spend the shards' read budget, and one that falls more
//! than `live.buffer` records behind is sent `event: lagged` and closed
//! instead of holding the others back or growing memory. The reader runs
//! while the stream has subscribers.
//!
//! Each message's `id` is a cursor of the whole stream: every shard's
//! position after that record. A subscriber that starts from a cursor
//! (`Last-Event-ID`), from the oldest record or from a time first reads
//! what it missed from the stream itself, with its own follower, then
//! joins the shared reader, dropping what it already sent: no gap, no
//! duplicate.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::{broadcast, watch, OwnedSemaphorePermit, Semaphore};

use sluice_client::consumer::UserRecord;
use sluice_client::follow::{Followed, Follower, Position, Positions};
use sluice_core::envelope::decode_headers;
use sluice_core::retry::Retryable;
use sluice_core::rules::Pattern;
use sluice_core::{Headers, StreamBackend, StreamError};
use sluice_telemetry::{metrics, GaugeHold};

use crate::api::stream_error;
use crate::config::LiveConfig;
use crate::error::AppError;

/// Records per read of a shard.
const BATCH: usize = 1000;
/// Times a subscriber catches up again when it fell behind while catching
/// up, before it is cut off.
const CATCH_UP_ATTEMPTS: u32 = 3;

/// The live feeds of one process.
pub struct Live {
    streams: Arc<dyn StreamBackend>,
    config: LiveConfig,
    hubs: tokio::sync::Mutex<HashMap<String, Weak<Hub>>>,
    slots: Arc<Semaphore>,
    closed: watch::Sender<bool>,
}

impl Live {
    pub fn new(streams: Arc<dyn StreamBackend>, config: LiveConfig) -> Arc<Self> {
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(config.max_subscribers)),
            streams,
            config,
            hubs: tokio::sync::Mutex::new(HashMap::new()),
            closed: watch::channel(false).0,
        })
    }

    /// Ends every feed (the server is stopping): subscribers' streams finish,
    /// so their connections can close.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// The stream's shared reader, started if it is not running.
    async fn hub(&self, stream: &str) -> Result<Arc<Hub>, StreamError> {
        let mut hubs = self.hubs.lock().await;
        if let Some(hub) = hubs.get(stream).and_then(Weak::upgrade) {
            if !hub.ended.load(Ordering::Acquire) {
                return Ok(hub);
            }
        }
        hubs.retain(|_, hub| hub.strong_count() > 0);
        let now = chrono::Utc::now().timestamp_millis();
        let mut follower = Follower::from_now(self.streams.clone(), stream, now, BATCH).await?;
        // One round hands out at most a quarter of the ring, so subscribers
        // that keep up are never lapped by a single burst.
        let shards = follower.unfinished_shards().max(1);
        follower.set_batch((self.config.buffer / (4 * shards)).clamp(1, BATCH));
        let hub = Hub::start(self.streams.clone(), follower, &self.config);
        hubs.insert(stream.to_owned(), Arc::downgrade(&hub));
        Ok(hub)
    }
}

/// What the shared reader hands its subscribers.
enum Event {
    Record(Box<Entry>),
    /// The reader stopped on an error it cannot retry (the stream deleted).
    End(String),
}

struct Entry {
    shard: Arc<str>,
    record: UserRecord,
    /// The record's headers, read once for every subscriber's pattern.
    headers: Option<Headers<'static>>,
    /// Where the reader stands after this record.
    positions: Positions,
    /// The SSE message, for every subscriber that stands where the reader does.
    message: Bytes,
}

/// A stream's shared reader.
struct Hub {
    streams: Arc<dyn StreamBackend>,
    stream: String,
    /// Where the reader stands after the last record it handed out; locked
    /// while handing one out, so a new subscriber's start and its receiver
    /// agree.
    published: Arc<Mutex<Positions>>,
    sender: broadcast::Sender<Arc<Event>>,
    ended: Arc<AtomicBool>,
    task: tokio::task::AbortHandle,
    _counted: GaugeHold,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Hub {
    fn start(
        streams: Arc<dyn StreamBackend>,
        follower: Follower,
        config: &LiveConfig,
    ) -> Arc<Self> {
        let stream = follower.stream().to_owned();
        let published = Arc::new(Mutex::new(follower.positions().clone()));
        let (sender, _) = broadcast::channel(config.buffer);
        let ended = Arc::new(AtomicBool::new(false));
        let idle = Duration::from_millis(config.idle_poll_ms);
        let task = tokio::spawn(read(
            follower,
            published.clone(),
            sender.clone(),
            ended.clone(),
            idle,
        ));
        Arc::new(Self {
            _counted: metrics::LIVE_READERS.gauge(&[("stream", &stream)]).hold(1),
            streams,
            stream,
            published,
            sender,
            ended,
            task: task.abort_handle(),
        })
    }

    /// Where the reader stands, and a receiver of everything after it.
    fn subscribe(&self) -> (Positions, broadcast::Receiver<Arc<Event>>) {
        let published = self.published.lock().expect("positions lock");
        (published.clone(), self.sender.subscribe())
    }
}

/// The shared reader's loop: read every shard, hand each record out.
async fn read(
    mut follower: Follower,
    published: Arc<Mutex<Positions>>,
    sender: broadcast::Sender<Arc<Event>>,
    ended: Arc<AtomicBool>,
    idle: Duration,
) {
    let backoff = sluice_core::retry::Backoff::default();
    let mut failures = 0u32;
    loop {
        let round = follower.round().await;
        let had_records = !round.records.is_empty();
        if had_records {
            let mut positions = published.lock().expect("positions lock");
            for Followed { shard, record } in round.records {
                positions.set(&shard, Position::after(&record));
                let id = positions.encode();
                let headers = decode_headers(&record.data).ok().map(Headers::into_owned);
                let event = Event::Record(Box::new(Entry {
                    message: message(&id, &record.data),
                    positions: positions.clone(),
                    headers,
                    shard,
                    record,
                }));
                // No receivers is fine: the hub is about to be dropped.
                let _ = sender.send(Arc::new(event));
            }
        }
        let pause = match round.error {
            Some(e) if !e.is_retryable() && !matches!(e, StreamError::ExpiredIterator(_)) => {
                tracing::warn!(stream = %follower.stream(), error = %e, "live feed reader stopped");
                ended.store(true, Ordering::Release);
                let _ = sender.send(Arc::new(Event::End(e.to_string())));
                return;
            }
            Some(e) => {
                tracing::debug!(stream = %follower.stream(), error = %e, "live feed reader retries");
                failures += 1;
                backoff.delay(failures.min(10))
            }
            None => {
                failures = 0;
                follower.pause(had_records, idle)
            }
        };
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

/// One SSE message: the cursor as its id, the record as one line of data.
/// A JSON text holds raw line breaks only as whitespace between tokens,
/// so they become spaces without changing it.
fn message(id: &str, data: &[u8]) -> Bytes {
    let text = String::from_utf8_lossy(data);
    let mut out = Vec::with_capacity(16 + id.len() + text.len());
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    let start = out.len();
    out.extend_from_slice(text.as_bytes());
    for b in &mut out[start..] {
        if *b == b'\n' || *b == b'\r' {
            *b = b' ';
        }
    }
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

fn control(event: &str, data: &str) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveQuery {
    from: Option<String>,
    #[serde(rename = "match")]
    pattern: Option<String>,
}

/// `GET /v1/streams/{name}/live?from=latest|trim_horizon|<RFC 3339>&match=<pattern>`.
pub async fn subscribe(
    State(live): State<Arc<Live>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    query: Result<Query<LiveQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let Query(query) = query?;
    let pattern = match &query.pattern {
        Some(text) => Some(
            serde_json::from_str::<Pattern>(text)
                .map_err(|e| AppError::BadRequest(format!("match: {e}")))?,
        ),
        None => None,
    };
    let resume = match headers.get("last-event-id") {
        Some(value) => {
            let text = value
                .to_str()
                .map_err(|_| AppError::BadRequest("Last-Event-ID: not a cursor".into()))?;
            Some(
                Positions::decode(text)
                    .map_err(|e| AppError::BadRequest(format!("Last-Event-ID: {e}")))?,
            )
        }
        None => None,
    };
    // A reconnect carries the first request's `from` too: the cursor wins.
    let start = match resume {
        Some(positions) => Some(positions),
        None => match query.from.as_deref().unwrap_or("latest") {
            "latest" => None,
            "trim_horizon" => Some(Positions::from(Position::TrimHorizon)),
            text => Some(Positions::from(Position::AtMs(
                chrono::DateTime::parse_from_rfc3339(text)
                    .map_err(|_| {
                        AppError::BadRequest(format!(
                            "from={text:?}: expected latest, trim_horizon or an RFC 3339 time"
                        ))
                    })?
                    .timestamp_millis(),
            ))),
        },
    };
    let Ok(slot) = live.slots.clone().try_acquire_owned() else {
        return Err(AppError::Unavailable {
            reason: format!(
                "this process serves live.max_subscribers ({}) feeds already",
                live.config.max_subscribers
            ),
            retry_after_secs: 5,
        });
    };
    let hub = live.hub(&name).await.map_err(stream_error)?;
    let (published, receiver) = hub.subscribe();
    let (positions, phase) = match start {
        None => (published, Phase::Live { synced: true }),
        Some(positions) => {
            let follower = Follower::new(live.streams.clone(), &name, positions.clone(), BATCH)
                .await
                .map_err(stream_error)?;
            (positions, Phase::CatchUp(follower))
        }
    };
    let subscriber = Subscriber {
        _counted: metrics::LIVE_SUBSCRIBERS
            .gauge(&[("stream", &name)])
            .hold(1),
        _slot: slot,
        positions,
        receiver,
        phase,
        pattern,
        attempts: 0,
        keep_alive: Duration::from_secs(live.config.keep_alive_secs),
        idle: Duration::from_millis(live.config.idle_poll_ms),
        closed: live.closed.subscribe(),
        done: false,
        hub,
    };
    let body = Body::from_stream(futures::stream::unfold(subscriber, |mut s| async move {
        s.next()
            .await
            .map(|chunk| (Ok::<_, std::io::Error>(chunk), s))
    }));
    Ok((
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        body,
    )
        .into_response())
}

enum Phase {
    /// Reading what the subscriber missed from the stream itself.
    CatchUp(Follower),
    /// Following the shared reader. `synced`: the subscriber stands where
    /// the reader does, so the reader's messages are sent as they are.
    Live { synced: bool },
}

struct Subscriber {
    hub: Arc<Hub>,
    /// Where this subscriber stands: after the last record sent or skipped.
    positions: Positions,
    receiver: broadcast::Receiver<Arc<Event>>,
    phase: Phase,
    pattern: Option<Pattern>,
    attempts: u32,
    keep_alive: Duration,
    idle: Duration,
    closed: watch::Receiver<bool>,
    done: bool,
    _counted: GaugeHold,
    _slot: OwnedSemaphorePermit,
}

impl Subscriber {
    /// The next chunk of the response; `None` ends it.
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if self.done || *self.closed.borrow() {
                return None;
            }
            let chunk = match &mut self.phase {
                Phase::CatchUp(_) => self.catch_up().await,
                Phase::Live { .. } => self.follow().await,
            };
            if chunk.is_some() {
                return chunk;
            }
        }
    }

    /// One round of the subscriber's own reads; joins the shared reader
    /// once it reached the tip of every shard.
    async fn catch_up(&mut self) -> Option<Bytes> {
        let Phase::CatchUp(follower) = &mut self.phase else {
            unreachable!("catching up");
        };
        let round = tokio::select! {
            round = follower.round() => round,
            _ = self.closed.changed() => {
                self.done = true;
                return None;
            }
        };
        let mut out = Vec::new();
        for Followed { shard, record } in &round.records {
            self.positions.set(shard, Position::after(record));
            let headers = decode_headers(&record.data).ok();
            if wanted(&self.pattern, headers.as_ref()) {
                out.extend_from_slice(&message(&self.positions.encode(), &record.data));
            }
        }
        match round.error {
            Some(e) if !e.is_retryable() && !matches!(e, StreamError::ExpiredIterator(_)) => {
                out.extend_from_slice(&control("error", &error_json(&e.to_string())));
                self.done = true;
            }
            Some(_) => tokio::time::sleep(follower.pause(false, self.idle)).await,
            None if follower.caught_up() => {
                self.positions = follower.positions().clone();
                self.phase = Phase::Live { synced: false };
            }
            None => {
                let pause = follower.pause(!round.records.is_empty(), self.idle);
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
        }
        (!out.is_empty()).then(|| Bytes::from(out))
    }

    /// What the shared reader has for this subscriber: every message ready
    /// now in one chunk (one write for a burst, not one per record), or a
    /// keep-alive comment.
    async fn follow(&mut self) -> Option<Bytes> {
        let mut received = tokio::select! {
            received = self.receiver.recv() => received,
            _ = tokio::time::sleep(self.keep_alive) => return Some(Bytes::from_static(b":\n\n")),
            _ = self.closed.changed() => {
                self.done = true;
                return None;
            }
        };
        let mut chunk = Chunk::default();
        loop {
            match self.take(received).await {
                Step::Send(message) => chunk.push(message),
                Step::Skip => {}
                Step::Stop => break,
            }
            if chunk.len() >= MAX_CHUNK_BYTES {
                break;
            }
            received = match self.receiver.try_recv() {
                Ok(event) => Ok(event),
                Err(broadcast::error::TryRecvError::Empty) => break,
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    Err(broadcast::error::RecvError::Lagged(n))
                }
                Err(broadcast::error::TryRecvError::Closed) => {
                    Err(broadcast::error::RecvError::Closed)
                }
            };
        }
        chunk.finish()
    }

    /// What one event of the shared reader means for this subscriber.
    async fn take(&mut self, received: Result<Arc<Event>, broadcast::error::RecvError>) -> Step {
        let Phase::Live { synced } = &mut self.phase else {
            unreachable!("following");
        };
        let event = match received {
            Ok(event) => event,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                if !*synced && self.attempts < CATCH_UP_ATTEMPTS {
                    // Behind since it caught up: read on from where it
                    // stands, with a fresh receiver taken first.
                    self.attempts += 1;
                    self.receiver = self.hub.sender.subscribe();
                    return match Follower::new(
                        self.hub.streams.clone(),
                        &self.hub.stream,
                        self.positions.clone(),
                        BATCH,
                    )
                    .await
                    {
                        Ok(follower) => {
                            self.phase = Phase::CatchUp(follower);
                            Step::Stop
                        }
                        Err(e) => {
                            self.done = true;
                            Step::Send(control("error", &error_json(&e.to_string())))
                        }
                    };
                }
                metrics::LIVE_LAGGED
                    .counter(&[("stream", &self.hub.stream)])
                    .inc();
                self.done = true;
                return Step::Send(control("lagged", &format!("{{\"missed\":{missed}}}")));
            }
            Err(broadcast::error::RecvError::Closed) => {
                self.done = true;
                return Step::Stop;
            }
        };
        let entry = match event.as_ref() {
            Event::Record(entry) => entry,
            Event::End(reason) => {
                self.done = true;
                return Step::Send(control("error", &error_json(reason)));
            }
        };
        // A synced subscriber's positions are the reader's: not kept, as a
        // synced subscriber that falls behind is cut off, not caught up.
        let id = if *synced {
            None
        } else {
            if !self.positions.get(&entry.shard).admits(&entry.record) {
                return Step::Skip; // sent while catching up
            }
            self.positions
                .set(&entry.shard, Position::after(&entry.record));
            *synced = self.positions == entry.positions;
            (!*synced).then(|| self.positions.encode())
        };
        if !wanted(&self.pattern, entry.headers.as_ref()) {
            return Step::Skip;
        }
        Step::Send(match id {
            None => entry.message.clone(),
            Some(id) => message(&id, &entry.record.data),
        })
    }
}

/// Most bytes of messages written to a subscriber at once.
const MAX_CHUNK_BYTES: usize = 256 * 1024;

enum Step {
    Send(Bytes),
    Skip,
    /// Nothing more in this chunk: the subscriber ended or catches up.
    Stop,
}

/// Messages for one write: a single one as it is, several copied together.
#[derive(Default)]
enum Chunk {
    #[default]
    Empty,
    One(Bytes),
    Many(Vec<u8>),
}

impl Chunk {
    fn push(&mut self, message: Bytes) {
        *self = match std::mem::take(self) {
            Chunk::Empty => Chunk::One(message),
            Chunk::One(first) => {
                let mut many = Vec::with_capacity((first.len() + message.len()) * 4);
                many.extend_from_slice(&first);
                many.extend_from_slice(&message);
                Chunk::Many(many)
            }
            Chunk::Many(mut many) => {
                many.extend_from_slice(&message);
                Chunk::Many(many)
            }
        };
    }

    fn len(&self) -> usize {
        match self {
            Chunk::Empty => 0,
            Chunk::One(one) => one.len(),
            Chunk::Many(many) => many.len(),
        }
    }

    fn finish(self) -> Option<Bytes> {
        match self {
            Chunk::Empty => None,
            Chunk::One(one) => Some(one),
            Chunk::Many(many) => Some(Bytes::from(many)),
        }
    }
}

/// Whether a record with these headers (none: not an envelope) passes the
/// subscriber's pattern.
fn wanted(pattern: &Option<Pattern>, headers: Option<&Headers<'_>>) -> bool {
    match pattern {
        None => true,
        Some(pattern) => headers.is_some_and(|h| pattern.matches(&|name| h.get(name))),
    }
}

fn error_json(reason: &str) -> String {
    serde_json::json!({ "error": reason }).to_string()
}
