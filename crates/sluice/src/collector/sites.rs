//! Websites as writers: a public write key bound to the origins allowed to
//! use it, CORS for those origins only, and where a request comes from.
//!
//! A write key is public (it stands in the page's source); what it opens is
//! `POST /v1/events` and nothing else. Browsers send it in the query
//! (`?key=…`, since `sendBeacon` cannot set headers) or in a `Sluice-Key`
//! header. The `Origin` a browser sends must be one of the site's; a request
//! without `Origin` is not from a browser and is taken on the key alone
//! (rate limits still apply). Server-to-server senders use bearer tokens
//! instead (`crate::auth`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue, Uri};

use super::limit::RateLimiter;
use crate::config::SiteConfig;

/// An allowed origin: `scheme://host[:port]`, the host exact or with one
/// leading wildcard label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginPattern {
    scheme: String,
    /// The host, or with a wildcard the part after `*` (`.example.com`).
    host: String,
    wildcard: bool,
    port: Option<u16>,
}

impl OriginPattern {
    /// Reads `https://shop.example.com`, `https://*.example.com` or
    /// `http://localhost:3000`; anything else is refused with the reason.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (scheme, host, port) =
            split_origin(text).ok_or_else(|| format!("{text:?} is not an origin: expected scheme://host[:port] with no path, e.g. https://shop.example.com"))?;
        let (host, wildcard) = match host.strip_prefix('*') {
            Some(rest) if rest.starts_with('.') && rest.len() > 1 && !rest.contains('*') => {
                (rest.to_owned(), true)
            }
            Some(_) => {
                return Err(format!(
                    "{text:?}: a wildcard is one leading label, as in https://*.example.com"
                ))
            }
            None if host.contains('*') => {
                return Err(format!(
                    "{text:?}: a wildcard is one leading label, as in https://*.example.com"
                ))
            }
            None => (host.to_owned(), false),
        };
        Ok(Self {
            scheme: scheme.to_owned(),
            host,
            wildcard,
            port,
        })
    }

    /// Whether a browser's `Origin` value is allowed by this pattern.
    pub fn matches(&self, origin: &str) -> bool {
        let Some((scheme, host, port)) = split_origin(origin) else {
            return false;
        };
        if scheme != self.scheme || port != self.port {
            return false;
        }
        if self.wildcard {
            host.strip_suffix(self.host.as_str())
                .is_some_and(|label| !label.is_empty() && !label.contains('.'))
        } else {
            host == self.host
        }
    }
}

/// `scheme://host[:port]` in lower case, the port left out when it is the
/// scheme's default (as browsers send it).
fn split_origin(text: &str) -> Option<(String, String, Option<u16>)> {
    let (scheme, rest) = text.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if !matches!(scheme.as_str(), "http" | "https") || rest.is_empty() {
        return None;
    }
    if rest.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    let (host, port) = match rest.strip_prefix('[').and_then(|r| r.find(']')) {
        // An IPv6 literal: `[::1]` or `[::1]:8080`.
        Some(end) => {
            let (host, after) = rest.split_at(end + 2);
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':')?.parse::<u16>().ok()?)),
            }
        }
        None => match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port.parse::<u16>().ok()?)),
            None => (rest, None),
        },
    };
    if host.is_empty() {
        return None;
    }
    let default_port = if scheme == "https" { 443 } else { 80 };
    let port = port.filter(|p| *p != default_port);
    Some((scheme, host.to_ascii_lowercase(), port))
}

/// One site, ready to check requests.
pub struct Site {
    pub name: String,
    origins: Vec<OriginPattern>,
    /// Each header as `"name"` and its JSON text, written into every envelope.
    pub headers: Vec<(String, Vec<u8>)>,
    pub store_client_address: bool,
    pub limiter: Option<RateLimiter>,
}

impl Site {
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.origins.iter().any(|p| p.matches(origin))
    }
}

/// Every configured site, by write key, with what tells a client's address.
#[derive(Default)]
pub struct Sites {
    by_key: HashMap<String, Arc<Site>>,
    trusted_proxies: Vec<ipnet::IpNet>,
}

impl Sites {
    pub fn new(
        sites: &[SiteConfig],
        trusted_proxies: Vec<ipnet::IpNet>,
        max_clients: usize,
    ) -> Self {
        let by_key = sites
            .iter()
            .map(|site| {
                let runtime = Site {
                    name: site.name.clone(),
                    origins: site.origins.clone(),
                    headers: site
                        .headers
                        .iter()
                        .map(|(name, value)| (name.clone(), value.to_string().into_bytes()))
                        .collect(),
                    store_client_address: site.store_client_address,
                    limiter: site.rate_limit.map(|limit| {
                        RateLimiter::new(limit.events_per_sec, limit.burst, max_clients)
                    }),
                };
                (site.write_key.clone(), Arc::new(runtime))
            })
            .collect();
        Self {
            by_key,
            trusted_proxies,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    pub fn by_key(&self, key: &str) -> Option<&Arc<Site>> {
        self.by_key.get(key)
    }

    /// Whether any site allows `origin` (a preflight may not name its key).
    pub fn any_allows_origin(&self, origin: &str) -> bool {
        self.by_key.values().any(|site| site.allows_origin(origin))
    }

    /// The client's address: the peer's, or, when the peer is a trusted
    /// proxy, the last `X-Forwarded-For` entry that is not one (the one the
    /// first trusted proxy saw). From anyone else the header is ignored.
    pub fn client_address(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> IpAddr {
        let peer = peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.ip());
        if !self.is_trusted(peer) {
            return peer;
        }
        let mut client = peer;
        let entries = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect::<Vec<_>>();
        for entry in entries.iter().rev() {
            match entry.trim().parse::<IpAddr>() {
                Ok(address) => {
                    client = address;
                    if !self.is_trusted(address) {
                        break;
                    }
                }
                // A garbled entry: what lies before it can't be trusted.
                Err(_) => break,
            }
        }
        client
    }

    fn is_trusted(&self, address: IpAddr) -> bool {
        self.trusted_proxies
            .iter()
            .any(|net| net.contains(&address))
    }
}

/// The write key of a request: `?key=` in the query, else the `Sluice-Key`
/// header.
pub fn write_key<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    // Write keys are URL-safe, so the value is taken as it stands; an
    // escaped one is not ours and is refused as unknown.
    let from_query = uri
        .query()
        .and_then(|query| query.split('&').find_map(|pair| pair.strip_prefix("key=")));
    from_query.or_else(|| headers.get("sluice-key").and_then(|v| v.to_str().ok()))
}

/// Headers a browser may send to `POST /v1/events` across origins.
pub const ALLOWED_REQUEST_HEADERS: &[&str] = &["content-type", "sluice-key", "traceparent"];
/// How long a browser may keep a preflight's answer, in seconds.
pub const PREFLIGHT_MAX_AGE_SECS: u32 = 7200;

/// The CORS headers of an answer to an allowed origin.
pub fn allow_origin(headers: &mut HeaderMap, origin: &HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Retry-After"),
    );
}

/// What is wrong with a preflight's requested method and headers, if
/// anything.
pub fn check_preflight(headers: &HeaderMap) -> Result<(), String> {
    let method = headers
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if method != "POST" {
        return Err(format!(
            "only POST is allowed across origins, not {method:?}"
        ));
    }
    let requested = headers
        .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty());
    for name in requested {
        if !ALLOWED_REQUEST_HEADERS.contains(&name.as_str()) {
            return Err(format!(
                "header {name:?} is not allowed across origins; allowed: {}",
                ALLOWED_REQUEST_HEADERS.join(", ")
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_exactly_or_by_one_leading_label() {
        let exact = OriginPattern::parse("https://shop.example.com").unwrap();
        assert!(exact.matches("https://shop.example.com"));
        assert!(exact.matches("https://shop.example.com:443"));
        assert!(!exact.matches("http://shop.example.com"));
        assert!(!exact.matches("https://shop.example.com:8443"));
        assert!(!exact.matches("https://shop.example.com.evil.net"));
        assert!(!exact.matches("null"));

        let wild = OriginPattern::parse("https://*.example.com").unwrap();
        assert!(wild.matches("https://a.example.com"));
        assert!(!wild.matches("https://example.com"));
        assert!(!wild.matches("https://a.b.example.com"));
        assert!(!wild.matches("https://evilexample.com"));
        assert!(!wild.matches("https://.example.com"));

        let local = OriginPattern::parse("http://localhost:3000").unwrap();
        assert!(local.matches("http://localhost:3000"));
        assert!(OriginPattern::parse("http://[::1]:8080")
            .unwrap()
            .matches("http://[::1]:8080"));
        assert!(!local.matches("http://localhost:3001"));
        assert!(!local.matches("http://localhost"));
    }

    #[test]
    fn bad_origins_are_refused_with_the_reason() {
        for (text, reason) in [
            ("shop.example.com", "not an origin"),
            ("https://shop.example.com/", "not an origin"),
            ("ftp://shop.example.com", "not an origin"),
            ("https://*", "one leading label"),
            ("https://a.*.example.com", "one leading label"),
            ("https://*example.com", "one leading label"),
            ("https://shop.example.com:99999", "not an origin"),
        ] {
            let err = OriginPattern::parse(text).unwrap_err();
            assert!(err.contains(reason), "{text}: {err}");
        }
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let sites = Sites::new(&[], vec!["10.0.0.0/8".parse().unwrap()], 10);
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.9, 10.1.1.1".parse().unwrap());
        let proxy: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let stranger: SocketAddr = "198.51.100.7:5000".parse().unwrap();
        assert_eq!(
            sites.client_address(Some(proxy), &headers),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            sites.client_address(Some(stranger), &headers),
            stranger.ip()
        );
        headers.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(sites.client_address(Some(proxy), &headers), proxy.ip());
    }

    #[test]
    fn preflights_ask_for_post_and_known_headers_only() {
        let mut headers = HeaderMap::new();
        headers.insert("access-control-request-method", "POST".parse().unwrap());
        headers.insert(
            "access-control-request-headers",
            "Content-Type, traceparent".parse().unwrap(),
        );
        assert!(check_preflight(&headers).is_ok());
        headers.insert("access-control-request-headers", "x-admin".parse().unwrap());
        assert!(check_preflight(&headers).unwrap_err().contains("x-admin"));
        headers.remove("access-control-request-headers");
        headers.insert("access-control-request-method", "DELETE".parse().unwrap());
        assert!(check_preflight(&headers).unwrap_err().contains("DELETE"));
    }
}
