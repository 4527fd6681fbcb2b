//! The table backend trait: the few key-value operations leases,
//! checkpoints, dedup keys and view counters need, with conditional writes
//! and expiry. Shaped by those needs, not by DynamoDB's whole API.

use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::retry::Retryable;

/// An attribute value. Sequence numbers are stored as strings: DynamoDB
/// numbers stop at 38 digits, Kinesis sequence numbers have 56.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AttrValue {
    S(String),
    N(i64),
    B(bool),
    L(Vec<String>),
}

impl AttrValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::S(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            AttrValue::N(n) => Some(*n),
            _ => None,
        }
    }
}

/// An item's attributes, without its key.
pub type Item = BTreeMap<String, AttrValue>;

/// The attribute that holds an item's expiry, in seconds since the Unix
/// epoch (the DynamoDB TTL attribute). An expired item reads as absent.
pub const EXPIRES_AT: &str = "expires_at";

/// A condition a write needs to hold, checked atomically with the write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    Always,
    /// No live item has this key (an expired one counts as absent).
    Absent,
    /// A live item has this key.
    Present,
    /// The live item's attribute equals the value.
    Equals(String, AttrValue),
    /// The live item lacks the attribute.
    Missing(String),
    All(Vec<Condition>),
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TableError {
    #[error("condition failed")]
    ConditionFailed,
    #[error("table {0} not found")]
    TableNotFound(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("throttled: {0}")]
    Throttled(String),
    #[error("table backend unavailable: {0}")]
    Unavailable(String),
    /// Credentials missing or refused, or the action not allowed.
    #[error("access denied ({0}); check the AWS credentials and the IAM policy")]
    AccessDenied(String),
    #[error("storage error: {0}")]
    Storage(String),
}

impl Retryable for TableError {
    fn is_retryable(&self) -> bool {
        matches!(self, TableError::Throttled(_) | TableError::Unavailable(_))
    }
}

/// A key-value table store. Every implementation passes the table
/// conformance suite in `sluice-backends`.
#[async_trait]
pub trait TableBackend: Send + Sync {
    /// Creates the table if it does not exist (string key, expiry enabled).
    async fn ensure_table(&self, table: &str) -> Result<(), TableError>;
    /// The live item under `key`.
    async fn get(&self, table: &str, key: &str) -> Result<Option<Item>, TableError>;
    /// Writes the whole item if `condition` holds.
    async fn put(
        &self,
        table: &str,
        key: &str,
        item: Item,
        condition: Condition,
    ) -> Result<(), TableError>;
    /// Deletes the item if `condition` holds; deleting nothing is not an error.
    async fn delete(&self, table: &str, key: &str, condition: Condition) -> Result<(), TableError>;
    /// Adds `delta` to a number attribute (missing counts as 0) and returns
    /// the new value.
    async fn add(&self, table: &str, key: &str, attr: &str, delta: i64) -> Result<i64, TableError>;
    /// Every live item, in key order.
    async fn scan(&self, table: &str) -> Result<Vec<(String, Item)>, TableError>;

    /// Writes each item whose condition holds: one result per item, in
    /// order. Not a transaction: each item stands alone, as if `put` were
    /// called for each in turn; backends write them together where they
    /// can (one commit on embedded storage, concurrent calls on DynamoDB).
    async fn put_many(
        &self,
        table: &str,
        puts: Vec<(String, Item, Condition)>,
    ) -> Vec<Result<(), TableError>> {
        let mut out = Vec::with_capacity(puts.len());
        for (key, item, condition) in puts {
            out.push(self.put(table, &key, item, condition).await);
        }
        out
    }
}

/// Whether `condition` holds for `current` (the live item, if any). Shared by
/// backends that check conditions themselves.
pub fn condition_holds(condition: &Condition, current: Option<&Item>) -> bool {
    match condition {
        Condition::Always => true,
        Condition::Absent => current.is_none(),
        Condition::Present => current.is_some(),
        Condition::Equals(name, value) => current.and_then(|item| item.get(name)) == Some(value),
        Condition::Missing(name) => current.is_some_and(|item| !item.contains_key(name)),
        Condition::All(all) => all.iter().all(|c| condition_holds(c, current)),
    }
}

/// Whether an item is past its expiry at `now_secs`.
pub fn is_expired(item: &Item, now_secs: i64) -> bool {
    matches!(item.get(EXPIRES_AT), Some(AttrValue::N(at)) if *at <= now_secs)
}
