//! A local server for the Lambda Runtime API (the interface through which
//! the Lambda service hands a function its events), so the real function
//! binary can be run and invoked on one machine: by the tests, by the
//! benchmarks, and by anyone trying the function locally.
//!
//! It serves `GET /2018-06-01/runtime/invocation/next` (long poll),
//! `POST …/invocation/{id}/response`, `POST …/invocation/{id}/error` and
//! `POST …/runtime/init/error`, with the headers Lambda sends.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The function's answer.
    Response(Bytes),
    /// The function reported an error for this invocation.
    Error(Bytes),
}

struct Invocation {
    id: String,
    payload: Bytes,
    deadline_ms: u64,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<VecDeque<Invocation>>,
    arrived: Notify,
    waiting: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    init_error: Mutex<Option<Bytes>>,
    /// When the function first asked for an event: the end of its cold start.
    first_poll: Mutex<Option<Instant>>,
    polled: Notify,
}

/// A running Runtime API server on loopback.
pub struct RuntimeApi {
    pub address: SocketAddr,
    shared: Arc<Shared>,
    next_id: Mutex<u64>,
    server: tokio::task::JoinHandle<()>,
}

impl RuntimeApi {
    /// Starts the server on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(response),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            address,
            shared,
            next_id: Mutex::new(0),
            server,
        })
    }

    /// Hands `payload` to the function with `timeout` to run, and waits for
    /// its outcome (`None` if it gave none in time plus a grace second).
    pub async fn invoke(&self, payload: impl Into<Bytes>, timeout: Duration) -> Option<Outcome> {
        let id = {
            let mut next = self.next_id.lock().expect("id lock");
            *next += 1;
            format!("invocation-{next}")
        };
        let (done, outcome) = oneshot::channel();
        self.shared
            .waiting
            .lock()
            .expect("waiting lock")
            .insert(id.clone(), done);
        let deadline_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| (d + timeout).as_millis() as u64)
            .unwrap_or(0);
        self.shared
            .queue
            .lock()
            .expect("queue lock")
            .push_back(Invocation {
                id,
                payload: payload.into(),
                deadline_ms,
            });
        self.shared.arrived.notify_one();
        tokio::time::timeout(timeout + Duration::from_secs(1), outcome)
            .await
            .ok()?
            .ok()
    }

    /// When the function first asked for an event; waits for it.
    pub async fn first_poll(&self) -> Instant {
        loop {
            let polled = self.shared.polled.notified();
            if let Some(at) = *self.shared.first_poll.lock().expect("poll lock") {
                return at;
            }
            polled.await;
        }
    }

    /// The error the function reported while starting, if any.
    pub fn init_error(&self) -> Option<Bytes> {
        self.shared.init_error.lock().expect("init lock").clone()
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn next(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    {
        let mut first = shared.first_poll.lock().expect("poll lock");
        if first.is_none() {
            *first = Some(Instant::now());
            shared.polled.notify_waiters();
        }
    }
    let invocation = loop {
        let arrived = shared.arrived.notified();
        if let Some(invocation) = shared.queue.lock().expect("queue lock").pop_front() {
            break invocation;
        }
        arrived.await;
    };
    let mut headers = HeaderMap::new();
    let header = |text: &str| HeaderValue::from_str(text).expect("header value");
    headers.insert("lambda-runtime-aws-request-id", header(&invocation.id));
    headers.insert(
        "lambda-runtime-deadline-ms",
        header(&invocation.deadline_ms.to_string()),
    );
    headers.insert(
        "lambda-runtime-invoked-function-arn",
        header("arn:aws:lambda:us-east-1:000000000000:function:sluice-router"),
    );
    headers.insert(
        "lambda-runtime-trace-id",
        header("Root=1-00000000-000000000000000000000000;Parent=0000000000000000;Sampled=0"),
    );
    headers.insert("content-type", header("application/json"));
    (headers, invocation.payload)
}

fn complete(shared: &Shared, id: &str, outcome: Outcome) -> StatusCode {
    match shared.waiting.lock().expect("waiting lock").remove(id) {
        Some(done) => {
            let _ = done.send(outcome);
            StatusCode::ACCEPTED
        }
        None => StatusCode::BAD_REQUEST,
    }
}

async fn response(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> StatusCode {
    complete(&shared, &id, Outcome::Response(body))
}

async fn error(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> StatusCode {
    complete(&shared, &id, Outcome::Error(body))
}

async fn init_error(State(shared): State<Arc<Shared>>, body: Bytes) -> StatusCode {
    *shared.init_error.lock().expect("init lock") = Some(body);
    StatusCode::ACCEPTED
}
