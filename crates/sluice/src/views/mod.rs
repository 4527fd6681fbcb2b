//! Views: aggregates of a stream kept by consumer applications, one per
//! view, in the table (embedded, or DynamoDB with TTL), served over HTTP.
//!
//! A view counts, sums or ranks records per tumbling window of event time
//! (the `ts` header, UTC-aligned), optionally per group, or keeps the
//! latest records per partition key. It counts each record once through
//! redelivery, crashes and failover: see [`keeper`].

pub mod keeper;
pub mod query;
pub mod spec;
pub mod state;

use std::sync::Arc;
use std::time::Duration;

use sluice_client::consumer::{
    ConsumerConfig, ProcessorFactory, RecordProcessor, Worker, WorkerHandle,
};
use sluice_core::retry::Backoff;
use sluice_core::table::{AttrValue, Condition, Item};
use sluice_core::{StreamBackend, TableBackend, TableError};

pub use spec::{ViewConfig, ViewKind, ViewSpec};

/// The views of a configuration and where their cells are.
pub struct Views {
    pub specs: Vec<Arc<ViewSpec>>,
    pub tables: Arc<dyn TableBackend>,
    pub table: String,
}

/// The item holding the first and last window a view has data for.
pub fn extent_key(view: &str) -> String {
    format!("{view}/extent")
}

/// The consumer application that keeps a view (its lease table's name):
/// named after the views' table, so two deployments that share an account
/// keep apart.
pub fn application(table: &str, view: &str) -> String {
    format!("{table}-{view}")
}

impl Views {
    /// Starts a keeper (a worker of the view's consumer application) per
    /// view; stop them with [`RunningViews::stop`].
    pub async fn start(
        self: &Arc<Self>,
        streams: Arc<dyn StreamBackend>,
        worker_id: &str,
        failover: Duration,
        backoff: Backoff,
    ) -> Result<RunningViews, TableError> {
        if !self.specs.is_empty() {
            self.tables.ensure_table(&self.table).await?;
        }
        let mut workers = Vec::new();
        for spec in &self.specs {
            let mut config =
                ConsumerConfig::new(&application(&self.table, &spec.name), &spec.from, worker_id)
                    .with_failover(failover);
            config.backoff = backoff.clone();
            config.idle_poll = Duration::from_millis(50);
            // Big batches: a batch's markers are one commit, its cells a
            // write each, so the table's work per event falls as they grow.
            config.batch_records = 10_000;
            let (spec, tables, table) = (spec.clone(), self.tables.clone(), self.table.clone());
            let factory: Arc<dyn ProcessorFactory> =
                Arc::new(move |shard: &str| -> Box<dyn RecordProcessor> {
                    Box::new(keeper::ViewProcessor {
                        spec: spec.clone(),
                        tables: tables.clone(),
                        table: table.clone(),
                        shard: shard.to_owned(),
                    })
                });
            workers.push(Worker::start(
                streams.clone(),
                self.tables.clone(),
                config,
                factory,
            ));
        }
        Ok(RunningViews { workers })
    }
}

pub struct RunningViews {
    workers: Vec<WorkerHandle>,
}

impl RunningViews {
    /// Stops every keeper after its batch in hand.
    pub async fn stop(self) {
        for worker in self.workers {
            worker.shutdown().await;
        }
    }
}

/// Widens a view's extent to cover windows `first..=last`; idempotent.
pub async fn extend(
    tables: &dyn TableBackend,
    table: &str,
    view: &str,
    first: i64,
    last: i64,
) -> Result<(), TableError> {
    let key = extent_key(view);
    loop {
        let current = tables.get(table, &key).await?;
        let get = |name: &str| {
            current
                .as_ref()
                .and_then(|item| item.get(name))
                .and_then(AttrValue::as_i64)
        };
        let (min, max) = (get("min"), get("max"));
        let new_min = min.map_or(first, |m| m.min(first));
        let new_max = max.map_or(last, |m| m.max(last));
        if Some(new_min) == min && Some(new_max) == max {
            return Ok(());
        }
        let condition = match (min, max) {
            (Some(min), Some(max)) => Condition::All(vec![
                Condition::Equals("min".into(), AttrValue::N(min)),
                Condition::Equals("max".into(), AttrValue::N(max)),
            ]),
            _ => Condition::Absent,
        };
        let item = Item::from([
            ("min".to_owned(), AttrValue::N(new_min)),
            ("max".to_owned(), AttrValue::N(new_max)),
        ]);
        match tables.put(table, &key, item, condition).await {
            Ok(()) => return Ok(()),
            Err(TableError::ConditionFailed) => continue,
            Err(e) => return Err(e),
        }
    }
}
