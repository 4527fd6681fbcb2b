//! Every metric Sluice emits, defined once.

use crate::registry::{Kind, MetricDef};

/// Defines every metric once, and [`ALL`], the list of them (the OTLP
/// export walks it).
macro_rules! metrics {
    ($($kind:ident $id:ident $name:literal $help:literal [$($label:literal),*];)+) => {
        $(
            pub static $id: MetricDef = MetricDef {
                name: $name,
                help: $help,
                kind: Kind::$kind,
                labels: &[$($label),*],
            };
        )+
        /// Every metric Sluice defines.
        pub static ALL: &[&MetricDef] = &[$(&$id),+];
    };
}

metrics! {
    Counter CONSUMER_RECORDS
        "sluice_consumer_records_processed_total"
        "Records a consumer application's processors took, by application."
        ["application"];
    Gauge CONSUMER_MILLIS_BEHIND
        "sluice_consumer_millis_behind_latest"
        "How far a shard's reader is behind the tip of the shard, by application and shard."
        ["application", "shard"];
    Gauge CONSUMER_LEASES_HELD
        "sluice_consumer_leases_held"
        "Leases a worker holds, by application and worker."
        ["application", "worker"];
    Gauge CONSUMER_CHECKPOINT_AGE_MS
        "sluice_consumer_checkpoint_age_ms"
        "Time since a shard's checkpoint last moved, by application and shard."
        ["application", "shard"];
    Counter TELEMETRY_EXPORT_FAILURES
        "sluice_telemetry_export_failures_total"
        "OTLP exports that failed, by signal (metrics, traces): that telemetry was dropped; the pipeline goes on."
        ["signal"];
    Counter COLLECTOR_REQUESTS
        "sluice_collector_requests_total"
        "HTTP requests to the collector, by status code."
        ["status"];
    Counter COLLECTOR_EVENTS_RECEIVED
        "sluice_collector_events_received_total"
        "Events the collector received in request bodies it could read, good or bad (a body that is not JSON or NDJSON, or over a limit, is one rejected request, not events)."
        [];
    Counter COLLECTOR_EVENTS_ACCEPTED
        "sluice_collector_events_accepted_total"
        "Events acknowledged by the inbound stream."
        [];
    Counter COLLECTOR_EVENTS_REJECTED
        "sluice_collector_events_rejected_total"
        "Events rejected, by reason."
        ["reason"];
    Counter COLLECTOR_EVENTS_DEDUPLICATED
        "sluice_collector_events_deduplicated_total"
        "Events a site's sender resent within the dedup window: acknowledged, not written again."
        [];
    Gauge COLLECTOR_CONNECTIONS
        "sluice_collector_connections"
        "HTTP connections open now."
        [];
    Counter COLLECTOR_CONNECTIONS_REFUSED
        "sluice_collector_connections_refused_total"
        "HTTP connections closed on arrival because collector.max_connections were open."
        [];
    Gauge LIVE_READERS
        "sluice_live_readers"
        "Readers following a stream for live feeds, by stream: one per stream per process, however many subscribers."
        ["stream"];
    Gauge LIVE_SUBSCRIBERS
        "sluice_live_subscribers"
        "Live feed subscribers connected now, by stream."
        ["stream"];
    Counter LIVE_LAGGED
        "sluice_live_subscribers_lagged_total"
        "Live feed subscribers cut off because they fell further behind than live.buffer records, by stream."
        ["stream"];
    Histogram COLLECTOR_REQUEST_DURATION
        "sluice_collector_request_duration_seconds"
        "Time from a request's arrival at the collector to its answer."
        [];
    Gauge COLLECTOR_QUEUE_DEPTH
        "sluice_collector_queue_depth"
        "Events accepted by the collector and waiting for the stream."
        [];
    Counter PUT_CALLS
        "sluice_put_records_calls_total"
        "PutRecords calls, by stream."
        ["stream"];
    Histogram PUT_DURATION
        "sluice_put_records_duration_seconds"
        "Time a PutRecords call took, by stream."
        ["stream"];
    Counter PUT_RECORDS
        "sluice_put_records_records_total"
        "Records acknowledged by PutRecords, by stream."
        ["stream"];
    Counter PUT_USER_RECORDS
        "sluice_put_records_user_records_total"
        "User records acknowledged by PutRecords, by stream: more than the records when they are aggregated."
        ["stream"];
    Counter PUT_FAILED_ENTRIES
        "sluice_put_records_failed_entries_total"
        "PutRecords entries that failed and were retried or given up, by stream."
        ["stream"];
    Counter PUT_GIVEN_UP
        "sluice_put_records_given_up_total"
        "Records given up after the retry time ran out, by stream."
        ["stream"];
    Counter ROUTER_RECORDS_IN
        "sluice_router_records_in_total"
        "Records the router read."
        [];
    Counter ROUTER_ROUTED
        "sluice_router_routed_total"
        "Records each route matched, by route."
        ["route"];
    Counter ROUTER_UNMATCHED
        "sluice_router_unmatched_total"
        "Records no route matched."
        [];
    Counter ROUTER_DEAD_LETTERS
        "sluice_router_dead_letters_total"
        "Records sent to dead-letter, by reason."
        ["reason"];
    Gauge ROUTER_MILLIS_BEHIND
        "sluice_router_millis_behind_latest"
        "How far the router is behind the tip of the inbound stream, by shard."
        ["shard"];
    Counter VIEW_RECORDS
        "sluice_view_records_total"
        "Records a view's keeper read, by view and outcome: applied, or left out (duplicate, bad_ts, no_field, too_late, not_an_envelope)."
        ["view", "outcome"];
    Counter ROUTER_BATCHES_RETRIED
        "sluice_router_batches_retried_total"
        "Batches the Lambda router ended with records undelivered, reported in batchItemFailures for Lambda to retry."
        [];
}
