//! Dedup keys: remember which events were applied, for a while, so that a
//! processor can apply each event once although records come again after
//! retries, failovers and restarts (the consumer delivers at least once).
//!
//! The contract: `seen` before applying, `remember` after. A crash between
//! applying and remembering repeats that one event; an apply that must
//! never repeat has to be idempotent itself (or transactional with its own
//! dedup key).

use std::sync::Arc;
use std::time::Duration;

use sluice_core::table::{AttrValue, Condition, Item, TableBackend, TableError, EXPIRES_AT};

/// Event ids with an expiry, in one table (DynamoDB TTL on `expires_at`).
#[derive(Clone)]
pub struct Dedup {
    tables: Arc<dyn TableBackend>,
    table: String,
    ttl: Duration,
}

impl Dedup {
    /// Ids are kept for `ttl`: longer than a record can come again (the
    /// stream's retention is a safe choice).
    pub fn new(tables: Arc<dyn TableBackend>, table: &str, ttl: Duration) -> Self {
        Self {
            tables,
            table: table.to_owned(),
            ttl,
        }
    }

    pub async fn ensure(&self) -> Result<(), TableError> {
        self.tables.ensure_table(&self.table).await
    }

    /// Whether `event_id` was remembered and has not expired.
    pub async fn seen(&self, event_id: &str) -> Result<bool, TableError> {
        Ok(self.tables.get(&self.table, event_id).await?.is_some())
    }

    /// Remembers `event_id` until the TTL passes.
    pub async fn remember(&self, event_id: &str) -> Result<(), TableError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let item: Item = [(
            EXPIRES_AT.to_owned(),
            AttrValue::N(now + self.ttl.as_secs() as i64),
        )]
        .into();
        self.tables
            .put(&self.table, event_id, item, Condition::Always)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_backends::local::LocalTable;

    #[tokio::test]
    async fn remembered_ids_are_seen_until_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let tables: Arc<dyn TableBackend> =
            Arc::new(LocalTable::open(&dir.path().join("t.redb")).unwrap());
        let dedup = Dedup::new(tables.clone(), "dedup", Duration::from_secs(3600));
        dedup.ensure().await.unwrap();
        assert!(!dedup.seen("e-1").await.unwrap());
        dedup.remember("e-1").await.unwrap();
        assert!(dedup.seen("e-1").await.unwrap());
        assert!(!dedup.seen("e-2").await.unwrap());
        // An id kept for no time has expired at once.
        let fleeting = Dedup::new(tables, "dedup", Duration::ZERO);
        fleeting.remember("e-3").await.unwrap();
        assert!(!fleeting.seen("e-3").await.unwrap());
    }
}
