//! The conformance suites on the embedded backend.

use std::sync::Arc;

use sluice_backends::local::{LocalStreamOptions, LocalStreams, LocalTable};
use sluice_backends::{stream_conformance, table_conformance};
use sluice_core::{StreamBackend, TableBackend};

async fn streams() -> (Arc<dyn StreamBackend>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let options = LocalStreamOptions {
        segment_bytes: 64 * 1024,
        ..Default::default()
    };
    let streams = LocalStreams::open(dir.path().join("streams"), options).unwrap();
    (Arc::new(streams), dir)
}

async fn table() -> (Arc<dyn TableBackend>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let table = LocalTable::open(&dir.path().join("table.redb")).unwrap();
    (Arc::new(table), dir)
}

mod stream {
    use super::*;
    stream_conformance!(streams();
        lifecycle,
        put_assigns_shards_by_hash_and_growing_sequences,
        iterators_start_where_asked,
        reads_page_and_keep_bytes,
        put_limits_are_enforced,
        bad_iterators_are_errors,
        split_and_merge_keep_lineage_and_records,
    );
}

mod table {
    use super::*;
    table_conformance!(table();
        conditional_writes,
        counters_add_atomically,
        put_many_checks_each_condition,
        expired_items_read_as_absent,
        missing_tables_are_errors,
    );
}
