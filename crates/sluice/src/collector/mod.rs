//! The collector: `POST /v1/events`. Checks every event, wraps each in an
//! envelope, and answers `202 {"accepted": n}` only once the inbound stream
//! acknowledged all of them.

pub mod ingest;
pub mod limit;
pub mod recent;
pub mod sites;
pub mod tracker;

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::sync::Semaphore;

use sluice_client::{ProduceError, Producer};
use sluice_core::retry::Retryable;
use sluice_telemetry::{metrics, Counter, Gauge, Histogram};

use crate::auth::Tokens;
use crate::error::AppError;
use ingest::{BodyError, BodyFormat, Extras, IngestRules, Ingested};
use recent::RecentEvents;
use sites::{Site, Sites};

/// The collector's shared state.
pub struct Collector {
    pub producer: Producer,
    pub rules: IngestRules,
    /// Bounds the events waiting for the stream across all requests.
    pub queue: Arc<Semaphore>,
    /// The queue's places (`collector.queue_events`).
    queue_events: usize,
    /// When a request last found the queue full.
    last_full: std::sync::Mutex<Option<Instant>>,
    /// Largest request body, compressed or not (`collector.max_body_bytes`).
    pub max_body_bytes: usize,
    /// Websites, by write key.
    pub sites: Sites,
    /// Event ids sites' senders had acknowledged lately.
    pub recent: RecentEvents,
    received: Counter,
    accepted: Counter,
    deduplicated: Counter,
    queue_depth: Gauge,
}

impl Collector {
    /// A collector with no sites (bearer tokens only), the dedup window
    /// off, and bodies up to 8 MiB.
    pub fn new(producer: Producer, rules: IngestRules, queue_events: usize) -> Self {
        Self {
            producer,
            rules,
            queue: Arc::new(Semaphore::new(queue_events)),
            queue_events,
            last_full: std::sync::Mutex::new(None),
            max_body_bytes: 8 * 1024 * 1024,
            sites: Sites::default(),
            recent: RecentEvents::new(Duration::ZERO, 0),
            received: metrics::COLLECTOR_EVENTS_RECEIVED.counter(&[]),
            accepted: metrics::COLLECTOR_EVENTS_ACCEPTED.counter(&[]),
            deduplicated: metrics::COLLECTOR_EVENTS_DEDUPLICATED.counter(&[]),
            queue_depth: metrics::COLLECTOR_QUEUE_DEPTH.gauge(&[]),
        }
    }

    /// Sites that may write with their public keys, and the window in
    /// which their resent events are recognised.
    pub fn with_sites(mut self, sites: Sites, recent: RecentEvents) -> Self {
        self.sites = sites;
        self.recent = recent;
        self
    }

    /// Why the collector cannot take events now, if it cannot: its queue
    /// is full, or was when a request came within the last second.
    pub fn queue_problem(&self) -> Option<String> {
        let free = self.queue.available_permits();
        let waiting = self.queue_events - free.min(self.queue_events);
        let since_full = self
            .last_full
            .lock()
            .expect("queue time lock")
            .map(|at| at.elapsed());
        if free == 0 {
            return Some(format!(
                "the collector's queue is full: {waiting} events wait for the stream"
            ));
        }
        since_full
            .filter(|ago| *ago < Duration::from_secs(1))
            .map(|ago| {
                format!(
                    "the collector's queue refused events {} ms ago; {waiting} of {} places are taken",
                    ago.as_millis(),
                    self.queue_events
                )
            })
    }

    pub fn with_max_body_bytes(mut self, max_body_bytes: usize) -> Self {
        self.max_body_bytes = max_body_bytes;
        self
    }
}

/// Who writes a request: a site's page, by its public write key, from a
/// client address; or a server, by a bearer token (or anyone, when no
/// tokens are configured and Sluice listens on loopback).
#[derive(Clone)]
pub enum Writer {
    Site { site: Arc<Site>, client: IpAddr },
    Server,
}

/// `POST /v1/events` from request to answer: who writes is told and
/// checked ([`authorize`]), the events are taken ([`post_events`]), and the
/// answer is counted and timed ([`measure`]). Plain calls rather than route
/// layers, as this is the collector's hot path.
pub async fn endpoint(
    State((collector, tokens)): State<(Arc<Collector>, Tokens)>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let response = match authorize(&collector, &tokens, &request) {
        Ok(writer) => {
            // A site's allowed origin may read every answer, errors included.
            let origin = match &writer {
                Writer::Site { .. } => request.headers().get(header::ORIGIN).cloned(),
                Writer::Server => None,
            };
            let mut response = post_events(&collector, writer, request)
                .await
                .into_response();
            if let Some(origin) = &origin {
                sites::allow_origin(response.headers_mut(), origin);
            }
            response
        }
        Err(e) => e.into_response(),
    };
    measure(started, &response);
    response
}

/// Claims `keys` to write. A key another request is writing is waited for
/// (this request's own claims let go meanwhile, so two requests never wait
/// on each other) and claimed again: by then it was acknowledged, or it is
/// this request's to write. After a few rounds of waiting, what is still
/// another's is written anyway: at least once is the floor.
async fn claim_or_wait<'a>(
    recent: &'a recent::RecentEvents,
    keys: &[recent::EventKey],
) -> (Vec<recent::Verdict>, recent::Writing<'a>) {
    const ROUNDS: usize = 3;
    for _ in 0..ROUNDS {
        let (verdicts, writing) = recent.claim(keys);
        let waits: Vec<_> = verdicts
            .iter()
            .filter_map(|v| match v {
                recent::Verdict::Wait(done) => Some(done.clone()),
                _ => None,
            })
            .collect();
        if waits.is_empty() {
            return (verdicts, writing);
        }
        drop(writing);
        for mut done in waits {
            // Err: the writer is done; there is never a value to see.
            let _ = done.changed().await;
        }
    }
    recent.claim(keys)
}

/// Counts a collector answer by status and times it from `started`.
fn measure(started: Instant, response: &Response) {
    static DURATION: OnceLock<Histogram> = OnceLock::new();
    /// A counter per status code, looked up once each.
    static BY_STATUS: [OnceLock<Counter>; 500] = [const { OnceLock::new() }; 500];
    DURATION
        .get_or_init(|| metrics::COLLECTOR_REQUEST_DURATION.histogram(&[]))
        .observe(started.elapsed());
    let status = response.status().as_u16();
    let counter = BY_STATUS[usize::from(status.clamp(100, 599) - 100)].get_or_init(|| {
        metrics::COLLECTOR_REQUESTS.counter(&[("status", response.status().as_str())])
    });
    counter.inc();
}

fn reject_reason(reason: &str) {
    metrics::COLLECTOR_EVENTS_REJECTED
        .counter(&[("reason", reason)])
        .inc();
}

/// Who writes `request`, or why they may not. A write key must be a
/// site's (401) and a browser's `Origin` one of that site's (403). Without
/// a write key, a bearer token is checked as for every `/v1` route.
pub fn authorize(
    collector: &Collector,
    tokens: &Tokens,
    request: &Request,
) -> Result<Writer, AppError> {
    let Some(key) = sites::write_key(request.uri(), request.headers()) else {
        tokens.check(request.headers())?;
        return Ok(Writer::Server);
    };
    let site = collector.sites.by_key(key).cloned().ok_or_else(|| {
        reject_reason("unknown_write_key");
        AppError::Unauthorized("unknown write key".into())
    })?;
    if let Some(origin) = request.headers().get(header::ORIGIN) {
        let text = origin.to_str().unwrap_or("");
        if !site.allows_origin(text) {
            reject_reason("origin_not_allowed");
            return Err(AppError::Forbidden(format!(
                "origin {text:?} may not use this write key"
            )));
        }
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| *peer);
    let client = collector.sites.client_address(peer, request.headers());
    Ok(Writer::Site { site, client })
}

/// `OPTIONS /v1/events`: the CORS preflight. Answered for an allowed origin
/// only (that of the key in the query, or of any site when the key comes
/// in a header the preflight cannot show), for `POST` with the headers
/// the tracker sends; anything else gets 403 and no CORS headers, which
/// the browser takes as a refusal.
pub async fn preflight(
    State((collector, _)): State<(Arc<Collector>, Tokens)>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let response = preflight_answer(&collector, &uri, &headers).into_response();
    measure(started, &response);
    response
}

fn preflight_answer(
    collector: &Collector,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Response, AppError> {
    let origin = headers
        .get(header::ORIGIN)
        .ok_or_else(|| AppError::BadRequest("a CORS preflight names its Origin".into()))?;
    let text = origin.to_str().unwrap_or("");
    let allowed = match sites::write_key(uri, headers) {
        Some(key) => collector
            .sites
            .by_key(key)
            .is_some_and(|site| site.allows_origin(text)),
        None => collector.sites.any_allows_origin(text),
    };
    if !allowed {
        return Err(AppError::Forbidden(format!(
            "origin {text:?} may not send events here"
        )));
    }
    sites::check_preflight(headers).map_err(AppError::Forbidden)?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    let answer = response.headers_mut();
    sites::allow_origin(answer, origin);
    answer.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST"),
    );
    answer.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("content-type, sluice-key, traceparent"),
    );
    answer.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from(sites::PREFLIGHT_MAX_AGE_SECS),
    );
    Ok(response)
}

fn rate_limited(wait: Duration) -> AppError {
    reject_reason("rate_limited");
    AppError::TooManyRequests {
        reason: "this site's rate limit for your address is reached; retry later".into(),
        retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u32,
    }
}

/// Reads the body, at most `limit` bytes after decompression.
async fn read_body(
    body: axum::body::Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, AppError> {
    let too_large = || {
        reject_reason("too_large");
        AppError::TooLarge(format!(
            "the body is larger than this collector's limit of {limit} bytes"
        ))
    };
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    let gzip = match encoding.as_deref() {
        None | Some("identity") => false,
        Some("gzip") => true,
        Some(other) => {
            return Err(AppError::UnsupportedMediaType(format!(
                "content encoding {other:?} is not supported; send gzip or none"
            )))
        }
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let body = axum::body::to_bytes(body, limit).await.map_err(|e| {
        let over = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if over {
            too_large()
        } else {
            AppError::BadRequest(format!("could not read the body: {e}"))
        }
    })?;
    if !gzip {
        return Ok(body);
    }
    // Bounded work and memory: decompression stops one byte past the limit.
    let mut plain = Vec::with_capacity((body.len() * 4).min(limit + 1));
    flate2::read::MultiGzDecoder::new(&body[..])
        .take(limit as u64 + 1)
        .read_to_end(&mut plain)
        .map_err(|e| AppError::BadRequest(format!("the gzip body is corrupt: {e}")))?;
    if plain.len() > limit {
        return Err(too_large());
    }
    Ok(Bytes::from(plain))
}

/// Takes the events of a `POST /v1/events` from `writer`.
async fn post_events(
    collector: &Collector,
    writer: Writer,
    request: Request,
) -> Result<Response, AppError> {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Checked before the body is read.
    let format = BodyFormat::from_content_type(content_type).ok_or_else(|| {
        AppError::UnsupportedMediaType(format!(
            "content type {content_type:?} is not supported; send application/json (an event or an array), application/x-ndjson, or text/plain holding either"
        ))
    })?;
    let site = match &writer {
        Writer::Site { site, client } => Some((site.as_ref(), *client)),
        Writer::Server => None,
    };
    // A request costs one token before its body is read, the rest of its
    // events after: a flood of bad bodies is limited too.
    if let Some((
        Site {
            limiter: Some(limiter),
            ..
        },
        client,
    )) = site
    {
        limiter.take(client, 1).map_err(rate_limited)?;
    }
    let body = read_body(body, headers, collector.max_body_bytes).await?;

    // A span per request, continuing the caller's trace when it sent one
    // (a page's OpenTelemetry SDK or RUM agent); its context goes into
    // every envelope.
    let caller = headers.get("traceparent").and_then(|v| v.to_str().ok());
    let span = sluice_telemetry::trace::start(
        "collector.request",
        sluice_telemetry::trace::Kind::Server,
        caller,
        &[],
    );
    let traceparent = span.traceparent();
    let client_address = site
        .filter(|(site, _)| site.store_client_address)
        .map(|(_, client)| client.to_string());
    let extras = Extras {
        traceparent: traceparent.as_deref(),
        site_headers: site.map_or(&[], |(site, _)| site.headers.as_slice()),
        client_address: client_address.as_deref(),
    };
    let dedup = site.filter(|_| collector.recent.enabled());
    let mut sender_ids = Vec::new();
    let outcome = ingest::ingest_with(
        &body,
        format,
        &collector.rules,
        &ingest::SystemClock,
        &extras,
        dedup.is_some().then_some(&mut sender_ids),
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
    let mut records = match outcome {
        Ingested::Accepted(records) => {
            collector.received.add(records.len() as u64);
            records
        }
        Ingested::Rejected {
            rejections,
            received,
        } => {
            collector.received.add(received as u64);
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
    if let Some((
        Site {
            limiter: Some(limiter),
            ..
        },
        client,
    )) = site
    {
        if count > 1 {
            limiter
                .take(client, (count - 1).min(u32::MAX as usize) as u32)
                .map_err(rate_limited)?;
        }
    }

    // Events this site's senders had acknowledged lately are acknowledged
    // again and not written twice (nor twice within one request); one that
    // another request is writing now waits for that write.
    let mut writing = None;
    if let Some((site, _)) = dedup {
        let keys: Vec<Option<recent::EventKey>> = sender_ids
            .iter()
            .map(|id| id.as_deref().map(|id| collector.recent.key(&site.name, id)))
            .collect();
        let present: Vec<recent::EventKey> = keys.iter().flatten().copied().collect();
        let (verdicts, claimed) = claim_or_wait(&collector.recent, &present).await;
        writing = Some(claimed);
        let mut verdicts = verdicts.into_iter();
        let mut in_request = std::collections::HashSet::with_capacity_and_hasher(
            keys.len(),
            sluice_core::hash::BuildPrehashed::default(),
        );
        let mut keep = Vec::with_capacity(count);
        for key in &keys {
            keep.push(match key {
                Some(key) => {
                    let seen = matches!(verdicts.next(), Some(recent::Verdict::Seen));
                    !seen && in_request.insert(*key)
                }
                None => true,
            });
        }
        let mut flags = keep.into_iter();
        records.retain(|_| flags.next().unwrap_or(true));
        collector.deduplicated.add((count - records.len()) as u64);
    }

    let to_write = records.len();
    let Ok(permit) = collector
        .queue
        .clone()
        .try_acquire_many_owned(to_write as u32)
    else {
        *collector.last_full.lock().expect("queue time lock") = Some(Instant::now());
        reject_reason("queue_full");
        return Err(AppError::Unavailable {
            reason: "the collector's queue is full; retry shortly".into(),
            retry_after_secs: 1,
        });
    };
    // The events this request holds back while it waits for the stream,
    // given back however the request ends (a client that hangs up
    // mid-request included).
    let depth = collector.queue_depth.hold(to_write as i64);
    let sent = if to_write == 0 {
        Ok(())
    } else {
        collector.producer.send(records).await
    };
    drop(depth);
    drop(permit);
    match sent {
        Ok(()) => {
            if let Some(writing) = writing {
                writing.written();
            }
            collector.accepted.add(to_write as u64);
            // `{"accepted": n}`, written directly: it is every answer's body.
            Ok((
                StatusCode::ACCEPTED,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                format!("{{\"accepted\":{count}}}"),
            )
                .into_response())
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
