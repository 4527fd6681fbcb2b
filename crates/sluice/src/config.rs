//! The configuration file (`sluice.toml`): inbound stream, backend,
//! collector, router, and the routing rules.
//!
//! Every table refuses unknown keys, and the whole file is checked before
//! anything starts; an error names the file, the line and the reason.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sluice_core::limits::{MAX_PARTITION_KEY_CHARS, MAX_RECORD_BYTES};
use sluice_core::retry::Backoff;
use sluice_core::rules::{self, DeadLetter, Route, RuleSet, Unmatched};

pub use crate::collector::sites::OriginPattern;

/// The example configuration, also used when no file is given or found.
pub const DEFAULT_CONFIG: &str = include_str!("../../../sluice.toml");

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The stream the collector writes and the router reads.
    #[serde(default = "default_inbound", deserialize_with = "stream_name")]
    pub inbound: String,
    #[serde(default)]
    pub backend: BackendConfig,
    #[serde(default)]
    pub streams: StreamsConfig,
    #[serde(default)]
    pub collector: CollectorConfig,
    #[serde(default)]
    pub router: RouterConfig,
    #[serde(default, deserialize_with = "rules::route_list")]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub unmatched: Unmatched,
    #[serde(default)]
    pub dead_letter: DeadLetter,
    /// Settings per output stream, by name.
    #[serde(default)]
    pub outputs: BTreeMap<String, OutputConfig>,
    /// Fault injection, for tests and drills only.
    #[serde(default)]
    pub faults: Option<FaultsConfig>,
    /// Websites whose pages send events from visitors' browsers.
    #[serde(default)]
    pub sites: Vec<SiteConfig>,
    /// Live feeds: `GET /v1/streams/{name}/live`.
    #[serde(default)]
    pub live: LiveConfig,
    /// Aggregates kept of streams: `GET /v1/views/{name}`.
    #[serde(default)]
    pub views: Vec<crate::views::ViewConfig>,
    /// The table of the views' cells (default "sluice-views"); each view's
    /// lease table is named after it (`TABLE-VIEW`).
    #[serde(default = "default_views_table")]
    pub views_table: String,
}

fn default_views_table() -> String {
    "sluice-views".into()
}

/// Live feeds (Server-Sent Events). One reader per stream per process
/// serves every subscriber of that stream.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveConfig {
    /// Wait before a stream's reader reads again when it found nothing, in
    /// milliseconds (default 10; Kinesis's read interval is kept anyway).
    #[serde(default = "default_live_idle_poll_ms")]
    pub idle_poll_ms: u64,
    /// Records a stream's reader keeps for its subscribers (default 4,096):
    /// a subscriber further behind than this is cut off (`event: lagged`).
    #[serde(default = "default_live_buffer")]
    pub buffer: usize,
    /// Subscribers this process serves at once, over all streams (default 10,000).
    #[serde(default = "default_live_max_subscribers")]
    pub max_subscribers: usize,
    /// Seconds between keep-alive comments on a quiet feed (default 15).
    #[serde(default = "default_live_keep_alive_secs")]
    pub keep_alive_secs: u64,
}

fn default_live_idle_poll_ms() -> u64 {
    10
}
fn default_live_buffer() -> usize {
    4096
}
fn default_live_max_subscribers() -> usize {
    10_000
}
fn default_live_keep_alive_secs() -> u64 {
    15
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            idle_poll_ms: default_live_idle_poll_ms(),
            buffer: default_live_buffer(),
            max_subscribers: default_live_max_subscribers(),
            keep_alive_secs: default_live_keep_alive_secs(),
        }
    }
}

impl LiveConfig {
    fn check(&self) -> Result<(), String> {
        if self.idle_poll_ms == 0 {
            return Err(
                "live.idle_poll_ms: expected at least 1 (0 reads idle shards in a hot loop)".into(),
            );
        }
        if !(16..=1_000_000).contains(&self.buffer) {
            return Err(format!(
                "live.buffer: expected 16 to 1,000,000, found {}",
                self.buffer
            ));
        }
        if self.max_subscribers == 0 {
            return Err("live.max_subscribers: expected at least 1".into());
        }
        if !(1..=3600).contains(&self.keep_alive_secs) {
            return Err(format!(
                "live.keep_alive_secs: expected 1 to 3,600, found {}",
                self.keep_alive_secs
            ));
        }
        Ok(())
    }
}

/// A website: a public write key bound to the origins allowed to use it.
/// The key opens `POST /v1/events` and nothing else.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// The site's name (1 to 128 characters), in metrics and the dedup window.
    #[serde(deserialize_with = "site_name")]
    pub name: String,
    /// Public: it stands in the page's source. 8 to 128 characters of
    /// `A-Z a-z 0-9 _ -`.
    #[serde(deserialize_with = "write_key")]
    pub write_key: String,
    /// Origins allowed to use the key: exact (`https://shop.example.com`,
    /// `http://localhost:3000`) or with one leading wildcard label
    /// (`https://*.example.com` takes `https://a.example.com`, not
    /// `https://example.com` nor `https://a.b.example.com`).
    #[serde(deserialize_with = "origin_list")]
    pub origins: Vec<OriginPattern>,
    /// Events per second per client address, with a burst (optional).
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// Headers added to every event of this site; they replace a sender's
    /// header of the same name. Strings, numbers or booleans.
    #[serde(default, deserialize_with = "site_headers")]
    pub headers: Vec<(String, serde_json::Value)>,
    /// Store the client's address in a `client_address` header (default
    /// false: addresses are used for rate limits only, never stored).
    #[serde(default)]
    pub store_client_address: bool,
}

/// A token bucket: `burst` events at once, refilled at `events_per_sec`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    #[serde(deserialize_with = "positive_rate")]
    pub events_per_sec: f64,
    #[serde(deserialize_with = "positive_burst")]
    pub burst: u32,
}

fn site_name<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let name = String::deserialize(deserializer)?;
    if name.is_empty() || name.chars().count() > 128 {
        return Err(serde::de::Error::custom(
            "a site name is 1 to 128 characters",
        ));
    }
    Ok(name)
}

fn write_key<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let key = String::deserialize(deserializer)?;
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if !(8..=128).contains(&key.len()) || !key.chars().all(allowed) {
        return Err(serde::de::Error::custom(
            "a write key is 8 to 128 characters of A-Z, a-z, 0-9, `_` and `-`",
        ));
    }
    Ok(key)
}

fn origin_list<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<OriginPattern>, D::Error> {
    let texts = Vec::<String>::deserialize(deserializer)?;
    if texts.is_empty() {
        return Err(serde::de::Error::custom("a site needs at least one origin"));
    }
    texts
        .iter()
        .map(|text| OriginPattern::parse(text).map_err(serde::de::Error::custom))
        .collect()
}

fn site_headers<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<(String, serde_json::Value)>, D::Error> {
    let headers = BTreeMap::<String, serde_json::Value>::deserialize(deserializer)?;
    if headers.len() > 16 {
        return Err(serde::de::Error::custom("a site adds at most 16 headers"));
    }
    for (name, value) in &headers {
        if matches!(
            name.as_str(),
            "type" | "event_id" | "ts" | "traceparent" | "client_address"
        ) {
            return Err(serde::de::Error::custom(format!(
                "header `{name}` is set by the collector, not by a site"
            )));
        }
        if name.is_empty() || name.chars().count() > 128 {
            return Err(serde::de::Error::custom(
                "header names are 1 to 128 characters",
            ));
        }
        if !(value.is_string() || value.is_number() || value.is_boolean()) {
            return Err(serde::de::Error::custom(format!(
                "header `{name}`: expected a string, number or boolean"
            )));
        }
    }
    Ok(headers.into_iter().collect())
}

fn positive_rate<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    let rate = f64::deserialize(deserializer)?;
    if !(rate.is_finite() && rate > 0.0) {
        return Err(serde::de::Error::custom(format!(
            "expected events per second above 0, found {rate}"
        )));
    }
    Ok(rate)
}

fn positive_burst<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let burst = u32::deserialize(deserializer)?;
    if burst == 0 {
        return Err(serde::de::Error::custom("expected a burst of at least 1"));
    }
    Ok(burst)
}

fn trusted_proxies<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<ipnet::IpNet>, D::Error> {
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|text| {
            text.parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "{text:?} is not an IP address or a CIDR block"
                    ))
                })
        })
        .collect()
}

/// How the router writes one output stream.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// Pack routed records into KPL aggregated records, per target shard, in
    /// order per partition key (default false). Consumers de-aggregate.
    #[serde(default)]
    pub aggregate: bool,
    /// Largest aggregated record, in bytes (default 51,200; 1024 to 1 MiB).
    #[serde(default = "default_aggregate_max_bytes")]
    pub aggregate_max_bytes: usize,
}

impl OutputConfig {
    /// The producer's aggregation setting.
    pub fn aggregation(&self) -> Option<usize> {
        self.aggregate.then_some(self.aggregate_max_bytes)
    }
}

fn check_aggregate_max(key: &str, value: usize) -> Result<(), String> {
    if (1024..=MAX_RECORD_BYTES).contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "{key}: expected 1024 to {MAX_RECORD_BYTES}, found {value}"
        ))
    }
}

/// Makes the pipeline's stream backend misbehave at the given rates (0 to 1):
/// failed PutRecords entries (throttled), failed calls, calls that write and
/// then time out, throttled GetRecords, expired shard iterators, and delays.
/// Seeded, so a run can be repeated. The read API is left undisturbed.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsConfig {
    #[serde(default)]
    pub entry_failure_rate: f64,
    #[serde(default)]
    pub call_failure_rate: f64,
    #[serde(default)]
    pub timeout_rate: f64,
    #[serde(default)]
    pub read_throttle_rate: f64,
    #[serde(default)]
    pub expired_iterator_rate: f64,
    #[serde(default)]
    pub empty_page_rate: f64,
    #[serde(default)]
    pub delay_rate: f64,
    #[serde(default)]
    pub max_delay_ms: u64,
    #[serde(default)]
    pub seed: u64,
}

fn default_inbound() -> String {
    "inbound".into()
}

fn stream_name<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let name = String::deserialize(deserializer)?;
    rules::check_stream_name(&name).map_err(serde::de::Error::custom)?;
    Ok(name)
}

/// Which backend holds streams and tables.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum BackendConfig {
    /// Embedded, durable storage in one directory.
    Local {
        /// Where data lives (default `sluice-data` under the working directory).
        #[serde(default)]
        data_dir: Option<PathBuf>,
        /// How long records are kept (default 24).
        #[serde(default = "default_retention")]
        retention_hours: u32,
    },
    /// Kinesis Data Streams and DynamoDB, credentials from the standard AWS
    /// chain (environment, profile, container or instance role).
    Aws(AwsBackendConfig),
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AwsBackendConfig {
    /// Region (default: the SDK's chain, e.g. AWS_REGION).
    #[serde(default)]
    pub region: Option<String>,
    /// Kinesis endpoint URL, for a local API server (default: the SDK's,
    /// which honours AWS_ENDPOINT_URL_KINESIS).
    #[serde(default, deserialize_with = "endpoint")]
    pub kinesis_endpoint: Option<String>,
    /// DynamoDB endpoint URL (default: the SDK's, which honours AWS_ENDPOINT_URL_DYNAMODB).
    #[serde(default, deserialize_with = "endpoint")]
    pub dynamodb_endpoint: Option<String>,
    /// Create missing streams and tables and wait until they are ACTIVE.
    /// When false (the default) a missing one stops start-up with its name.
    #[serde(default)]
    pub create_missing: bool,
}

impl AwsBackendConfig {
    /// What the AWS backend connects with.
    pub fn settings(&self) -> sluice_backends::aws::AwsSettings {
        sluice_backends::aws::AwsSettings {
            region: self.region.clone(),
            kinesis_endpoint: self.kinesis_endpoint.clone(),
            dynamodb_endpoint: self.dynamodb_endpoint.clone(),
            wait_active: None,
        }
    }
}

fn endpoint<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let url = String::deserialize(deserializer)?;
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
        return Err(serde::de::Error::custom(format!(
            "{url:?} is not an http:// or https:// URL"
        )));
    }
    Ok(Some(url))
}

fn default_retention() -> u32 {
    24
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig::Local {
            data_dir: None,
            retention_hours: default_retention(),
        }
    }
}

/// Shard counts of the streams Sluice creates.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamsConfig {
    /// Shards of the inbound stream (default 4).
    #[serde(default = "default_inbound_shards")]
    pub inbound_shards: u32,
    /// Shards of each output stream (default 2).
    #[serde(default = "default_output_shards")]
    pub output_shards: u32,
}

fn default_inbound_shards() -> u32 {
    4
}
fn default_output_shards() -> u32 {
    2
}

impl Default for StreamsConfig {
    fn default() -> Self {
        Self {
            inbound_shards: default_inbound_shards(),
            output_shards: default_output_shards(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    /// Address of the HTTP server: collector, read API and /metrics (default 127.0.0.1:8080).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Largest envelope one event may make, in bytes (default 256 KiB, at most 1 MiB).
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
    /// Largest request body, in bytes (default 8 MiB).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Most events in one request (default 10,000).
    #[serde(default = "default_max_events")]
    pub max_events_per_request: usize,
    /// Events waiting for the stream across all requests; past it, 503 (default 100,000).
    #[serde(default = "default_queue_events")]
    pub queue_events: usize,
    /// Header whose value becomes the partition key when an event gives none.
    #[serde(default)]
    pub partition_key_header: Option<String>,
    /// The `source` header set when an event's headers have none (default "web").
    #[serde(default = "default_source")]
    pub source: String,
    /// How long a part-full batch waits to fill, in milliseconds (default 0: a
    /// shard sends as soon as its previous call returned, and records that
    /// arrive meanwhile fill the next call).
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Pack events into KPL aggregated records on the inbound stream (default
    /// false). Fewer, larger records: fewer PutRecords calls and PUT payload
    /// units on AWS. The router and the read API open them.
    #[serde(default)]
    pub aggregate: bool,
    /// Largest aggregated record, in bytes (default 51,200 as in the KPL; at
    /// most 1 MiB).
    #[serde(default = "default_aggregate_max_bytes")]
    pub aggregate_max_bytes: usize,
    /// Retry timing for PutRecords.
    #[serde(default)]
    pub retry: Backoff,
    /// Name of an environment variable holding the accepted bearer tokens,
    /// comma-separated. Unset: no authentication, allowed on loopback only.
    #[serde(default)]
    pub tokens_env: Option<String>,
    /// Proxies (addresses or CIDR blocks) whose `X-Forwarded-For` names the
    /// client; from anyone else the header is ignored (default none).
    #[serde(default, deserialize_with = "trusted_proxies")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// An event id a site's sender repeats within this many seconds is
    /// acknowledged and not written again (default 600; 0 turns it off).
    #[serde(default = "default_dedup_window_secs")]
    pub dedup_window_secs: u64,
    /// Most event ids the dedup window holds; past it the oldest go first
    /// (default 500,000, about 30 MB).
    #[serde(default = "default_dedup_max_events")]
    pub dedup_max_events: usize,
    /// Most client addresses the rate limiter tracks at once; new addresses
    /// past it share one bucket per site (default 100,000).
    #[serde(default = "default_rate_limit_max_clients")]
    pub rate_limit_max_clients: usize,
    /// Most open connections; more are closed as they arrive (default 10,000).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A connection that does not send a whole request head within this
    /// many milliseconds is closed: it bounds a slow request head and an
    /// idle keep-alive connection alike (default 10,000).
    #[serde(default = "default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
}

fn default_dedup_window_secs() -> u64 {
    600
}
fn default_dedup_max_events() -> usize {
    500_000
}
fn default_rate_limit_max_clients() -> usize {
    100_000
}
fn default_max_connections() -> usize {
    10_000
}
fn default_header_read_timeout_ms() -> u64 {
    10_000
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:8080".parse().expect("valid address")
}
fn default_max_event_bytes() -> usize {
    256 * 1024
}
fn default_max_body_bytes() -> usize {
    8 * 1024 * 1024
}
fn default_max_events() -> usize {
    10_000
}
fn default_queue_events() -> usize {
    100_000
}
fn default_source() -> String {
    "web".into()
}
fn default_aggregate_max_bytes() -> usize {
    51_200
}
fn default_linger_ms() -> u64 {
    0
}

impl Default for CollectorConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// Records larger than this go to dead-letter (default and maximum 1 MiB).
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// Records read per GetRecords call (default 1,000, at most 10,000).
    #[serde(default = "default_batch")]
    pub batch_records: usize,
    /// Wait before reading a shard again when it had nothing, in milliseconds (default 50).
    #[serde(default = "default_poll_ms")]
    pub idle_poll_ms: u64,
    /// Table holding the router's checkpoints (default "sluice-router").
    #[serde(default = "default_checkpoint_table")]
    pub checkpoint_table: String,
    /// A router process silent this long loses its shards to the other
    /// router processes, in milliseconds (default 10,000).
    #[serde(default = "default_failover_ms")]
    pub failover_ms: u64,
    #[serde(default)]
    pub retry: Backoff,
}

/// The shortest lease failover time accepted, in milliseconds: renewals come
/// every third of it, and shorter ones would spin against the lease table.
pub const MIN_FAILOVER_MS: u64 = 300;

fn default_max_record_bytes() -> usize {
    MAX_RECORD_BYTES
}
fn default_batch() -> usize {
    1000
}
fn default_poll_ms() -> u64 {
    50
}
fn default_failover_ms() -> u64 {
    10_000
}
fn default_checkpoint_table() -> String {
    "sluice-router".into()
}

impl Default for RouterConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

/// A configuration error, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("config error in {file}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub message: String,
}

/// The line (from 1) of the deepest part of a key path found in `text`:
/// `collector.retry.base_ms`, `outputs.NAME`, `sites[1].write_key`.
fn line_of(text: &str, path: &str) -> Option<usize> {
    let document = toml_edit::ImDocument::parse(text).ok()?;
    let mut item = document.as_item();
    let mut span = None;
    for segment in path.split('.').filter(|s| !s.is_empty()) {
        let (name, index) = match segment.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        let Some(next) = item.get(name) else {
            break;
        };
        item = next;
        // An array of tables has no place of its own: its first table's.
        span = item
            .span()
            .or_else(|| item.get(0).and_then(|first| first.span()))
            .or(span);
        if let Some(index) = index {
            let Some(next) = item.get(index) else {
                break;
            };
            item = next;
            span = item.span().or(span);
        }
    }
    let start = span?.start;
    Some(text[..start].matches('\n').count() + 1)
}

impl Config {
    /// Parses and checks a configuration text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let error = |message: String| ConfigError {
            file: file.to_owned(),
            message,
        };
        let config: Config =
            toml::from_str(text).map_err(|e| error(e.to_string().trim_end().to_owned()))?;
        config.check().map_err(|message| {
            // The message starts with the key it is about: find its line.
            let key = message.split_once(':').map_or("", |(key, _)| key);
            match line_of(text, key) {
                Some(line) => error(format!("line {line}: {message}")),
                None => error(message),
            }
        })?;
        Ok(config)
    }

    /// Reads `path`, or the default configuration when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                    file: path.display().to_string(),
                    message: e.to_string(),
                })?;
                Self::parse(&text, &path.display().to_string())
            }
            None => Self::parse(DEFAULT_CONFIG, "the built-in default configuration"),
        }
    }

    fn check(&self) -> Result<(), String> {
        self.live.check()?;
        let c = &self.collector;
        if c.max_event_bytes == 0 || c.max_event_bytes > MAX_RECORD_BYTES {
            return Err(format!(
                "collector.max_event_bytes: expected 1 to {MAX_RECORD_BYTES}, found {}",
                c.max_event_bytes
            ));
        }
        if c.max_events_per_request == 0 || c.max_events_per_request > c.queue_events {
            return Err(format!(
                "collector.max_events_per_request: expected 1 to collector.queue_events ({}), found {}",
                c.queue_events, c.max_events_per_request
            ));
        }
        if c.max_body_bytes == 0 || c.max_body_bytes > 256 * 1024 * 1024 {
            return Err("collector.max_body_bytes: expected 1 byte to 256 MiB".into());
        }
        if c.linger_ms > 10_000 {
            return Err("collector.linger_ms: expected at most 10,000".into());
        }
        if let Some(header) = &c.partition_key_header {
            if header.is_empty() {
                return Err("collector.partition_key_header: expected a header name".into());
            }
        }
        if c.source.is_empty() || c.source.chars().count() > MAX_PARTITION_KEY_CHARS {
            return Err("collector.source: expected 1 to 256 characters".into());
        }
        let r = &self.router;
        if r.max_record_bytes == 0 || r.max_record_bytes > MAX_RECORD_BYTES {
            return Err(format!(
                "router.max_record_bytes: expected 1 to {MAX_RECORD_BYTES}"
            ));
        }
        if r.batch_records == 0 || r.batch_records > sluice_core::limits::MAX_GET_RECORDS {
            return Err("router.batch_records: expected 1 to 10,000".into());
        }
        if r.failover_ms < MIN_FAILOVER_MS {
            return Err(format!(
                "router.failover_ms: expected at least {MIN_FAILOVER_MS} (leases are renewed every third of it), found {}",
                r.failover_ms
            ));
        }
        if r.idle_poll_ms == 0 {
            return Err(
                "router.idle_poll_ms: expected at least 1 (0 reads idle shards in a hot loop)"
                    .into(),
            );
        }
        c.retry.check("collector.retry")?;
        r.retry.check("router.retry")?;
        for (key, shards) in [
            ("streams.inbound_shards", self.streams.inbound_shards),
            ("streams.output_shards", self.streams.output_shards),
        ] {
            if shards == 0 || shards > 1024 {
                return Err(format!("{key}: expected 1 to 1024, found {shards}"));
            }
        }
        if let Some(f) = &self.faults {
            let rates = [
                ("faults.entry_failure_rate", f.entry_failure_rate),
                ("faults.call_failure_rate", f.call_failure_rate),
                ("faults.timeout_rate", f.timeout_rate),
                ("faults.read_throttle_rate", f.read_throttle_rate),
                ("faults.expired_iterator_rate", f.expired_iterator_rate),
                ("faults.empty_page_rate", f.empty_page_rate),
                ("faults.delay_rate", f.delay_rate),
            ];
            for (key, rate) in rates {
                if !(0.0..=1.0).contains(&rate) {
                    return Err(format!(
                        "{key}: expected a fraction from 0 to 1, found {rate}"
                    ));
                }
            }
        }
        check_aggregate_max("collector.aggregate_max_bytes", c.aggregate_max_bytes)?;
        if c.max_connections == 0 {
            return Err("collector.max_connections: expected at least 1".into());
        }
        if !(100..=600_000).contains(&c.header_read_timeout_ms) {
            return Err(format!(
                "collector.header_read_timeout_ms: expected 100 to 600,000, found {}",
                c.header_read_timeout_ms
            ));
        }
        if c.dedup_window_secs > 0 && c.dedup_max_events == 0 {
            return Err(
                "collector.dedup_max_events: expected at least 1 while dedup_window_secs is set"
                    .into(),
            );
        }
        if c.rate_limit_max_clients == 0 {
            return Err("collector.rate_limit_max_clients: expected at least 1".into());
        }
        for (i, site) in self.sites.iter().enumerate() {
            if let Some(other) = self.sites[..i].iter().find(|s| s.name == site.name) {
                return Err(format!(
                    "sites[{i}].name: another site is named {:?}",
                    other.name
                ));
            }
            if let Some(other) = self.sites[..i]
                .iter()
                .find(|s| s.write_key == site.write_key)
            {
                return Err(format!(
                    "sites[{i}].write_key: site {:?} has the same write_key as {:?}",
                    site.name, other.name
                ));
            }
        }
        let rules = self.rules();
        for (name, output) in &self.outputs {
            if !rules.streams().contains(name) {
                return Err(format!(
                    "outputs.{name}: no route, unmatched or dead_letter writes to stream {name}"
                ));
            }
            check_aggregate_max(
                &format!("outputs.{name}.aggregate_max_bytes"),
                output.aggregate_max_bytes,
            )?;
        }
        if let Some(i) = self
            .routes
            .iter()
            .position(|r| r.to.contains(&self.inbound))
        {
            return Err(format!(
                "routes[{i}].to: stream {:?} is the inbound stream; routing into it would loop",
                self.inbound
            ));
        }
        for (key, to) in [
            ("unmatched.to", &self.unmatched.to),
            ("dead_letter.to", &self.dead_letter.to),
        ] {
            if *to == self.inbound {
                return Err(format!(
                    "{key}: stream {:?} is the inbound stream; routing into it would loop",
                    self.inbound
                ));
            }
        }
        self.view_specs()?;
        Ok(())
    }

    /// The views, checked.
    pub fn view_specs(&self) -> Result<Vec<crate::views::ViewSpec>, String> {
        let table_ok = (3..=200).contains(&self.views_table.len())
            && self
                .views_table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !table_ok {
            return Err(format!(
                "views_table: {:?} must be 3 to 200 of A-Z a-z 0-9 _ . -",
                self.views_table
            ));
        }
        let rules = self.rules();
        let mut specs: Vec<crate::views::ViewSpec> = Vec::new();
        for (i, view) in self.views.iter().enumerate() {
            let spec = view.check(&format!("views[{i}]"))?;
            if specs.iter().any(|s| s.name == spec.name) {
                return Err(format!(
                    "views[{i}].name: another view is named {:?}",
                    spec.name
                ));
            }
            if spec.from != self.inbound && !rules.streams().contains(&spec.from) {
                return Err(format!(
                    "views[{i}].from: no stream {:?} in this configuration (the inbound stream, or one a route, unmatched or dead_letter writes)",
                    spec.from
                ));
            }
            specs.push(spec);
        }
        Ok(specs)
    }

    /// The routing rules, compiled.
    pub fn rules(&self) -> RuleSet {
        RuleSet::new(&self.routes, &self.unmatched, &self.dead_letter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key the configuration structs take, as `table.key` paths
    /// (`sites.name`, `outputs.NAME.aggregate`), read off the `Debug` form
    /// of `config`: a field's name is its key (no field is renamed), and a
    /// field set to `None` is still printed. Routes, views and the
    /// unmatched and dead-letter tables have their own sections.
    fn struct_keys(config: &Config) -> std::collections::BTreeSet<String> {
        let text = format!("{config:#?}");
        let mut keys = std::collections::BTreeSet::new();
        let mut segments: Vec<String> = Vec::new();
        for line in text.lines() {
            let depth = (line.len() - line.trim_start().len()) / 4;
            let line = line.trim_start();
            let (segment, named) = match line.split_once(": ") {
                Some((name, _)) if name.starts_with('"') => ("NAME".to_owned(), false),
                Some((name, _)) if name.chars().all(|c| c.is_ascii_lowercase() || c == '_') => {
                    (name.to_owned(), true)
                }
                _ => (String::new(), false),
            };
            segments.truncate(depth);
            while segments.len() < depth {
                segments.push(String::new());
            }
            segments.push(segment);
            if named {
                let path: Vec<&str> = segments
                    .iter()
                    .filter(|s| !s.is_empty())
                    .map(String::as_str)
                    .collect();
                if !matches!(path[0], "routes" | "views" | "unmatched" | "dead_letter") {
                    keys.insert(path.join("."));
                }
            }
        }
        keys
    }

    /// Whether `key` is among `documented`, itself or (below the top
    /// level) through a documented table it belongs to, as
    /// `collector.retry` documents `collector.retry.base_ms`.
    fn is_documented(key: &str, documented: &std::collections::BTreeSet<String>) -> bool {
        let parts: Vec<&str> = key.split('.').collect();
        (2..=parts.len()).any(|n| documented.contains(&parts[..n].join(".")))
            || documented.contains(key)
    }

    #[test]
    fn every_key_of_the_config_structs_is_in_sluice_toml_and_the_readme() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        // A config with every optional table set, and one on AWS.
        let full = r#"
[backend]
kind = "local"
[faults]
seed = 1
[[sites]]
name = "shop"
write_key = "wk_shop_example"
origins = ["https://shop.example.com"]
rate_limit = { events_per_sec = 1, burst = 1 }
[outputs.clicks]
aggregate = true
[unmatched]
to = "clicks"
"#;
        let aws = "[backend]\nkind = \"aws\"\n";
        let mut keys = struct_keys(&Config::parse(full, "full").unwrap());
        keys.extend(struct_keys(&Config::parse(aws, "aws").unwrap()));
        assert!(keys.contains("collector.retry.base_ms"), "{keys:?}");
        assert!(keys.contains("backend.kinesis_endpoint"), "{keys:?}");
        assert!(
            keys.contains("outputs.NAME.aggregate_max_bytes"),
            "{keys:?}"
        );
        assert!(keys.contains("sites.rate_limit.burst"), "{keys:?}");

        // sluice.toml: every `key =` line, set or commented out, under the
        // table header before it.
        let example = std::fs::read_to_string(format!("{root}/sluice.toml")).unwrap();
        let mut in_example = std::collections::BTreeSet::new();
        let mut table = String::new();
        for line in example.lines() {
            let line = line.trim_start_matches('#').trim();
            if let Some(header) = line.strip_prefix('[') {
                let name = header.trim_start_matches('[');
                table = name[..name.find(']').unwrap()].to_owned();
                continue;
            }
            if let Some((key, _)) = line.split_once(" = ") {
                let key = key.trim();
                if key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    let path = if table.is_empty() {
                        key.to_owned()
                    } else {
                        format!("{table}.{key}")
                    };
                    // An output's table is named after its stream.
                    let path = match path.strip_prefix("outputs.") {
                        Some(rest) => format!("outputs.NAME.{}", rest.split_once('.').unwrap().1),
                        None => path,
                    };
                    in_example.insert(path);
                }
            }
        }
        // The README's reference: every `key` in the section.
        let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
        let section = readme
            .split("## Configuration reference")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .unwrap();
        let mut in_readme = std::collections::BTreeSet::new();
        let mut faults = false;
        for (i, quoted) in section.split('`').enumerate() {
            if i % 2 == 1 {
                let key = quoted.replace("[]", "");
                if key == "[faults]" {
                    faults = true;
                } else if faults && !key.contains('.') {
                    in_readme.insert(format!("faults.{key}"));
                } else {
                    in_readme.insert(key);
                }
            }
        }

        // Leaves only: a table is documented by its keys.
        let keys: Vec<&String> = keys
            .iter()
            .filter(|k| !keys.iter().any(|other| other.starts_with(&format!("{k}."))))
            .collect();
        let missing_in_example: Vec<_> = keys
            .iter()
            .filter(|k| !is_documented(k, &in_example))
            .collect();
        assert!(
            missing_in_example.is_empty(),
            "not in sluice.toml: {missing_in_example:?}"
        );
        let missing_in_readme: Vec<_> = keys
            .iter()
            .filter(|k| !is_documented(k, &in_readme))
            .collect();
        assert!(
            missing_in_readme.is_empty(),
            "not in the README's reference: {missing_in_readme:?}"
        );
    }

    #[test]
    fn the_default_configuration_is_valid() {
        let config = Config::load(None).unwrap();
        assert_eq!(config.inbound, "inbound");
        assert!(!config.routes.is_empty());
        assert_eq!(config.collector.listen, default_listen());
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_problem() {
        let cases = [
            (
                "inbound = \"in\"\n[collector]\nlisten = \"nowhere\"\n",
                "line 3",
                "invalid socket address",
            ),
            (
                "[collector]\nlisten_port = 1\n",
                "line 2",
                "unknown field `listen_port`",
            ),
            (
                "[backend]\nkind = \"cloud\"\n",
                "line 2",
                "unknown variant `cloud`",
            ),
            (
                "[backend]\nkind = \"aws\"\nkinesis_endpoint = \"localhost:4567\"\n",
                "line 1",
                "not an http:// or https:// URL",
            ),
            (
                "[backend]\nkind = \"aws\"\nregoin = \"eu-west-1\"\n",
                "line 1",
                "unknown field `regoin`",
            ),
            (
                "[[views]]\nname = \"v\"\nfrom = \"inbound\"\nkind = \"sum\"\n",
                "line 1",
                "views[0].field: a sum view needs the field it reads",
            ),
            (
                "[[views]]\nname = \"v\"\nfrom = \"inbound\"\nkind = \"count\"\nwindow = \"7m\"\n",
                "line 5",
                "views[0].window: windows must divide a day evenly",
            ),
            (
                "[[views]]\nname = \"v\"\nfrom = \"nowhere\"\nkind = \"count\"\n",
                "line 3",
                "views[0].from: no stream \"nowhere\"",
            ),
            (
                "[live]\nkeep_alive_secs = 15\nbuffer = 2\n",
                "line 3",
                "live.buffer: expected 16 to 1,000,000, found 2",
            ),
            (
                "[collector]\nmax_event_bytes = 2000000\n",
                "line 2",
                "collector.max_event_bytes",
            ),
            (
                "[collector]\naggregate = true\naggregate_max_bytes = 10\n",
                "line 3",
                "collector.aggregate_max_bytes: expected 1024",
            ),
            (
                "inbound = \"in\"\n\n[outputs.nowhere]\naggregate = true\n",
                "line 3",
                "outputs.nowhere: no route, unmatched or dead_letter writes to stream nowhere",
            ),
            (
                "[outputs.unrouted]\naggregate = true\nagregate_max_bytes = 4096\n",
                "line 3",
                "unknown field `agregate_max_bytes`",
            ),
            (
                "inbound = \"in\"\n[[routes]]\nname = \"a\"\nto = [\"x\"]\n[[routes]]\nname = \"loop\"\nto = [\"in\"]\n",
                "line 7",
                "routes[1].to: stream \"in\" is the inbound stream; routing into it would loop",
            ),
            (
                "inbound = \"in\"\n[dead_letter]\nto = \"in\"\n",
                "line 3",
                "dead_letter.to: stream \"in\" is the inbound stream",
            ),
            (
                "[[routes]]\nname = \"r\"\nmatch = { t = [{ nope = 1 }] }\nto = [\"x\"]\n",
                "line 3",
                "unknown matcher `nope`",
            ),
            (
                "[[sites]]\nname = \"shop\"\nwrite_key = \"wk_shop_example\"\norigins = [\"https://shop.example.com/\"]\n",
                "line 4",
                "is not an origin",
            ),
            (
                "[[sites]]\nname = \"shop\"\nwrite_key = \"short\"\norigins = [\"https://a.b\"]\n",
                "line 3",
                "a write key is 8 to 128 characters",
            ),
            (
                "[[sites]]\nname = \"shop\"\nwrite_key = \"wk_shop_example\"\norigins = [\"https://*.b.c\"]\nheaders = { type = \"x\" }\n",
                "line 5",
                "header `type` is set by the collector",
            ),
            (
                "[[sites]]\nname = \"shop\"\nwrite_key = \"wk_shop_example\"\norigins = [\"https://a.b\"]\nrate_limit = { events_per_sec = 0, burst = 5 }\n",
                "line 5",
                "expected events per second above 0",
            ),
            (
                "[router]\nbatch_records = 10\nfailover_ms = 0\n",
                "line 3",
                "router.failover_ms: expected at least 300",
            ),
            (
                "[router]\nidle_poll_ms = 0\n",
                "line 2",
                "router.idle_poll_ms: expected at least 1",
            ),
            (
                "[router.retry]\nbase_ms = 0\n",
                "line 2",
                "router.retry.base_ms: expected at least 1",
            ),
            (
                "[collector]\nretry = { base_ms = 100, max_ms = 50 }\n",
                "line 2",
                "collector.retry.max_ms: expected at least base_ms (100), found 50",
            ),
            (
                "[collector]\ntrusted_proxies = [\"10.0.0.0/33\"]\n",
                "line 2",
                "not an IP address or a CIDR block",
            ),
            (
                "[[sites]]\nname = \"a\"\nwrite_key = \"wk_same_key\"\norigins = [\"https://a.b\"]\n[[sites]]\nname = \"b\"\nwrite_key = \"wk_same_key\"\norigins = [\"https://a.b\"]\n",
                "line 7",
                "sites[1].write_key: site \"b\" has the same write_key as \"a\"",
            ),
        ];
        for (text, line, reason) in cases {
            let err = Config::parse(text, "my.toml").unwrap_err().to_string();
            assert!(err.starts_with("config error in my.toml"), "{err}");
            // "line 3" must not be found inside "line 30".
            let at_line = err
                .match_indices(line)
                .any(|(i, _)| !err[i + line.len()..].starts_with(|c: char| c.is_ascii_digit()));
            assert!(at_line && err.contains(reason), "{text}\n=> {err}");
        }
    }
}
