//! Sluice telemetry: log setup for every binary and the one place where
//! metrics are defined ([`metrics`]). Components emit through those
//! definitions, never through ad-hoc names. The registry renders the
//! Prometheus text format for `/metrics`.
//!
//! This crate uses no other Sluice crate.

#![forbid(unsafe_code)]

pub mod metrics;
pub mod otlp;
pub mod registry;
pub mod trace;

pub use otlp::Telemetry;
pub use registry::{Counter, Gauge, GaugeHold, Histogram};

use tracing_subscriber::EnvFilter;

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for services.
    Json,
    /// Readable lines, for a terminal.
    Text,
}

/// Installs the global log subscriber, filtered by `RUST_LOG` (default
/// `info`). Logs go to stderr so that stdout stays data.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.compact().try_init(),
    };
}
