//! The browser tracker, served by the collector: `GET /sdk/v1/sluice.js`
//! (a classic script for the snippet) and `GET /sdk/v1/sluice.mjs` (the
//! same source as an ES module exporting `Sluice`). The source is
//! `tracker/sluice.js` in the repository, served as it stands less each
//! line's indentation and its whole-line comments: no build step.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::sync::LazyLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

/// The tracker's source.
pub const SOURCE: &str = include_str!("../../../../tracker/sluice.js");

/// What the module form adds to the source.
const MODULE_EXPORTS: &str = "\nexport const Sluice = globalThis.Sluice;\nexport default Sluice;\n";

/// A script, plain and gzipped, with its validator.
struct Asset {
    plain: Bytes,
    gzip: Bytes,
    etag: HeaderValue,
}

impl Asset {
    fn new(text: String) -> Self {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder
            .write_all(text.as_bytes())
            .expect("gzip into memory");
        let gzip = encoder.finish().expect("gzip into memory");
        let mut hasher = std::hash::DefaultHasher::new();
        text.hash(&mut hasher);
        // Weak: the plain and the gzipped answer are the same script.
        let etag = HeaderValue::from_str(&format!("W/\"{:016x}\"", hasher.finish()))
            .expect("hex is a valid header value");
        Self {
            plain: Bytes::from(text),
            gzip: Bytes::from(gzip),
            etag,
        }
    }

    /// Whether an `If-None-Match` value names this script (weak comparison).
    fn matches(&self, if_none_match: &str) -> bool {
        let ours = self.etag.to_str().unwrap_or("").trim_start_matches("W/");
        if_none_match
            .split(',')
            .map(|tag| tag.trim())
            .any(|tag| tag == "*" || tag.trim_start_matches("W/") == ours)
    }

    fn serve(&self, request: &HeaderMap) -> Response {
        let cached = request
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|tags| self.matches(tags));
        let mut response = if cached {
            StatusCode::NOT_MODIFIED.into_response()
        } else if accepts_gzip(request) {
            let mut response = self.gzip.clone().into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            response
        } else {
            self.plain.clone().into_response()
        };
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/javascript; charset=utf-8"),
        );
        headers.insert(header::ETAG, self.etag.clone());
        // An hour fresh, then revalidated by its ETag: a new version reaches
        // every page within the hour.
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=3600"),
        );
        headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        // Pages on any origin load it (a module across origins needs CORS).
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        headers.insert(
            "cross-origin-resource-policy",
            HeaderValue::from_static("cross-origin"),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        response
    }
}

fn accepts_gzip(request: &HeaderMap) -> bool {
    request
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
            name.eq_ignore_ascii_case("gzip") && !refused
        })
}

/// The source as sent: each line without its indentation, and a line that
/// is only a comment left empty, so that a page downloads about 100 bytes
/// less gzipped. Lines stay where they are: a stack trace's line numbers
/// are the source's. This is safe because no string or template literal
/// in the source spans lines (a test checks).
fn served(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    for line in source.lines() {
        let code = line.trim_start();
        if !code.starts_with("//") {
            out.push_str(code);
        }
        out.push('\n');
    }
    out
}

static SCRIPT: LazyLock<Asset> = LazyLock::new(|| Asset::new(served(SOURCE)));
static MODULE: LazyLock<Asset> =
    LazyLock::new(|| Asset::new(format!("{}{MODULE_EXPORTS}", served(SOURCE))));

/// `GET /sdk/v1/sluice.js`.
pub async fn script(headers: HeaderMap) -> Response {
    SCRIPT.serve(&headers)
}

/// `GET /sdk/v1/sluice.mjs`.
pub async fn module(headers: HeaderMap) -> Response {
    MODULE.serve(&headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_is_sent_to_clients_that_take_it() {
        let mut headers = HeaderMap::new();
        assert!(!accepts_gzip(&headers));
        headers.insert(
            header::ACCEPT_ENCODING,
            "gzip, deflate, br".parse().unwrap(),
        );
        assert!(accepts_gzip(&headers));
        headers.insert(header::ACCEPT_ENCODING, "br, gzip;q=0".parse().unwrap());
        assert!(!accepts_gzip(&headers));
    }

    /// The budget is for what a page downloads: the script as served,
    /// gzipped as the collector sends it.
    #[test]
    fn the_tracker_as_served_stays_within_3000_bytes_gzipped() {
        let size = SCRIPT.gzip.len();
        assert!(size <= 3000, "sluice.js is {size} bytes gzipped as served");
        assert!(MODULE.gzip.len() <= 3000 + MODULE_EXPORTS.len());
    }

    #[test]
    fn the_script_is_served_line_for_line_without_indentation_or_comment_lines() {
        let sent = std::str::from_utf8(&SCRIPT.plain).unwrap();
        assert_eq!(sent.lines().count(), SOURCE.lines().count());
        for (source, sent) in SOURCE.lines().zip(sent.lines()) {
            let code = source.trim_start();
            assert_eq!(sent, if code.starts_with("//") { "" } else { code });
            // Taking indentation out is safe only where no literal spans
            // lines: no line leaves a template literal or a string open.
            assert_eq!(source.matches('`').count() % 2, 0, "{source}");
            assert!(!source.ends_with('\\'), "{source}");
        }
        assert!(sent.starts_with("/*! Sluice tracker */\n"));
        assert!(sent.len() < SOURCE.len() * 9 / 10);
    }

    #[test]
    fn an_unchanged_script_is_answered_304_by_its_etag() {
        let ok = SCRIPT.serve(&HeaderMap::new());
        assert_eq!(ok.status(), StatusCode::OK);
        let etag = ok.headers()[header::ETAG].clone();
        let mut again = HeaderMap::new();
        again.insert(header::IF_NONE_MATCH, etag.clone());
        let cached = SCRIPT.serve(&again);
        assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(cached.headers()[header::ETAG], etag);
        again.insert(header::IF_NONE_MATCH, "W/\"0\"".parse().unwrap());
        assert_eq!(SCRIPT.serve(&again).status(), StatusCode::OK);
        assert_ne!(MODULE.etag, SCRIPT.etag);
    }
}
