//! Leases: one item per shard in the application's lease table, with the
//! attribute names of the KCL 2.x lease table where the concepts are the
//! same. Every change is a conditional write on `leaseCounter`, so two
//! workers can never both believe they hold a shard: whoever writes second
//! finds the counter moved and loses.

use sluice_core::table::{AttrValue, Condition, Item, TableBackend, TableError};
use sluice_core::SequenceNumber;

/// Checkpoint of a shard read to its end (its children may start).
pub const SHARD_END: &str = "SHARD_END";
/// Checkpoint of a new lease: where reading starts.
pub const TRIM_HORIZON: &str = "TRIM_HORIZON";
pub const LATEST: &str = "LATEST";
pub const AT_TIMESTAMP: &str = "AT_TIMESTAMP";

const LEASE_OWNER: &str = "leaseOwner";
const LEASE_COUNTER: &str = "leaseCounter";
const CHECKPOINT: &str = "checkpoint";
const CHECKPOINT_SUB: &str = "checkpointSubSequenceNumber";
const OWNER_SWITCHES: &str = "ownerSwitchesSinceCheckpoint";
const PARENT_SHARD_IDS: &str = "parentShardId";
/// Sluice's own: the start time of an AT_TIMESTAMP lease, in ms.
const START_TIMESTAMP_MS: &str = "startingTimestampMs";

/// Where a shard's reading stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checkpoint {
    TrimHorizon,
    Latest,
    /// Milliseconds since the Unix epoch.
    AtTimestamp(i64),
    /// Every record up to this one (and, in an aggregate, up to this
    /// sub-sequence) is processed.
    At {
        sequence: SequenceNumber,
        sub_sequence: u64,
    },
    ShardEnd,
}

/// One lease, as read from the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The shard id (`leaseKey` in the KCL's table).
    pub shard_id: String,
    pub owner: Option<String>,
    pub counter: i64,
    pub checkpoint: Checkpoint,
    pub owner_switches: i64,
    pub parents: Vec<String>,
}

/// Why a lease row could not be read.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("lease {shard}: {problem}")]
pub struct BadLease {
    pub shard: String,
    pub problem: String,
}

impl Lease {
    pub fn new(shard_id: &str, parents: Vec<String>, start: Checkpoint) -> Self {
        Self {
            shard_id: shard_id.to_owned(),
            owner: None,
            counter: 0,
            checkpoint: start,
            owner_switches: 0,
            parents,
        }
    }

    pub fn to_item(&self) -> Item {
        let mut item = Item::new();
        if let Some(owner) = &self.owner {
            item.insert(LEASE_OWNER.into(), AttrValue::S(owner.clone()));
        }
        item.insert(LEASE_COUNTER.into(), AttrValue::N(self.counter));
        let (checkpoint, sub) = match &self.checkpoint {
            Checkpoint::TrimHorizon => (TRIM_HORIZON.to_owned(), 0),
            Checkpoint::Latest => (LATEST.to_owned(), 0),
            Checkpoint::AtTimestamp(ms) => {
                item.insert(START_TIMESTAMP_MS.into(), AttrValue::N(*ms));
                (AT_TIMESTAMP.to_owned(), 0)
            }
            Checkpoint::At {
                sequence,
                sub_sequence,
            } => (sequence.to_string(), *sub_sequence as i64),
            Checkpoint::ShardEnd => (SHARD_END.to_owned(), 0),
        };
        item.insert(CHECKPOINT.into(), AttrValue::S(checkpoint));
        item.insert(CHECKPOINT_SUB.into(), AttrValue::N(sub));
        item.insert(OWNER_SWITCHES.into(), AttrValue::N(self.owner_switches));
        if !self.parents.is_empty() {
            item.insert(PARENT_SHARD_IDS.into(), AttrValue::L(self.parents.clone()));
        }
        item
    }

    /// Reads a lease row; a row someone else wrote with odd values is an
    /// error naming the problem, never a guess.
    pub fn from_item(shard_id: &str, item: &Item) -> Result<Self, BadLease> {
        let bad = |problem: String| BadLease {
            shard: shard_id.to_owned(),
            problem,
        };
        let owner = match item.get(LEASE_OWNER) {
            None => None,
            Some(AttrValue::S(s)) if !s.is_empty() => Some(s.clone()),
            Some(other) => return Err(bad(format!("{LEASE_OWNER} is {other:?}"))),
        };
        let number = |name: &str| match item.get(name) {
            None => Ok(0),
            Some(AttrValue::N(n)) if *n >= 0 => Ok(*n),
            Some(other) => Err(bad(format!("{name} is {other:?}"))),
        };
        let counter = number(LEASE_COUNTER)?;
        let sub = number(CHECKPOINT_SUB)?;
        let owner_switches = number(OWNER_SWITCHES)?;
        let checkpoint = match item.get(CHECKPOINT) {
            None => return Err(bad(format!("no {CHECKPOINT}"))),
            Some(AttrValue::S(text)) => match text.as_str() {
                TRIM_HORIZON => Checkpoint::TrimHorizon,
                LATEST => Checkpoint::Latest,
                SHARD_END => Checkpoint::ShardEnd,
                AT_TIMESTAMP => Checkpoint::AtTimestamp(number(START_TIMESTAMP_MS)?),
                other => Checkpoint::At {
                    sequence: SequenceNumber::parse(other).ok_or_else(|| {
                        bad(format!("{CHECKPOINT} {other:?} is not a sequence number"))
                    })?,
                    sub_sequence: sub as u64,
                },
            },
            Some(other) => return Err(bad(format!("{CHECKPOINT} is {other:?}"))),
        };
        let parents = match item.get(PARENT_SHARD_IDS) {
            None => Vec::new(),
            Some(AttrValue::L(ids)) => ids.clone(),
            Some(AttrValue::S(id)) => vec![id.clone()],
            Some(other) => return Err(bad(format!("{PARENT_SHARD_IDS} is {other:?}"))),
        };
        Ok(Self {
            shard_id: shard_id.to_owned(),
            owner,
            counter,
            checkpoint,
            owner_switches,
            parents,
        })
    }
}

/// Why a lease write did not happen.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum LeaseError {
    /// Someone else changed the lease first: it is not ours (any more).
    #[error("lease {0} changed under us")]
    Lost(String),
    #[error(transparent)]
    Table(#[from] TableError),
}

/// The lease table of one application.
#[derive(Clone)]
pub struct LeaseTable {
    pub table: String,
    backend: std::sync::Arc<dyn TableBackend>,
}

impl LeaseTable {
    pub fn new(backend: std::sync::Arc<dyn TableBackend>, table: &str) -> Self {
        Self {
            table: table.to_owned(),
            backend,
        }
    }

    pub async fn ensure(&self) -> Result<(), TableError> {
        self.backend.ensure_table(&self.table).await
    }

    /// Every lease; rows that cannot be read come back as errors beside them.
    pub async fn list(&self) -> Result<(Vec<Lease>, Vec<BadLease>), TableError> {
        let mut leases = Vec::new();
        let mut bad = Vec::new();
        for (key, item) in self.backend.scan(&self.table).await? {
            match Lease::from_item(&key, &item) {
                Ok(lease) => leases.push(lease),
                Err(e) => bad.push(e),
            }
        }
        Ok((leases, bad))
    }

    pub async fn get(&self, shard_id: &str) -> Result<Option<Lease>, LeaseError> {
        match self.backend.get(&self.table, shard_id).await? {
            None => Ok(None),
            Some(item) => Lease::from_item(shard_id, &item)
                .map(Some)
                .map_err(|e| LeaseError::Table(TableError::InvalidArgument(e.to_string()))),
        }
    }

    /// Creates the lease unless one exists; true when created.
    pub async fn create(&self, lease: &Lease) -> Result<bool, TableError> {
        match self
            .backend
            .put(
                &self.table,
                &lease.shard_id,
                lease.to_item(),
                Condition::Absent,
            )
            .await
        {
            Ok(()) => Ok(true),
            Err(TableError::ConditionFailed) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Writes `next` if the stored lease still has `expected_counter`: the
    /// one primitive behind renew, take, steal, checkpoint and release.
    pub async fn replace(&self, next: &Lease, expected_counter: i64) -> Result<(), LeaseError> {
        match self
            .backend
            .put(
                &self.table,
                &next.shard_id,
                next.to_item(),
                Condition::Equals(LEASE_COUNTER.into(), AttrValue::N(expected_counter)),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(TableError::ConditionFailed) => Err(LeaseError::Lost(next.shard_id.clone())),
            Err(e) => Err(LeaseError::Table(e)),
        }
    }

    /// Deletes a lease (of a shard gone from the stream).
    pub async fn delete(&self, shard_id: &str, expected_counter: i64) -> Result<(), LeaseError> {
        self.backend
            .delete(
                &self.table,
                shard_id,
                Condition::Equals(LEASE_COUNTER.into(), AttrValue::N(expected_counter)),
            )
            .await
            .map_err(|e| match e {
                TableError::ConditionFailed => LeaseError::Lost(shard_id.to_owned()),
                e => LeaseError::Table(e),
            })
    }
}
