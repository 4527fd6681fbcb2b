//! A `sluice` on the AWS backend against the local moto server that
//! `./scripts/test` starts.

/// Credentials and region for a local API server, through the standard chain.
pub const AWS_ENV: [(&str, &str); 4] = [
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

pub fn moto_endpoint() -> String {
    std::env::var("SLUICE_TEST_MOTO").unwrap_or_else(|_| {
        panic!("SLUICE_TEST_MOTO is not set: this test needs a running moto server; run ./scripts/test, which installs and starts it")
    })
}

/// A configuration on moto whose every stream and table is named after
/// `prefix`, so tests sharing the server keep apart; routes go after it.
pub fn config_on_moto(moto: &str, prefix: &str, create_missing: bool) -> String {
    format!(
        r#"
inbound = "{prefix}-inbound"
views_table = "{prefix}-views"
[backend]
kind = "aws"
kinesis_endpoint = "{moto}"
dynamodb_endpoint = "{moto}"
create_missing = {create_missing}
[streams]
inbound_shards = 2
output_shards = 1
[router]
checkpoint_table = "{prefix}-checkpoints"
[collector]
tokens_env = "E2E_TOKENS"
[unmatched]
to = "{prefix}-unrouted"
[dead_letter]
to = "{prefix}-dead-letter"
"#
    )
}
