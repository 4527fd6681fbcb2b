//! HTTP errors, mapped to status codes in one place.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::collector::ingest::Rejection;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    /// A rate limit: try again after the given number of seconds.
    #[error("{reason}")]
    TooManyRequests {
        reason: String,
        retry_after_secs: u32,
    },
    /// Try again after the given number of seconds.
    #[error("{reason}")]
    Unavailable {
        reason: String,
        retry_after_secs: u32,
    },
    #[error("{0}")]
    Internal(String),
    /// Some events of a request were refused; nothing was written.
    #[error("{} events rejected", .0.len())]
    Rejected(Vec<Rejection>),
}

impl From<axum::extract::rejection::QueryRejection> for AppError {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> Self {
        AppError::BadRequest(rejection.body_text())
    }
}

/// The answer to a path no route serves, in the API's error shape.
pub async fn not_found(uri: axum::http::Uri) -> AppError {
    AppError::NotFound(format!("no such path: {}", uri.path()))
}

/// The answer to a method a route does not take, in the API's error shape.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(serde_json::json!({
            "error": format!("{method} is not allowed on {}", uri.path())
        })),
    )
        .into_response()
}

/// How many rejections a response lists.
const MAX_LISTED: usize = 100;

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = match &self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            AppError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            AppError::Rejected(rejections) => {
                if rejections.iter().all(|r| r.status == 413) {
                    StatusCode::PAYLOAD_TOO_LARGE
                } else {
                    StatusCode::BAD_REQUEST
                }
            }
        };
        let mut response = match self {
            AppError::Rejected(rejections) => {
                let count = rejections.len();
                let listed: Vec<_> = rejections.into_iter().take(MAX_LISTED).collect();
                let body = serde_json::json!({
                    "error": format!("{count} event(s) rejected; nothing was accepted"),
                    "accepted": 0,
                    "rejected_count": count,
                    "rejected": listed,
                });
                (status, Json(body)).into_response()
            }
            AppError::Unavailable {
                reason,
                retry_after_secs,
            }
            | AppError::TooManyRequests {
                reason,
                retry_after_secs,
            } => {
                let mut response =
                    (status, Json(serde_json::json!({ "error": reason }))).into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
                response
            }
            AppError::Internal(message) => {
                tracing::error!(error = %message, "internal error");
                (status, Json(serde_json::json!({ "error": message }))).into_response()
            }
            other => (
                status,
                Json(serde_json::json!({ "error": other.to_string() })),
            )
                .into_response(),
        };
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
