//! A local OTLP/HTTP receiver: what a Sluice process exports, decoded.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::http::{HeaderMap, StatusCode};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

pub type MetricsRequest = ExportMetricsServiceRequest;
pub type TraceRequest = ExportTraceServiceRequest;

/// Every export received, with the time each metrics request arrived and
/// the `Authorization` header of every request.
#[derive(Clone, Default)]
pub struct Exports {
    pub metrics: Arc<Mutex<Vec<(Instant, MetricsRequest)>>>,
    pub traces: Arc<Mutex<Vec<TraceRequest>>>,
    pub authorizations: Arc<Mutex<Vec<String>>>,
}

impl Exports {
    /// The metrics requests so far, without their times.
    pub fn metrics_requests(&self) -> Vec<MetricsRequest> {
        let metrics = self.metrics.lock().unwrap();
        metrics.iter().map(|(_, r)| r.clone()).collect()
    }
}

/// A receiver on a free loopback port: its endpoint (for
/// `OTEL_EXPORTER_OTLP_ENDPOINT`) and what it receives. With
/// `refuse_traces`, span exports are answered 503, as an endpoint that is
/// down or over its quota answers.
pub async fn receiver(refuse_traces: bool) -> (String, Exports) {
    let exports = Exports::default();
    let keep = exports.clone();
    let app = axum::Router::new().fallback(
        move |uri: axum::http::Uri, headers: HeaderMap, body: axum::body::Bytes| {
            let keep = keep.clone();
            async move {
                let authorization = headers
                    .get("authorization")
                    .map(|v| v.to_str().unwrap_or("?").to_owned())
                    .unwrap_or_default();
                keep.authorizations.lock().unwrap().push(authorization);
                match uri.path() {
                    "/v1/metrics" => {
                        let request = MetricsRequest::decode(body).expect("an OTLP request");
                        keep.metrics.lock().unwrap().push((Instant::now(), request));
                        StatusCode::OK
                    }
                    "/v1/traces" if refuse_traces => StatusCode::SERVICE_UNAVAILABLE,
                    "/v1/traces" => {
                        let request = TraceRequest::decode(body).expect("an OTLP request");
                        keep.traces.lock().unwrap().push(request);
                        StatusCode::OK
                    }
                    _ => StatusCode::NOT_FOUND,
                }
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}"), exports)
}
