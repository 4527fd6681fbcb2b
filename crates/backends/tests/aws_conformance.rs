//! The conformance suites on the `aws` backend against real API servers:
//! moto (Kinesis and DynamoDB) and kinesalite (Kinesis with 56-digit
//! sequence numbers and real splits and merges). `./scripts/test` installs
//! and starts both and passes their addresses in SLUICE_TEST_MOTO and
//! SLUICE_TEST_KINESALITE. Without them these tests fail; they never skip.
//!
//! moto writes to a closed parent after a split and never returns child
//! shards, so resharding is checked on kinesalite only.

use std::sync::Arc;

use sluice_backends::conformance::servers::{dynamodb, kinesalite, kinesis, moto};
use sluice_backends::{stream_conformance, table_conformance};
use sluice_core::{StreamBackend, TableBackend};

async fn moto_streams() -> (Arc<dyn StreamBackend>, ()) {
    (Arc::new(kinesis(&moto())), ())
}

async fn moto_tables() -> (Arc<dyn TableBackend>, ()) {
    (Arc::new(dynamodb(&moto())), ())
}

async fn kinesalite_streams() -> (Arc<dyn StreamBackend>, ()) {
    (Arc::new(kinesis(&kinesalite())), ())
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
        put_many_checks_each_condition,
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
