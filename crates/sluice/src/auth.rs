//! Bearer-token authentication for the `/v1` routes (collector and read
//! API). With no tokens configured every request passes; Sluice then only
//! listens on loopback (checked at start). Sites' public write keys are
//! checked by the collector (`crate::collector::sites`).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::Response;

use crate::error::AppError;

/// The accepted tokens. Never logged.
#[derive(Clone, Default)]
pub struct Tokens(Arc<Vec<String>>);

impl Tokens {
    pub fn new(tokens: Vec<String>) -> Self {
        Self(Arc::new(tokens))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Passes a request with a valid bearer token, or any request when no
    /// tokens are configured.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), AppError> {
        if self.0.is_empty() {
            return Ok(());
        }
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| AppError::Unauthorized("a bearer token is required".into()))?;
        // Compare against every token in constant time, whichever matches.
        let matched = self.0.iter().fold(false, |found, t| {
            found | constant_time_eq(t.as_bytes(), presented.as_bytes())
        });
        if matched {
            Ok(())
        } else {
            Err(AppError::Unauthorized(
                "the bearer token is not valid".into(),
            ))
        }
    }
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.0.len())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Middleware of the read API: refuses the request with 401 unless it
/// carries a valid token, and with 403 when it presents a site's write key
/// (a `Sluice-Key` header, or a `key` in the query that is one), which opens
/// `POST /v1/events` only. A `key` that is no site's is a parameter of the
/// route (a latest view's partition key). Runs before the body is read.
pub async fn require_token(
    State((tokens, collector)): State<(Tokens, std::sync::Arc<crate::collector::Collector>)>,
    request: Request,
    next: Next,
) -> Result<Response, AppError> {
    let presents_write_key = request.headers().contains_key("sluice-key")
        || crate::collector::sites::write_key(request.uri(), request.headers())
            .is_some_and(|key| collector.sites.by_key(key).is_some());
    if presents_write_key {
        return Err(AppError::Forbidden(
            "a write key opens POST /v1/events only; reading needs a bearer token".into(),
        ));
    }
    tokens.check(request.headers())?;
    Ok(next.run(request).await)
}
