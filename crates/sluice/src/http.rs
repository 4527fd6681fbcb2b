//! The HTTP server under every route: HTTP/1.1 on hyper with a
//! header-read timeout (slow request heads and idle keep-alive connections
//! are closed), a cap on open connections, each request's peer address, and
//! a graceful stop. The routes themselves are `crate::server::http_routes`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;

/// What the HTTP server allows a connection.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Open connections at most; more are closed as they arrive.
    pub max_connections: usize,
    /// A connection must send a whole request head within this long of
    /// opening or of its last answer: a slow head (slowloris) and an idle
    /// keep-alive connection are both closed after it.
    pub header_read_timeout: Duration,
}

impl HttpLimits {
    pub fn from_config(config: &crate::config::CollectorConfig) -> Self {
        Self {
            max_connections: config.max_connections,
            header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
        }
    }
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `app` over HTTP/1.1 on `listener` within `limits` until
/// `shutdown` completes, then stops accepting, closes idle connections and
/// lets requests in flight finish (up to 30 s). Each request carries its
/// peer's address (`ConnectInfo<SocketAddr>`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    use axum::extract::ConnectInfo;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use sluice_telemetry::metrics;
    use tower::ServiceExt;

    raise_open_files_limit(limits.max_connections);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let open = metrics::COLLECTOR_CONNECTIONS.gauge(&[]);
    let refused = metrics::COLLECTOR_CONNECTIONS_REFUSED.counter(&[]);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection that failed
                    // before it was accepted: wait a moment, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            refused.inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Counted as open until the connection ends, however it ends.
        let guard = (open.hold(1), permit);
        let app = app.clone();
        let service =
            hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let mut request = request.map(axum::body::Body::new);
                request.extensions_mut().insert(ConnectInfo(peer));
                app.clone().oneshot(request)
            });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _ = connection.await;
            drop(guard);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(30)) => {
            tracing::warn!("requests still in flight after 30 s; stopping anyway");
        }
    }
    Ok(())
}

/// Lets the process open a file per connection: raises the soft limit of
/// open files towards the hard one when it is below what `connections`
/// need.
fn raise_open_files_limit(connections: usize) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let wanted = connections as u64 + 256;
    let mut limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    if current >= wanted {
        return;
    }
    let target = limit.maximum.map_or(wanted, |max| max.min(wanted));
    limit.current = Some(target);
    if setrlimit(Resource::Nofile, limit).is_err() || target < wanted {
        tracing::warn!(
            open_files = target,
            max_connections = connections,
            "the open-files limit is below collector.max_connections; connections past it wait to be accepted"
        );
    }
}
