//! What a cell of a view holds, and how it is stored in a table item.

use std::collections::{BTreeMap, VecDeque};

use sluice_client::follow::Position;
use sluice_core::table::{AttrValue, Item};

use super::keeper::Contribution;
use super::spec::ViewKind;

/// The group of a view without `group_by`.
pub const NO_GROUP: &str = "*";
/// Most distinct values a top view's cell counts; past it the rest is
/// counted under [`OTHER`], so a cell's size stays bounded.
pub const MAX_TOP_VALUES: usize = 10_000;
pub const OTHER: &str = "(other)";

#[derive(Clone, Debug, PartialEq)]
pub enum CellState {
    /// count and sum: a number per group.
    Numbers(BTreeMap<String, f64>),
    /// top: a count per value, per group.
    Values(BTreeMap<String, BTreeMap<String, u64>>),
    /// latest: envelopes, newest first.
    Records(VecDeque<String>),
}

impl CellState {
    pub fn empty(kind: ViewKind) -> Self {
        match kind {
            ViewKind::Count | ViewKind::Sum => CellState::Numbers(BTreeMap::new()),
            ViewKind::Top => CellState::Values(BTreeMap::new()),
            ViewKind::Latest => CellState::Records(VecDeque::new()),
        }
    }

    pub fn add(&mut self, contribution: &Contribution, keep: usize) {
        match (self, contribution) {
            (CellState::Numbers(groups), Contribution::Number { group, value }) => {
                *groups.entry(group.clone()).or_default() += value;
            }
            (CellState::Values(groups), Contribution::Value { group, value }) => {
                let values = groups.entry(group.clone()).or_default();
                let value = if values.len() >= MAX_TOP_VALUES && !values.contains_key(value) {
                    OTHER.to_owned()
                } else {
                    value.clone()
                };
                *values.entry(value).or_default() += 1;
            }
            (CellState::Records(records), Contribution::Record { envelope }) => {
                records.push_front(envelope.clone());
                records.truncate(keep);
            }
            _ => unreachable!("a cell holds one kind"),
        }
    }

    pub fn to_item(&self) -> Item {
        let data = match self {
            CellState::Numbers(groups) => serde_json::to_string(groups),
            CellState::Values(groups) => serde_json::to_string(groups),
            CellState::Records(records) => serde_json::to_string(records),
        }
        .expect("cells serialize");
        Item::from([("data".to_owned(), AttrValue::S(data))])
    }

    /// The cell's shard, position and content.
    #[allow(clippy::type_complexity)]
    pub fn from_item(
        kind: ViewKind,
        item: &Item,
    ) -> Result<(Option<String>, Option<Position>, Self), String> {
        let data = item
            .get("data")
            .and_then(AttrValue::as_str)
            .ok_or("no data")?;
        let state = match kind {
            ViewKind::Count | ViewKind::Sum => {
                CellState::Numbers(serde_json::from_str(data).map_err(|e| e.to_string())?)
            }
            ViewKind::Top => {
                CellState::Values(serde_json::from_str(data).map_err(|e| e.to_string())?)
            }
            ViewKind::Latest => {
                CellState::Records(serde_json::from_str(data).map_err(|e| e.to_string())?)
            }
        };
        let position = match item.get("pos").and_then(AttrValue::as_str) {
            Some(text) => Some(Position::from_text(text).ok_or("a damaged position")?),
            None => None,
        };
        let shard = item
            .get("shard")
            .and_then(AttrValue::as_str)
            .map(str::to_owned);
        Ok((shard, position, state))
    }
}
