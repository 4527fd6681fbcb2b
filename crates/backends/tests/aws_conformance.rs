//! The conformance suites on the `aws` backend against real API servers:
//! moto (Kinesis and DynamoDB) and kinesalite (Kinesis with 56-digit
//! sequence numbers and real splits and merges). `./scripts/test` installs
//! and starts both and passes their addresses in SLUICE_TEST_MOTO and
//! SLUICE_TEST_KINESALITE. Without them these tests fail; they never skip.
//!
//! moto writes to a closed parent after a split and never returns child
//! shards, so resharding is checked on kinesalite only.

use std::sync::Arc;
use std::time::Duration;

use sluice_backends::aws::{AwsStreams, AwsTables};
use sluice_backends::{stream_conformance, table_conformance};
use sluice_core::{StreamBackend, TableBackend};

fn endpoint(variable: &str, server: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| {
        panic!(
            "{variable} is not set: this test needs a running {server} server. \
             Run ./scripts/test, which installs and starts it, or start one on 127.0.0.1 and set {variable}=http://127.0.0.1:PORT"
        )
    })
}

fn kinesis(url: &str) -> AwsStreams {
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

fn dynamodb(url: &str) -> AwsTables {
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

async fn moto_streams() -> (Arc<dyn StreamBackend>, ()) {
    (Arc::new(kinesis(&endpoint("SLUICE_TEST_MOTO", "moto"))), ())
}

async fn moto_tables() -> (Arc<dyn TableBackend>, ()) {
    (
        Arc::new(dynamodb(&endpoint("SLUICE_TEST_MOTO", "moto"))),
        (),
    )
}

async fn kinesalite_streams() -> (Arc<dyn StreamBackend>, ()) {
    (
        Arc::new(kinesis(&endpoint("SLUICE_TEST_KINESALITE", "kinesalite"))),
        (),
    )
}

mod moto_stream {
    use super::*;
    stream_conformance!(moto_streams();
        lifecycle,
        put_assigns_shards_by_hash_and_growing_sequences,
        iterators_start_where_asked,
        reads_page_and_keep_bytes,
        put_limits_are_enforced,
        bad_iterators_are_errors,
    );
}

mod moto_table {
    use super::*;
    table_conformance!(moto_tables();
        conditional_writes,
        counters_add_atomically,
        expired_items_read_as_absent,
        missing_tables_are_errors,
    );
}

mod kinesalite_stream {
    use super::*;
    stream_conformance!(kinesalite_streams();
        lifecycle,
        put_assigns_shards_by_hash_and_growing_sequences,
        iterators_start_where_asked,
        reads_page_and_keep_bytes,
        put_limits_are_enforced,
        bad_iterators_are_errors,
        split_and_merge_keep_lineage_and_records,
    );
}
