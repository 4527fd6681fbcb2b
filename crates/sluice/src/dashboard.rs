//! The dashboard at `GET /`: one page shipped inside the binary, with no
//! build step and nothing from elsewhere (it works offline), built on the
//! public HTTP APIs only. Its source is `crates/sluice/dashboard/`.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("../dashboard/index.html");
const SCRIPT: &str = include_str!("../dashboard/dashboard.js");

/// Only this origin's scripts, styles and connections; never framed.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn answer(content_type: &'static str, body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

/// The page, told which stream is the inbound one (its live panel's default).
pub fn page(inbound: &str) -> Response {
    let escaped = inbound
        .replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;");
    answer(
        "text/html; charset=utf-8",
        PAGE.replace("{{INBOUND}}", &escaped),
    )
}

pub fn script() -> Response {
    answer("text/javascript; charset=utf-8", SCRIPT.to_owned())
}
