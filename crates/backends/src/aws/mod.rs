//! The `aws` backend: streams on Kinesis Data Streams and tables on
//! DynamoDB, through the official SDK. Credentials come from the standard
//! chain (environment, profile, container or instance role); endpoints can
//! be overridden per service (for local API servers), and the SDK's own
//! `AWS_ENDPOINT_URL_KINESIS` / `AWS_ENDPOINT_URL_DYNAMODB` are honoured.

pub mod dynamodb;
pub mod kinesis;

use std::time::Duration;

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
