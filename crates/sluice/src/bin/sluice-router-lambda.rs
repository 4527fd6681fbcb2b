//! `sluice-router-lambda`: the Sluice router as an AWS Lambda function
//! (custom runtime, `provided.al2023`) on the inbound stream's Kinesis event
//! source mapping.
//!
//! Configuration: `SLUICE_CONFIG` names the bundled `sluice.toml`, or
//! `SLUICE_RULES` holds its text; AWS endpoints and credentials come from the
//! standard SDK variables. `SLUICE_DEADLINE_MARGIN_MS` (default 1000) is the
//! time kept back from each invocation's deadline to answer. An invalid
//! configuration stops the cold start with one log line. Telemetry: the
//! standard `OTEL_*` variables, and `SLUICE_OTLP_TOKEN_SECRET_ARN`, the
//! Secrets Manager secret with the Dynatrace API token sent on every export.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use lambda_runtime::{layers::TracingLayer, service_fn, Error, LambdaEvent, Runtime};
use sluice::config::BackendConfig;
use sluice::lambda::{
    config_from_env, otlp_token_header, take_event, LambdaRouter, ReadKinesisEvents, Unread,
};
use sluice_backends::aws::AwsSettings;
use sluice_telemetry::{LogFormat, Telemetry};

// Routing allocates a few small objects per record and frees them at the end
// of the invocation; mimalloc does that with less work than the system
// allocator (measured with the lambda_handler benchmark, which uses it too).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    sluice_telemetry::init_logging(LogFormat::Json);
    let config = match config_from_env() {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(error = %error, "invalid configuration; the function cannot start");
            return ExitCode::FAILURE;
        }
    };
    let margin = match std::env::var("SLUICE_DEADLINE_MARGIN_MS") {
        Err(_) => Duration::from_millis(1000),
        Ok(text) => match text.parse() {
            Ok(ms) => Duration::from_millis(ms),
            Err(_) => {
                tracing::error!(value = %text, "SLUICE_DEADLINE_MARGIN_MS: expected milliseconds; the function cannot start");
                return ExitCode::FAILURE;
            }
        },
    };
    let settings = match &config.backend {
        BackendConfig::Aws(aws) => aws.settings(),
        // The function always runs on AWS; the file's local backend is for
        // `sluice up` and is ignored here.
        BackendConfig::Local { .. } => AwsSettings::default(),
    };
    // The Dynatrace token stays in Secrets Manager until the cold start
    // reads it; without it nothing is exported (the pipeline runs on).
    let mut headers = HashMap::new();
    let mut export = true;
    if let Some(secret) = std::env::var("SLUICE_OTLP_TOKEN_SECRET_ARN")
        .ok()
        .filter(|s| !s.is_empty())
    {
        match otlp_token_header(&secret, settings.region.as_deref()).await {
            Ok((name, value)) => {
                headers.insert(name, value);
            }
            Err(error) => {
                tracing::error!(error = %error, "telemetry export is off: the OTLP token could not be read");
                export = false;
            }
        }
    }
    let telemetry = Arc::new(
        tokio::task::spawn_blocking(move || match export {
            true => Telemetry::start_with_headers("sluice-router-lambda", headers),
            false => Telemetry::off(),
        })
        .await
        .expect("telemetry start"),
    );
    let (streams, _) = sluice_backends::aws::connect(&settings).await;
    // [faults] works here as in `sluice up`: for tests and drills only.
    let streams = sluice::server::with_faults(Arc::new(streams), &config);
    let router = Arc::new(LambdaRouter::new(&config, streams, margin));
    tracing::info!(outputs = ?config.rules().streams(), "router ready");
    // Each event is read straight from the invocation's body, in one pass
    // (see sluice::lambda::ReadKinesisEvents); an event that is not a
    // Kinesis event fails the invocation with the reason.
    let handler = service_fn(move |event: LambdaEvent<Unread>| {
        let (router, telemetry) = (router.clone(), telemetry.clone());
        async move {
            let input = take_event()?;
            let deadline = router.delivery_deadline(event.context.deadline);
            let response = router.handle(input, deadline).await;
            // Metrics leave before the answer: the sandbox may freeze after it.
            if telemetry.enabled() {
                let telemetry = telemetry.clone();
                let _ = tokio::task::spawn_blocking(move || telemetry.flush()).await;
            }
            Ok::<_, Error>(response)
        }
    });
    let runtime = Runtime::new(handler)
        .layer(TracingLayer::new())
        .layer(ReadKinesisEvents);
    match runtime.run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %error, "the Lambda runtime stopped");
            ExitCode::FAILURE
        }
    }
}
