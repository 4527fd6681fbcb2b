//! Every metric Sluice emits, defined once.

use crate::registry::{Kind, MetricDef};

macro_rules! counter {
    ($id:ident, $name:literal, $help:literal) => {
        pub static $id: MetricDef = MetricDef {
            name: $name,
            help: $help,
            kind: Kind::Counter,
        };
    };
}
macro_rules! gauge {
    ($id:ident, $name:literal, $help:literal) => {
        pub static $id: MetricDef = MetricDef {
            name: $name,
            help: $help,
            kind: Kind::Gauge,
        };
    };
}

counter!(
    COLLECTOR_REQUESTS,
    "sluice_collector_requests_total",
    "HTTP requests to the collector, by status code."
);
counter!(
    COLLECTOR_EVENTS_RECEIVED,
    "sluice_collector_events_received_total",
    "Events the collector received."
);
counter!(
    COLLECTOR_EVENTS_ACCEPTED,
    "sluice_collector_events_accepted_total",
    "Events acknowledged by the inbound stream."
);
counter!(
    COLLECTOR_EVENTS_REJECTED,
    "sluice_collector_events_rejected_total",
    "Events rejected, by reason."
);
gauge!(
    COLLECTOR_QUEUE_DEPTH,
    "sluice_collector_queue_depth",
    "Events accepted by the collector and waiting for the stream."
);

counter!(
    PUT_CALLS,
    "sluice_put_records_calls_total",
    "PutRecords calls, by stream."
);
counter!(
    PUT_RECORDS,
    "sluice_put_records_records_total",
    "Records acknowledged by PutRecords, by stream."
);
counter!(
    PUT_USER_RECORDS,
    "sluice_put_records_user_records_total",
    "User records acknowledged by PutRecords, by stream: more than the records when they are aggregated."
);
counter!(
    PUT_FAILED_ENTRIES,
    "sluice_put_records_failed_entries_total",
    "PutRecords entries that failed and were retried or given up, by stream."
);
counter!(
    PUT_GIVEN_UP,
    "sluice_put_records_given_up_total",
    "Records given up after the retry time ran out, by stream."
);

counter!(
    ROUTER_RECORDS_IN,
    "sluice_router_records_in_total",
    "Records the router read."
);
counter!(
    ROUTER_ROUTED,
    "sluice_router_routed_total",
    "Records each route matched, by route."
);
counter!(
    ROUTER_UNMATCHED,
    "sluice_router_unmatched_total",
    "Records no route matched."
);
counter!(
    ROUTER_DEAD_LETTERS,
    "sluice_router_dead_letters_total",
    "Records sent to dead-letter, by reason."
);
gauge!(
    ROUTER_MILLIS_BEHIND,
    "sluice_router_millis_behind_latest",
    "How far the router is behind the tip of the inbound stream, by shard."
);
