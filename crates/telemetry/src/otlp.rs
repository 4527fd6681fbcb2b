//! Metrics and spans exported with OTLP over HTTP/protobuf, metrics with
//! delta temporality (what Dynatrace takes: neither gRPC nor cumulative
//! sums).
//!
//! Every counter and gauge of [`crate::metrics::ALL`] becomes an observable
//! instrument that reads the registry at each export, so components keep
//! counting through the one registry that `/metrics` renders too. The SDK
//! turns the counters' running totals into deltas. Histograms cannot be
//! observed: each observation is recorded into an OTel histogram too, with
//! the registry's buckets.
//!
//! Configured by the standard variables: `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`), `OTEL_EXPORTER_OTLP_HEADERS`
//! (for Dynatrace: `Authorization=Api-Token dt0c01....`),
//! `OTEL_TRACES_SAMPLER` (default: 1% of requests, see [`default_sampler`]),
//! `OTEL_METRIC_EXPORT_INTERVAL` (ms), `OTEL_RESOURCE_ATTRIBUTES`. Without
//! an endpoint nothing is exported. Export runs on its own thread with a
//! timeout: an endpoint that is down never slows the pipeline; failed
//! exports are counted in `sluice_telemetry_export_failures_total`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{MetricExporter, SpanExporter, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;

use crate::metrics;
use crate::registry::{series_of, Kind, MetricDef, Value, LATENCY_BOUNDS};

/// The running export; flush it before a Lambda invocation returns, shut it
/// down at exit.
pub struct Telemetry {
    provider: Option<SdkMeterProvider>,
    tracer: Option<SdkTracerProvider>,
}

/// Counts failed exports around the OTLP exporter.
#[derive(Debug)]
struct Counted(MetricExporter);

impl PushMetricExporter for Counted {
    async fn export(&self, batch: &ResourceMetrics) -> OTelSdkResult {
        let result = self.0.export(batch).await;
        if result.is_err() {
            metrics::TELEMETRY_EXPORT_FAILURES
                .counter(&[("signal", "metrics")])
                .inc();
        }
        result
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn temporality(&self) -> Temporality {
        Temporality::Delta
    }
}

/// The share of requests traced when `OTEL_TRACES_SAMPLER` is not set.
pub const DEFAULT_TRACE_RATIO: f64 = 0.01;

/// Sluice's default head sampling: [`DEFAULT_TRACE_RATIO`] of requests,
/// and every request whose caller sampled it (a `traceparent` from the
/// page). Tracing every request of a pipeline taking thousands a second
/// costs a span export per event (and its ingest); `OTEL_TRACES_SAMPLER`
/// (`parentbased_always_on`, `parentbased_traceidratio` with
/// `OTEL_TRACES_SAMPLER_ARG`, ...) chooses otherwise.
pub fn default_sampler() -> Sampler {
    Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(DEFAULT_TRACE_RATIO)))
}

/// Counts failed span exports around the OTLP exporter: the spans of a
/// failed batch are dropped (the batch processor's queue is bounded too).
#[derive(Debug)]
struct CountedSpans(SpanExporter);

impl opentelemetry_sdk::trace::SpanExporter for CountedSpans {
    async fn export(&self, batch: Vec<opentelemetry_sdk::trace::SpanData>) -> OTelSdkResult {
        let result = self.0.export(batch).await;
        if result.is_err() {
            metrics::TELEMETRY_EXPORT_FAILURES
                .counter(&[("signal", "traces")])
                .inc();
        }
        result
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }
    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}

fn endpoint_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|v| !v.is_empty()))
}

impl Telemetry {
    /// Starts exporting when an OTLP endpoint is configured.
    pub fn start(service: &str) -> Self {
        Self::start_with_headers(service, HashMap::new())
    }

    /// No export.
    pub fn off() -> Self {
        Self {
            provider: None,
            tracer: None,
        }
    }

    /// As [`Telemetry::start`], with headers sent on every export beside
    /// those of `OTEL_EXPORTER_OTLP_HEADERS` (a token read from a secret
    /// store, say). Their values are never logged.
    pub fn start_with_headers(service: &str, headers: HashMap<String, String>) -> Self {
        if !endpoint_configured() {
            return Self::off();
        }
        let exporter = match MetricExporter::builder()
            .with_http()
            .with_headers(headers.clone())
            .with_timeout(Duration::from_secs(5))
            .with_temporality(Temporality::Delta)
            .build()
        {
            Ok(exporter) => exporter,
            Err(e) => {
                tracing::error!(error = %e, "OTLP metrics export is off: the exporter could not be built");
                return Self::off();
            }
        };
        let interval = std::env::var("OTEL_METRIC_EXPORT_INTERVAL")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map_or(Duration::from_secs(60), Duration::from_millis);
        let reader = PeriodicReader::builder(Counted(exporter))
            .with_interval(interval)
            .build();
        let environment = std::env::var("SLUICE_ENVIRONMENT").unwrap_or_else(|_| "local".into());
        let resource = Resource::builder()
            .with_service_name(service.to_owned())
            .with_attributes([
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
                KeyValue::new("deployment.environment.name", environment),
            ])
            .build();
        let tracer = match SpanExporter::builder()
            .with_http()
            .with_headers(headers)
            .with_timeout(Duration::from_secs(5))
            .build()
        {
            Ok(exporter) => {
                let mut builder = SdkTracerProvider::builder()
                    .with_batch_exporter(CountedSpans(exporter))
                    .with_resource(resource.clone());
                if std::env::var_os("OTEL_TRACES_SAMPLER").is_none() {
                    builder = builder.with_sampler(default_sampler());
                }
                let tracer = builder.build();
                opentelemetry::global::set_tracer_provider(tracer.clone());
                crate::trace::set_enabled();
                Some(tracer)
            }
            Err(e) => {
                tracing::error!(error = %e, "OTLP span export is off: the exporter could not be built");
                None
            }
        };
        let provider = SdkMeterProvider::builder()
            .with_reader(reader)
            .with_resource(resource)
            .build();
        let meter = provider.meter("sluice");
        let _ = METER.set(meter.clone());
        for def in metrics::ALL {
            let def: &'static _ = *def;
            match def.kind {
                Kind::Counter => {
                    meter
                        .u64_observable_counter(def.name)
                        .with_description(def.help)
                        .with_callback(move |observer| {
                            for (labels, value) in series_of(def) {
                                if let Value::Counter(v) = value {
                                    observer.observe(v, &attributes(&labels));
                                }
                            }
                        })
                        .build();
                }
                // Recorded as they happen: see HistogramRecorder.
                Kind::Histogram => {}
                Kind::Gauge => {
                    meter
                        .i64_observable_gauge(def.name)
                        .with_description(def.help)
                        .with_callback(move |observer| {
                            for (labels, value) in series_of(def) {
                                if let Value::Gauge(v) = value {
                                    observer.observe(v, &attributes(&labels));
                                }
                            }
                        })
                        .build();
                }
            }
        }
        tracing::info!(
            service,
            interval_ms = interval.as_millis() as u64,
            "exporting metrics with OTLP (HTTP/protobuf, delta)"
        );
        Self {
            provider: Some(provider),
            tracer,
        }
    }

    pub fn enabled(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports now (a Lambda invocation calls this before it answers).
    pub fn flush(&self) {
        if let Some(tracer) = &self.tracer {
            if let Err(e) = tracer.force_flush() {
                tracing::debug!(error = %e, "span flush failed");
            }
        }
        if let Some(provider) = &self.provider {
            if let Err(e) = provider.force_flush() {
                tracing::debug!(error = %e, "metrics flush failed");
            }
        }
    }

    /// Exports what is left and stops.
    pub fn shutdown(self) {
        if let Some(tracer) = self.tracer {
            let _ = tracer.shutdown();
        }
        if let Some(provider) = self.provider {
            let _ = provider.shutdown();
        }
    }
}

fn attributes(labels: &[(&'static str, String)]) -> Vec<KeyValue> {
    labels
        .iter()
        .map(|(k, v)| KeyValue::new(*k, v.clone()))
        .collect()
}

/// The meter of the running export; histograms bind to it on first use.
static METER: OnceLock<Meter> = OnceLock::new();

/// One histogram series' OTel side: the instrument and its attributes.
pub(crate) struct HistogramRecorder {
    histogram: opentelemetry::metrics::Histogram<f64>,
    attributes: Vec<KeyValue>,
}

impl HistogramRecorder {
    pub(crate) fn record(&self, seconds: f64) {
        self.histogram.record(seconds, &self.attributes);
    }
}

/// The OTel side of a histogram series, bound in `slot` on first use once
/// the export runs; `None` while it does not.
pub(crate) fn histogram_recorder<'a>(
    slot: &'a OnceLock<HistogramRecorder>,
    def: &'static MetricDef,
    labels: &[(&'static str, String)],
) -> Option<&'a HistogramRecorder> {
    let meter = METER.get()?;
    Some(slot.get_or_init(|| {
        static INSTRUMENTS: Mutex<BTreeMap<&str, opentelemetry::metrics::Histogram<f64>>> =
            Mutex::new(BTreeMap::new());
        let histogram = INSTRUMENTS
            .lock()
            .expect("instruments lock")
            .entry(def.name)
            .or_insert_with(|| {
                meter
                    .f64_histogram(def.name)
                    .with_description(def.help)
                    .with_unit("s")
                    .with_boundaries(LATENCY_BOUNDS.to_vec())
                    .build()
            })
            .clone();
        HistogramRecorder {
            histogram,
            attributes: attributes(labels),
        }
    }))
}
