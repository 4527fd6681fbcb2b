//! Keeping a view: a consumer application per view (`VIEWS_TABLE-NAME`) on
//! the consumer library, so leases, checkpoints and failover come with it.
//!
//! Exactly once without transactions: every cell of the table belongs to
//! one shard (a window's cell per shard; a partition key's records come from
//! one shard at a time) and remembers the position, in its shard, of the
//! last record it took. A record is applied to a cell only if it comes after
//! that position, and the cell is written back only if no one moved it in
//! between (a conditional write on the position). A batch offered again
//! after a crash, a failover or a lost checkpoint finds its records already
//! in the cells and changes nothing; the checkpoint only saves rereading.
//!
//! An event can also be in a stream twice, as two records: a router that
//! crashed after writing and before its checkpoint writes its batch again.
//! So each event (by `event_id`) is claimed first: a marker names the record
//! that counts for it, written only if there is none. The record the marker
//! names is applied (again and again, harmlessly, until its cell has it);
//! any other record of the same event is a duplicate and left out. Markers
//! expire with the windows they count in.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use sluice_client::consumer::{Batch, Checkpointer, ProcessError, RecordProcessor, UserRecord};
use sluice_client::follow::Position;
use sluice_core::envelope::{decode, decode_headers};
use sluice_core::table::{AttrValue, Condition, EXPIRES_AT};
use sluice_core::{HeaderValue, TableBackend, TableError};
use sluice_telemetry::metrics;

use super::spec::{Field, ViewKind, ViewSpec};
use super::state::{CellState, NO_GROUP};

/// Conditional writes lost to another writer before a batch is offered again.
const MAX_CONFLICTS: u32 = 50;

pub struct ViewProcessor {
    pub spec: Arc<ViewSpec>,
    pub tables: Arc<dyn TableBackend>,
    pub table: String,
    pub shard: String,
}

/// A record's place in the view: its cell, the cell's expiry, what it adds,
/// and its event's id.
struct Placed {
    key: String,
    expires_at: i64,
    contribution: Contribution,
    event_id: Option<String>,
}

/// What one record adds to one cell.
pub enum Contribution {
    /// count: 1, sum: the field's value; in a group.
    Number { group: String, value: f64 },
    /// top: one more of this value, in a group.
    Value { group: String, value: String },
    /// latest: the envelope.
    Record { envelope: String },
}

/// Why a record of the stream is not in the view.
enum Left {
    Unmatched,
    Outcome(&'static str),
}

impl ViewProcessor {
    /// The cell a record goes to and what it adds, or why it is left out.
    fn place(&self, record: &UserRecord) -> Result<Placed, Left> {
        let spec = &self.spec;
        let headers = decode_headers(&record.data).map_err(|_| Left::Outcome("not_an_envelope"))?;
        if let Some(pattern) = &spec.pattern {
            if !pattern.matches(&|name| headers.get(name)) {
                return Err(Left::Unmatched);
            }
        }
        let event_id = headers.get("event_id").map(|id| id.to_string());
        if spec.kind == ViewKind::Latest {
            let envelope = String::from_utf8_lossy(&record.data).into_owned();
            return Ok(Placed {
                key: cell_key_for_partition(&spec.name, &record.partition_key),
                expires_at: (now_ms() + spec.retention.as_millis() as i64) / 1000,
                contribution: Contribution::Record { envelope },
                event_id,
            });
        }
        let ts = match headers.get("ts") {
            Some(HeaderValue::Str(text)) => chrono::DateTime::parse_from_rfc3339(text)
                .map_err(|_| Left::Outcome("bad_ts"))?
                .timestamp_millis(),
            _ => return Err(Left::Outcome("bad_ts")),
        };
        let start = ts.div_euclid(spec.window_ms) * spec.window_ms;
        let expires_ms = start + spec.window_ms + spec.retention.as_millis() as i64;
        if expires_ms <= now_ms() {
            return Err(Left::Outcome("too_late"));
        }
        let group = match &spec.group_by {
            None => NO_GROUP.to_owned(),
            Some(name) => headers
                .get(name)
                .map_or_else(|| "(none)".to_owned(), |v| v.to_string()),
        };
        let contribution = match (&spec.kind, &spec.field) {
            (ViewKind::Count, _) => Contribution::Number { group, value: 1.0 },
            (ViewKind::Sum, Some(Field::Header(name))) => {
                let value = match headers.get(name) {
                    Some(HeaderValue::Num(n)) => *n,
                    Some(HeaderValue::Str(text)) => {
                        text.parse().map_err(|_| Left::Outcome("no_field"))?
                    }
                    _ => return Err(Left::Outcome("no_field")),
                };
                Contribution::Number { group, value }
            }
            (ViewKind::Top, Some(Field::Header(name))) => match headers.get(name) {
                Some(value) => Contribution::Value {
                    group,
                    value: value.to_string(),
                },
                None => return Err(Left::Outcome("no_field")),
            },
            (ViewKind::Top, Some(Field::Payload(pointer))) => {
                let envelope =
                    decode(&record.data).map_err(|_| Left::Outcome("not_an_envelope"))?;
                let payload: serde_json::Value = envelope
                    .payload
                    .and_then(|p| serde_json::from_slice(p).ok())
                    .ok_or(Left::Outcome("no_field"))?;
                let value = match payload.pointer(pointer) {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(serde_json::Value::Null) | None => return Err(Left::Outcome("no_field")),
                    Some(other) => other.to_string(),
                };
                Contribution::Value { group, value }
            }
            _ => unreachable!("checked with the configuration"),
        };
        Ok(Placed {
            key: cell_key_for_window(&spec.name, start, &self.shard),
            expires_at: expires_ms / 1000,
            contribution,
            event_id,
        })
    }

    /// Which of `placed` count: records without an event id, and those
    /// whose event's marker names them (written now, or by an earlier
    /// attempt at the same record). Returns them and how many were
    /// duplicates.
    async fn claim<'r>(
        &self,
        placed: Vec<(&'r UserRecord, Placed)>,
    ) -> Result<(Vec<(&'r UserRecord, Placed)>, u64), ProcessError> {
        let failed = |e: TableError| ProcessError::new(format!("view {}: {e}", self.spec.name));
        let claim_of =
            |record: &UserRecord| format!("{}/{}", self.shard, Position::after(record).to_text());
        let puts: Vec<_> = placed
            .iter()
            .filter_map(|(record, p)| {
                let id = p.event_id.as_ref()?;
                let item = sluice_core::table::Item::from([
                    ("claim".to_owned(), AttrValue::S(claim_of(record))),
                    (EXPIRES_AT.to_owned(), AttrValue::N(p.expires_at)),
                ]);
                Some((event_key(&self.spec.name, id), item, Condition::Absent))
            })
            .collect();
        let mut results = self.tables.put_many(&self.table, puts).await.into_iter();
        let mut kept = Vec::with_capacity(placed.len());
        let mut duplicates = 0;
        for (record, p) in placed {
            let Some(id) = &p.event_id else {
                kept.push((record, p));
                continue;
            };
            match results.next().expect("a result per put") {
                Ok(()) => kept.push((record, p)),
                Err(TableError::ConditionFailed) => {
                    let marker = self
                        .tables
                        .get(&self.table, &event_key(&self.spec.name, id))
                        .await
                        .map_err(failed)?;
                    let ours = claim_of(record);
                    match marker
                        .as_ref()
                        .and_then(|m| m.get("claim"))
                        .and_then(AttrValue::as_str)
                    {
                        Some(claim) if claim == ours => kept.push((record, p)),
                        Some(_) => duplicates += 1,
                        // Expired between the put and the get: too old to count.
                        None => duplicates += 1,
                    }
                }
                Err(e) => return Err(failed(e)),
            }
        }
        Ok((kept, duplicates))
    }

    /// Applies what a cell has not taken yet, guarded by its position.
    async fn apply(
        &self,
        key: &str,
        expires_at: i64,
        entries: &[(&UserRecord, Contribution)],
    ) -> Result<(), ProcessError> {
        let mut conflicts = 0;
        loop {
            let current = self
                .tables
                .get(&self.table, key)
                .await
                .map_err(|e| ProcessError::new(format!("view {}: {e}", self.spec.name)))?;
            let (owner, position, mut state) = match &current {
                Some(item) => CellState::from_item(self.spec.kind, item).map_err(|e| {
                    ProcessError::new(format!("view {} cell {key}: {e}", self.spec.name))
                })?,
                None => (None, None, CellState::empty(self.spec.kind)),
            };
            // A cell keyed by partition key may have been fed by a parent
            // shard before: its position says nothing about this shard.
            let same_shard = owner.as_deref().is_none_or(|o| o == self.shard);
            let fresh: Vec<&(&UserRecord, Contribution)> = entries
                .iter()
                .filter(|(record, _)| match (&position, same_shard) {
                    (Some(at), true) => at.admits(record),
                    _ => true,
                })
                .collect();
            let Some((last, _)) = fresh.last() else {
                return Ok(());
            };
            for (_, contribution) in &fresh {
                state.add(contribution, self.spec.keep);
            }
            let mut item = state.to_item();
            item.insert("shard".into(), AttrValue::S(self.shard.clone()));
            item.insert("pos".into(), AttrValue::S(Position::after(last).to_text()));
            let expires_at = match current.as_ref().and_then(|i| i.get(EXPIRES_AT)) {
                Some(AttrValue::N(before)) => expires_at.max(*before),
                _ => expires_at,
            };
            item.insert(EXPIRES_AT.into(), AttrValue::N(expires_at));
            let condition = match current.as_ref().and_then(|i| i.get("pos")) {
                Some(pos) => Condition::Equals("pos".into(), pos.clone()),
                None => Condition::Absent,
            };
            match self.tables.put(&self.table, key, item, condition).await {
                Ok(()) => {
                    metrics::VIEW_RECORDS
                        .counter(&[("view", &self.spec.name), ("outcome", "applied")])
                        .add(fresh.len() as u64);
                    return Ok(());
                }
                Err(TableError::ConditionFailed) if conflicts < MAX_CONFLICTS => conflicts += 1,
                Err(e) => {
                    return Err(ProcessError::new(format!(
                        "view {} cell {key}: {e}",
                        self.spec.name
                    )))
                }
            }
        }
    }
}

#[async_trait]
impl RecordProcessor for ViewProcessor {
    async fn process_records(
        &mut self,
        batch: &Batch,
        checkpointer: &mut Checkpointer,
    ) -> Result<(), ProcessError> {
        let mut placed = Vec::with_capacity(batch.records.len());
        let mut left: BTreeMap<&'static str, u64> = BTreeMap::new();
        for record in &batch.records {
            match self.place(record) {
                Ok(p) => placed.push((record, p)),
                Err(Left::Unmatched) => {}
                Err(Left::Outcome(outcome)) => *left.entry(outcome).or_default() += 1,
            }
        }
        let (placed, duplicates) = self.claim(placed).await?;
        if duplicates > 0 {
            left.insert("duplicate", duplicates);
        }
        let mut cells: BTreeMap<String, (i64, Vec<(&UserRecord, Contribution)>)> = BTreeMap::new();
        for (record, p) in placed {
            let cell = cells.entry(p.key).or_insert((p.expires_at, Vec::new()));
            cell.0 = cell.0.max(p.expires_at);
            cell.1.push((record, p.contribution));
        }
        for (outcome, count) in left {
            metrics::VIEW_RECORDS
                .counter(&[("view", &self.spec.name), ("outcome", outcome)])
                .add(count);
        }
        for (key, (expires_at, entries)) in &cells {
            self.apply(key, *expires_at, entries).await?;
        }
        let starts = cells
            .keys()
            .filter(|_| self.spec.kind != ViewKind::Latest)
            .filter_map(|key| window_of(key));
        if let Some((first, last)) = starts.fold(None, |range: Option<(i64, i64)>, start| {
            Some(range.map_or((start, start), |(a, b)| (a.min(start), b.max(start))))
        }) {
            super::extend(
                self.tables.as_ref(),
                &self.table,
                &self.spec.name,
                first,
                last,
            )
            .await
            .map_err(|e| ProcessError::new(format!("view {}: {e}", self.spec.name)))?;
        }
        checkpointer
            .checkpoint()
            .await
            .map_err(|e| ProcessError::new(format!("checkpoint: {e}")))
    }
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The cell of a window of a view, for one shard. Window starts are
/// zero-padded so keys sort in time order.
pub fn cell_key_for_window(view: &str, start_ms: i64, shard: &str) -> String {
    format!("{view}/w/{start_ms:015}/{shard}")
}

/// The window start in a window cell's key.
fn window_of(key: &str) -> Option<i64> {
    let mut parts = key.rsplitn(3, '/');
    let _shard = parts.next()?;
    parts.next()?.parse().ok()
}

/// The marker of an event: which record counts for it.
fn event_key(view: &str, event_id: &str) -> String {
    format!("{view}/e/{event_id}")
}

pub fn cell_key_for_partition(view: &str, partition_key: &str) -> String {
    format!("{view}/k/{partition_key}")
}
