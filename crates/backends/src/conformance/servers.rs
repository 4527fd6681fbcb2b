//! Clients for the local Kinesis and DynamoDB API servers that the test
//! command starts, with static test credentials. The servers' addresses come
//! from SLUICE_TEST_MOTO, SLUICE_TEST_MOTO_AUTH and SLUICE_TEST_KINESALITE; a test that needs one
//! that is not set fails with a message saying how to start it.

use std::time::Duration;

use crate::aws::{AwsStreams, AwsTables};

/// The address in `variable`, or a failure explaining how to get it.
pub fn endpoint(variable: &str, server: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| {
        panic!(
            "{variable} is not set: this test needs a running {server} server. \
             Run ./scripts/test, which installs and starts it, or start one on 127.0.0.1 and set {variable}=http://127.0.0.1:PORT"
        )
    })
}

/// The moto server's address.
pub fn moto() -> String {
    endpoint("SLUICE_TEST_MOTO", "moto")
}

/// A second moto server that checks credentials, as AWS does: it knows no
/// access key, so every signed call is refused.
pub fn moto_checking_credentials() -> String {
    endpoint(
        "SLUICE_TEST_MOTO_AUTH",
        "moto (with INITIAL_NO_AUTH_ACTION_COUNT=0)",
    )
}

/// The kinesalite server's address.
pub fn kinesalite() -> String {
    endpoint("SLUICE_TEST_KINESALITE", "kinesalite")
}

/// Streams on the Kinesis API at `url`.
pub fn kinesis(url: &str) -> AwsStreams {
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
        .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_kinesis::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .endpoint_url(url)
        .build();
    AwsStreams::new(
        aws_sdk_kinesis::Client::from_conf(config),
        Duration::from_secs(30),
    )
}

/// Tables on the DynamoDB API at `url`.
pub fn dynamodb(url: &str) -> AwsTables {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .endpoint_url(url)
        .build();
    AwsTables::new(
        aws_sdk_dynamodb::Client::from_conf(config),
        Duration::from_secs(30),
    )
}
