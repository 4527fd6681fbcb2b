//! The router as an AWS Lambda function on the inbound stream's event source
//! mapping: a thin adapter around the pure router that the worker uses too.
//!
//! One invocation routes its batch and writes every output with PutRecords,
//! retrying failed entries until shortly before the invocation's deadline.
//! What is still undelivered then is reported in `batchItemFailures` with
//! the sequence number of the first input record not fully delivered, so
//! Lambda retries from there and nothing is skipped (records after it that
//! were delivered come again: duplicates, never loss). A record that is not
//! an envelope, or that cannot be decoded at all, goes to dead-letter and
//! never fails the batch.

mod event;
mod invocation;
#[cfg(feature = "runtime-api")]
pub mod runtime_api;

pub use event::{EventError, EventReader, KinesisBatch, Rejected};
pub use invocation::{take_event, ReadKinesisEvent, ReadKinesisEvents, Unread};

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::streams::{KinesisBatchItemFailure, KinesisEventResponse};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use sluice_client::{ProduceError, Producer, ProducerConfig};
use sluice_core::router::{dead_letter, route_batch, DeadLetterReason, RouterOptions, Unit};
use sluice_core::rules::RuleSet;
use sluice_core::stream::{PutRecord, Record};
use sluice_core::{SequenceNumber, StreamBackend};

use crate::config::Config;
use crate::router::count_batch;

/// Where the function's configuration comes from: inline TOML in
/// `SLUICE_RULES`, or the file named by `SLUICE_CONFIG` (bundled with the
/// function), in the format of `sluice.toml`.
pub fn config_from_env() -> Result<Config, FunctionConfigError> {
    if let Ok(text) = std::env::var("SLUICE_RULES") {
        return Ok(Config::parse(&text, "SLUICE_RULES")?);
    }
    match std::env::var("SLUICE_CONFIG") {
        Ok(path) => Ok(Config::load(Some(Path::new(&path)))?),
        Err(_) => Err(FunctionConfigError::NotSet),
    }
}

/// Why the function has no configuration.
#[derive(Debug, thiserror::Error)]
pub enum FunctionConfigError {
    #[error(transparent)]
    Invalid(#[from] crate::config::ConfigError),
    #[error("set SLUICE_CONFIG to the bundled configuration file, or SLUICE_RULES to its text")]
    NotSet,
}

/// The OTLP `Authorization` header from the Secrets Manager secret `secret`
/// (ARN or name) holding the Dynatrace API token, read once at cold start.
/// A secret that holds `Api-Token …` is used as it is; a bare token gets the
/// prefix. The value is never logged. The Secrets Manager endpoint comes
/// from the standard SDK variables like every other AWS endpoint.
pub async fn otlp_token_header(
    secret: &str,
    region: Option<&str>,
) -> Result<(String, String), String> {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region.to_owned()));
    }
    let client = aws_sdk_secretsmanager::Client::new(&loader.load().await);
    let output = client
        .get_secret_value()
        .secret_id(secret)
        .send()
        .await
        .map_err(|e| {
            format!(
                "secret {secret}: {}",
                aws_sdk_secretsmanager::error::DisplayErrorContext(&e)
            )
        })?;
    let token = output
        .secret_string()
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| format!("secret {secret} holds no text"))?;
    let value = if token.starts_with("Api-Token ") {
        token.to_owned()
    } else {
        format!("Api-Token {token}")
    };
    Ok(("Authorization".to_owned(), value))
}

/// What one invocation did, for its log line and for tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub records: usize,
    pub outputs: usize,
    pub dead_lettered: usize,
    /// Index of the first input record not fully delivered.
    pub first_failed: Option<usize>,
}

/// The Lambda router: rules, outputs and their producers, kept warm across
/// invocations.
pub struct LambdaRouter {
    rules: Arc<RuleSet>,
    options: RouterOptions,
    streams: Arc<dyn StreamBackend>,
    /// One per stream of `rules.streams()`, started on first use, so a cold
    /// start makes no network call and a missing stream fails only the
    /// records bound for it.
    producers: Vec<OnceCell<Producer>>,
    producer_configs: Vec<ProducerConfig>,
    /// Time kept back from the invocation's deadline for the answer.
    margin: Duration,
}

impl LambdaRouter {
    pub fn new(config: &Config, streams: Arc<dyn StreamBackend>, margin: Duration) -> Self {
        let rules = Arc::new(config.rules());
        let producer_configs = rules
            .streams()
            .iter()
            .map(|name| crate::router::output_producer_config(config, name))
            .collect();
        Self {
            producers: rules.streams().iter().map(|_| OnceCell::new()).collect(),
            producer_configs,
            rules,
            options: crate::router::router_options(config),
            streams,
            margin,
        }
    }

    /// The deadline for deliveries, from the invocation's deadline (ms since
    /// the Unix epoch) less the margin.
    pub fn delivery_deadline(&self, invocation_deadline_ms: u64) -> Instant {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let remaining = Duration::from_millis(invocation_deadline_ms.saturating_sub(now_ms));
        Instant::now() + remaining.saturating_sub(self.margin)
    }

    async fn producer(&self, index: usize) -> Result<&Producer, ProduceError> {
        self.producers[index]
            .get_or_try_init(|| {
                Producer::start(
                    self.streams.clone(),
                    &self.rules.streams()[index],
                    self.producer_configs[index].clone(),
                )
            })
            .await
    }

    /// Routes and delivers one batch; the answer for Lambda.
    pub async fn handle(&self, input: KinesisBatch, deadline: Instant) -> KinesisEventResponse {
        let (summary, first_failed) = self.route(&input, deadline).await;
        tracing::info!(
            records = summary.records,
            outputs = summary.outputs,
            dead_lettered = summary.dead_lettered,
            first_failed = ?first_failed,
            "batch routed"
        );
        let mut response = KinesisEventResponse::default();
        if let Some(sequence) = first_failed {
            sluice_telemetry::metrics::ROUTER_BATCHES_RETRIED
                .counter(&[])
                .inc();
            let mut failure = KinesisBatchItemFailure::default();
            failure.item_identifier = Some(sequence);
            response.batch_item_failures.push(failure);
        }
        response
    }

    /// Routes and delivers; returns what happened and the sequence number
    /// Lambda must retry from, if any.
    pub async fn route(
        &self,
        input: &KinesisBatch,
        deadline: Instant,
    ) -> (Summary, Option<String>) {
        let dead_letter_stream = self.rules.dead_letter_stream();
        let mut batch = route_batch(&self.rules, &self.options, &input.records);
        if !input.rejected.is_empty() {
            for sources in &mut batch.sources {
                for source in sources.iter_mut() {
                    *source = input.position(*source as usize);
                }
            }
        }
        for rejected in &input.rejected {
            let record = Record {
                sequence_number: SequenceNumber::parse(&rejected.sequence_number)
                    .unwrap_or_else(|| SequenceNumber::from_u64(0)),
                partition_key: if rejected.partition_key.is_empty() {
                    "undecodable".into()
                } else {
                    rejected.partition_key.clone()
                },
                data: rejected.data.clone(),
                arrival_ms: 0,
            };
            let unit = Unit {
                record: &record,
                source: rejected.position,
                sub_sequence: None,
                partition_key: record.partition_key.clone(),
                data: Cow::Borrowed(&record.data),
            };
            let reason = DeadLetterReason::BadRecord(rejected.reason.clone());
            batch.dead_letters.push((reason.code(), 1));
            batch.outputs[dead_letter_stream].push(dead_letter(&self.options, &unit, &reason));
            batch.sources[dead_letter_stream].push(rejected.position);
        }
        count_batch(&self.rules, input.len(), &batch);
        let _spans = crate::router::trace_batch(&batch);

        let mut summary = Summary {
            records: input.len(),
            outputs: batch.outputs.iter().map(Vec::len).sum(),
            dead_lettered: batch.outputs[dead_letter_stream].len(),
            first_failed: None,
        };
        let deliveries = batch
            .outputs
            .into_iter()
            .zip(batch.sources)
            .enumerate()
            .filter(|(_, (records, _))| !records.is_empty())
            .map(|(index, (records, sources))| self.deliver(index, records, sources, deadline));
        for failed in futures::future::join_all(deliveries)
            .await
            .into_iter()
            .flatten()
        {
            summary.first_failed = Some(summary.first_failed.map_or(failed, |f| f.min(failed)));
        }
        let retry_from = summary
            .first_failed
            .map(|i| input.sequence_number(i as u32).to_owned());
        (summary, retry_from)
    }

    /// Writes one output; the input position of its first failed record.
    async fn deliver(
        &self,
        index: usize,
        records: Vec<PutRecord>,
        sources: Vec<u32>,
        deadline: Instant,
    ) -> Option<usize> {
        let stream = &self.rules.streams()[index];
        let undelivered = match self.producer(index).await {
            Ok(producer) => producer.send_each(records, deadline).await,
            Err(error) => (0..records.len()).map(|i| (i, error.clone())).collect(),
        };
        let (position, error) = undelivered
            .iter()
            .map(|(i, error)| (sources[*i] as usize, error))
            .min_by_key(|(position, _)| *position)?;
        let failed = undelivered.len();
        tracing::error!(stream = %stream, failed, error = %error, "records not delivered; Lambda will retry the batch from the first of them");
        Some(position)
    }
}
