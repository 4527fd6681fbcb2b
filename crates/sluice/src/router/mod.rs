//! The router: the pure routing function lives in `sluice_core::router`;
//! this module holds what runs it. [`worker`] is the self-hosted worker
//! that reads the inbound stream shard by shard; `crate::lambda` is the
//! AWS Lambda adapter.

pub mod worker;

use std::sync::Arc;

use sluice_client::{ProduceError, Producer, ProducerConfig};
use sluice_core::router::{route_batch, RoutedBatch, RouterOptions};
use sluice_core::rules::RuleSet;
use sluice_core::stream::Record;
use sluice_telemetry::metrics;

use crate::config::{Config, OutputConfig};

/// The routing options of a configuration, for the worker and the Lambda.
pub fn router_options(config: &Config) -> RouterOptions {
    RouterOptions {
        source_stream: config.inbound.clone(),
        max_record_bytes: config.router.max_record_bytes,
        trace_context: sluice_telemetry::trace::enabled(),
    }
}

/// How the router writes to the output stream `stream`: the router's retry,
/// the output's aggregation.
pub fn output_producer_config(config: &Config, stream: &str) -> ProducerConfig {
    ProducerConfig {
        backoff: config.router.retry.clone(),
        aggregate_max_bytes: config
            .outputs
            .get(stream)
            .and_then(OutputConfig::aggregation),
        ..ProducerConfig::default()
    }
}

/// Routes a batch and writes every output, returning once all were
/// acknowledged. The caller may checkpoint the batch only after `Ok`.
pub struct RouteAndDeliver {
    pub rules: Arc<RuleSet>,
    pub options: RouterOptions,
    /// One producer per stream of `rules.streams()`, same order.
    pub producers: Vec<Producer>,
}

impl RouteAndDeliver {
    pub async fn handle(&self, records: &[Record]) -> Result<(), ProduceError> {
        let batch = route_batch(&self.rules, &self.options, records);
        count_batch(&self.rules, records.len(), &batch);
        let _spans = trace_batch(&batch);
        let sends = batch
            .outputs
            .into_iter()
            .zip(&self.producers)
            .filter(|(records, _)| !records.is_empty())
            .map(|(records, producer)| producer.send(records));
        for outcome in futures::future::join_all(sends).await {
            outcome?;
        }
        Ok(())
    }
}

/// Spans for a routed batch, alive until dropped (after delivery): one per
/// upstream context (a collector request), as its child, so an event's
/// trace goes on through the router; and one for the batch, linking them.
pub fn trace_batch(batch: &RoutedBatch) -> Vec<sluice_telemetry::trace::Span> {
    use sluice_telemetry::trace::{start, Kind};
    if !sluice_telemetry::trace::enabled() || batch.traceparents.is_empty() {
        return Vec::new();
    }
    let contexts = &batch.traceparents;
    let mut spans: Vec<_> = contexts
        .iter()
        .map(|tp| start("router.route", Kind::Consumer, Some(tp), &[]))
        .collect();
    let links: Vec<&str> = contexts.iter().map(String::as_str).collect();
    spans.push(start("router.batch", Kind::Consumer, None, &links));
    spans
}

/// Counts a routed batch in the router's metrics.
pub fn count_batch(rules: &RuleSet, records_in: usize, batch: &RoutedBatch) {
    metrics::ROUTER_RECORDS_IN
        .counter(&[])
        .add(records_in as u64);
    for (route, count) in rules.route_names().iter().zip(&batch.per_route) {
        if *count > 0 {
            metrics::ROUTER_ROUTED
                .counter(&[("route", route)])
                .add(*count);
        }
    }
    metrics::ROUTER_UNMATCHED.counter(&[]).add(batch.unmatched);
    for (reason, count) in &batch.dead_letters {
        metrics::ROUTER_DEAD_LETTERS
            .counter(&[("reason", reason)])
            .add(*count);
    }
}
