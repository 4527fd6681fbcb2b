//! `GET /v1/views` and `GET /v1/views/{name}`: what the keepers wrote,
//! merged across shards.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};

use sluice_core::table::AttrValue;
use sluice_core::{StreamBackend, TableBackend};

use super::keeper::{cell_key_for_partition, cell_key_for_window};
use super::spec::{ViewKind, ViewSpec};
use super::state::CellState;
use super::{extent_key, Views};
use crate::error::AppError;

/// Most windows one answer holds.
pub const MAX_WINDOWS: i64 = 1440;
/// Windows answered when the request names no range: the latest ones.
const DEFAULT_WINDOWS: i64 = 60;
/// Partition keys a latest view lists when the request names none.
const MAX_KEYS: usize = 100;
/// Table reads in flight for one answer.
const READS_IN_FLIGHT: usize = 32;

pub struct ViewsState {
    pub views: Arc<Views>,
    pub streams: Arc<dyn StreamBackend>,
}

fn table_error(e: sluice_core::TableError) -> AppError {
    match e {
        sluice_core::TableError::Throttled(reason)
        | sluice_core::TableError::Unavailable(reason) => AppError::Unavailable {
            reason,
            retry_after_secs: 1,
        },
        other => AppError::Internal(other.to_string()),
    }
}

/// `GET /v1/views`.
pub async fn list(State(state): State<Arc<ViewsState>>) -> Json<Value> {
    Json(Value::Array(
        state
            .views
            .specs
            .iter()
            .map(|spec| describe(spec))
            .collect(),
    ))
}

fn describe(spec: &ViewSpec) -> Value {
    json!({
        "name": spec.name,
        "kind": spec.kind.as_str(),
        "from": spec.from,
        "group_by": spec.group_by,
        "window_secs": (spec.kind != ViewKind::Latest).then_some(spec.window_ms / 1000),
        "keep": matches!(spec.kind, ViewKind::Top | ViewKind::Latest).then_some(spec.keep),
        "retention_secs": spec.retention.as_secs(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewQuery {
    from: Option<String>,
    to: Option<String>,
    group: Option<String>,
    key: Option<String>,
}

fn parse_time(name: &str, text: &str) -> Result<i64, AppError> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|_| AppError::BadRequest(format!("{name}={text:?}: expected an RFC 3339 time")))
}

fn window_start(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("window starts are valid times")
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `GET /v1/views/{name}?from=&to=&group=&key=`.
pub async fn read(
    State(state): State<Arc<ViewsState>>,
    Path(name): Path<String>,
    query: Result<Query<ViewQuery>, QueryRejection>,
) -> Result<Json<Value>, AppError> {
    let Query(query) = query?;
    let spec = state
        .views
        .specs
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| AppError::NotFound(format!("no view named {name:?}")))?
        .clone();
    let tables = state.views.tables.clone();
    let table = state.views.table.clone();
    if spec.kind == ViewKind::Latest {
        if query.from.is_some() || query.to.is_some() || query.group.is_some() {
            return Err(AppError::BadRequest(
                "a latest view takes `key`, not from, to or group".into(),
            ));
        }
        return read_latest(&spec, tables.as_ref(), &table, query.key).await;
    }
    if query.key.is_some() {
        return Err(AppError::BadRequest(format!(
            "key: a {} view has windows, not keys",
            spec.kind.as_str()
        )));
    }
    let window = spec.window_ms;
    let align = |ms: i64| ms.div_euclid(window) * window;
    let (from, to) = match (&query.from, &query.to) {
        (from, to) if from.is_some() || to.is_some() => {
            let to = match to {
                Some(text) => align(parse_time("to", text)?),
                None => align(crate::views::keeper::now_ms()),
            };
            let from = match from {
                Some(text) => align(parse_time("from", text)?),
                None => to - (DEFAULT_WINDOWS - 1) * window,
            };
            (from, to)
        }
        _ => match tables
            .get(&table, &extent_key(&spec.name))
            .await
            .map_err(table_error)?
        {
            Some(extent) => {
                let get = |name: &str| extent.get(name).and_then(AttrValue::as_i64);
                let (Some(first), Some(last)) = (get("min"), get("max")) else {
                    return Err(AppError::Internal("a damaged extent".into()));
                };
                (first.max(last - (DEFAULT_WINDOWS - 1) * window), last)
            }
            None => {
                return Ok(Json(json!({
                    "view": spec.name, "kind": spec.kind.as_str(), "windows": []
                })))
            }
        },
    };
    if to < from {
        return Err(AppError::BadRequest("to is before from".into()));
    }
    if (to - from) / window + 1 > MAX_WINDOWS {
        return Err(AppError::BadRequest(format!(
            "from..to spans more than {MAX_WINDOWS} windows; ask for less"
        )));
    }
    let shards: Vec<String> = state
        .streams
        .list_shards(&spec.from)
        .await
        .map_err(crate::api::stream_error)?
        .into_iter()
        .map(|s| s.shard_id)
        .collect();
    let mut keys: Vec<(i64, String)> = Vec::new();
    for i in 0..=(to - from) / window {
        let start = from + i * window;
        for shard in &shards {
            keys.push((start, cell_key_for_window(&spec.name, start, shard)));
        }
    }
    let cells: Vec<(i64, Result<Option<sluice_core::table::Item>, _>)> =
        futures::stream::iter(keys.into_iter().map(|(start, key)| {
            let (tables, table) = (tables.clone(), table.clone());
            async move { (start, tables.get(&table, &key).await) }
        }))
        .buffered(READS_IN_FLIGHT)
        .collect()
        .await;
    let mut windows: BTreeMap<i64, CellState> = BTreeMap::new();
    for (start, cell) in cells {
        let Some(item) = cell.map_err(table_error)? else {
            continue;
        };
        let (_, _, state) = CellState::from_item(spec.kind, &item)
            .map_err(|e| AppError::Internal(format!("a damaged cell: {e}")))?;
        let merged = windows
            .entry(start)
            .or_insert_with(|| CellState::empty(spec.kind));
        merge(merged, state);
    }
    let windows: Vec<Value> = windows
        .into_iter()
        .map(|(start, state)| window_json(&spec, start, state, query.group.as_deref()))
        .collect();
    Ok(Json(json!({
        "view": spec.name,
        "kind": spec.kind.as_str(),
        "windows": windows,
    })))
}

fn merge(into: &mut CellState, from: CellState) {
    match (into, from) {
        (CellState::Numbers(a), CellState::Numbers(b)) => {
            for (group, value) in b {
                *a.entry(group).or_default() += value;
            }
        }
        (CellState::Values(a), CellState::Values(b)) => {
            for (group, values) in b {
                let into = a.entry(group).or_default();
                for (value, count) in values {
                    *into.entry(value).or_default() += count;
                }
            }
        }
        _ => unreachable!("a view's cells hold one kind"),
    }
}

fn number(kind: ViewKind, value: f64) -> Value {
    if kind == ViewKind::Count {
        json!(value.round() as u64)
    } else {
        json!(value)
    }
}

fn window_json(spec: &ViewSpec, start: i64, state: CellState, group: Option<&str>) -> Value {
    let wanted = |g: &str| group.is_none_or(|want| want == g);
    match state {
        CellState::Numbers(groups) => {
            let groups: serde_json::Map<String, Value> = groups
                .into_iter()
                .filter(|(g, _)| wanted(g))
                .map(|(g, v)| (g, number(spec.kind, v)))
                .collect();
            json!({ "start": window_start(start), "groups": groups })
        }
        CellState::Values(groups) => {
            let ranked = |values: BTreeMap<String, u64>| {
                let mut values: Vec<(String, u64)> = values.into_iter().collect();
                values.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                values.truncate(spec.keep);
                Value::Array(
                    values
                        .into_iter()
                        .map(|(value, count)| json!({ "value": value, "count": count }))
                        .collect(),
                )
            };
            if spec.group_by.is_none() {
                let values = groups.into_values().next().unwrap_or_default();
                json!({ "start": window_start(start), "top": ranked(values) })
            } else {
                let groups: serde_json::Map<String, Value> = groups
                    .into_iter()
                    .filter(|(g, _)| wanted(g))
                    .map(|(g, values)| (g, ranked(values)))
                    .collect();
                json!({ "start": window_start(start), "top": groups })
            }
        }
        CellState::Records(_) => unreachable!("latest views have no windows"),
    }
}

async fn read_latest(
    spec: &ViewSpec,
    tables: &dyn TableBackend,
    table: &str,
    key: Option<String>,
) -> Result<Json<Value>, AppError> {
    let items: Vec<(String, sluice_core::table::Item)> = match key {
        Some(key) => tables
            .get(table, &cell_key_for_partition(&spec.name, &key))
            .await
            .map_err(table_error)?
            .map(|item| vec![(key, item)])
            .unwrap_or_default(),
        None => {
            let prefix = cell_key_for_partition(&spec.name, "");
            tables
                .scan(table)
                .await
                .map_err(table_error)?
                .into_iter()
                .filter_map(|(k, item)| Some((k.strip_prefix(&prefix)?.to_owned(), item)))
                .take(MAX_KEYS)
                .collect()
        }
    };
    let mut keys = serde_json::Map::new();
    for (key, item) in items {
        let (_, _, state) = CellState::from_item(ViewKind::Latest, &item)
            .map_err(|e| AppError::Internal(format!("a damaged cell: {e}")))?;
        let CellState::Records(records) = state else {
            unreachable!("latest cells hold records");
        };
        let envelopes: Vec<Value> = records
            .iter()
            .map(|text| serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone())))
            .collect();
        keys.insert(key, Value::Array(envelopes));
    }
    Ok(Json(
        json!({ "view": spec.name, "kind": "latest", "keys": keys }),
    ))
}
