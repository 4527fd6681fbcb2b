//! The `aws` backend: streams on Kinesis Data Streams and tables on
//! DynamoDB, through the official SDK. Credentials come from the standard
//! chain (environment, profile, container or instance role); endpoints can
//! be overridden per service (for local API servers), and the SDK's own
//! `AWS_ENDPOINT_URL_KINESIS` / `AWS_ENDPOINT_URL_DYNAMODB` are honoured.

pub mod dynamodb;
pub mod kinesis;

use std::time::Duration;

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};

pub use dynamodb::AwsTables;
pub use kinesis::AwsStreams;

/// Where and how to reach AWS.
#[derive(Clone, Debug, Default)]
pub struct AwsSettings {
    /// Region; the SDK's chain when unset.
    pub region: Option<String>,
    pub kinesis_endpoint: Option<String>,
    pub dynamodb_endpoint: Option<String>,
    /// How long to wait for a stream or table to become ACTIVE.
    pub wait_active: Option<Duration>,
}

/// Loads the SDK configuration from the standard chain and builds both backends.
pub async fn connect(settings: &AwsSettings) -> (AwsStreams, AwsTables) {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = &settings.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    let shared = loader.load().await;
    let mut kinesis = aws_sdk_kinesis::config::Builder::from(&shared);
    if let Some(url) = &settings.kinesis_endpoint {
        kinesis = kinesis.endpoint_url(url);
    }
    let mut dynamodb = aws_sdk_dynamodb::config::Builder::from(&shared);
    if let Some(url) = &settings.dynamodb_endpoint {
        dynamodb = dynamodb.endpoint_url(url);
    }
    let wait = settings.wait_active.unwrap_or(Duration::from_secs(300));
    (
        AwsStreams::new(aws_sdk_kinesis::Client::from_conf(kinesis.build()), wait),
        AwsTables::new(aws_sdk_dynamodb::Client::from_conf(dynamodb.build()), wait),
    )
}

/// Error codes that mean the caller is not who it claims, or may not do this.
const ACCESS_CODES: &[&str] = &[
    "AccessDeniedException",
    "AccessDenied",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "IncompleteSignatureException",
    "MissingAuthenticationTokenException",
    "ExpiredTokenException",
];

/// Says why a call was refused when the cause is credentials or permissions,
/// which no retry can fix: a refusal from the service (by error code, or by
/// HTTP 401/403 when the body cannot be parsed), or no credentials at all.
pub(crate) fn access_problem<E: ProvideErrorMetadata + std::error::Error + 'static>(
    err: &SdkError<E>,
) -> Option<String> {
    if let SdkError::ServiceError(service) = err {
        let inner = service.err();
        if let Some(code) = inner.code().filter(|c| ACCESS_CODES.contains(c)) {
            return Some(format!("{code}: {}", inner.message().unwrap_or("")));
        }
    }
    if let Some(raw) = err.raw_response() {
        let status = raw.status().as_u16();
        if status == 401 || status == 403 {
            let body = raw
                .body()
                .bytes()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            // The code, whichever way the server wrote it (JSON or XML).
            let code = body
                .split("<Code>")
                .nth(1)
                .and_then(|rest| rest.split("</Code>").next())
                .or_else(|| {
                    body.split("\"__type\":\"")
                        .nth(1)
                        .and_then(|rest| rest.split('"').next())
                })
                .unwrap_or("no error code");
            return Some(format!("HTTP {status} ({code})"));
        }
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(error) = source {
        if let Some(credentials) = error.downcast_ref::<CredentialsError>() {
            return Some(format!(
                "no AWS credentials could be loaded (environment, profile, web identity, \
                 container or instance role): {}",
                chain(credentials)
            ));
        }
        source = error.source();
    }
    None
}

/// A short, complete description of an SDK error (its chain of causes).
pub(crate) fn describe<E: std::error::Error + 'static>(err: &SdkError<E>) -> String {
    chain(err)
}

/// An error and its causes, each once, joined by ": ".
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

/// Polls until `ready` says so, or the time is up.
pub(crate) async fn wait_until<F, Fut, E>(
    limit: Duration,
    what: &str,
    mut ready: F,
) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, E>>,
    E: std::fmt::Display,
{
    let start = std::time::Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        match ready().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => return Err(format!("{what}: {e}")),
        }
        if start.elapsed() > limit {
            return Err(format!("{what}: not ready after {} s", limit.as_secs()));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}
