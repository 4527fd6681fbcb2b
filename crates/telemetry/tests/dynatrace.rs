//! The Dynatrace configuration in `deploy/dynatrace` against the metrics
//! Sluice defines: every selector of every metric event and dashboard tile
//! names a metric that exists, in the form Dynatrace stores it (counters
//! `.count`, gauges `.gauge`, histograms as they are), and splits or
//! filters only by dimensions that metric has. A renamed metric, a dropped
//! label or a typo fails here, not in production.

use std::collections::BTreeMap;

use sluice_telemetry::metrics::ALL;
use sluice_telemetry::registry::{Kind, MetricDef};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/dynatrace/sluice");

/// The key Dynatrace gives a metric ingested over OTLP.
fn dynatrace_key(def: &MetricDef) -> String {
    match def.kind {
        Kind::Counter => format!("{}.count", def.name),
        Kind::Gauge => format!("{}.gauge", def.name),
        Kind::Histogram => def.name.to_owned(),
    }
}

/// Dynatrace's rule for dimension keys: lower-case letters, digits, `_`,
/// `-`, `.`, starting with a letter.
fn valid_dimension_key(key: &str) -> bool {
    key.starts_with(|c: char| c.is_ascii_lowercase())
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.".contains(c))
}

/// The strings in `"…"` inside the first `name(…)` of `selector` after `from`.
fn quoted_args(selector: &str, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = selector;
    while let Some(at) = rest.find(name) {
        let after = &rest[at + name.len()..];
        let end = after.find(')').expect("closed call");
        let inside = &after[..end];
        out.extend(inside.split('"').skip(1).step_by(2).map(str::to_owned));
        rest = &after[end..];
    }
    out
}

/// Checks one selector; returns the metric it reads.
fn check_selector(selector: &str, where_: &str) -> &'static MetricDef {
    let keys: BTreeMap<String, &'static MetricDef> =
        ALL.iter().map(|def| (dynatrace_key(def), *def)).collect();
    let key = selector.split(':').next().unwrap();
    let def = keys.get(key).unwrap_or_else(|| {
        panic!("{where_}: {key} is not a metric Sluice exports (as Dynatrace stores it)")
    });
    let mut dimensions = quoted_args(selector, "splitBy(");
    for filter in quoted_args(selector, "eq(").chunks(2) {
        dimensions.push(filter[0].clone());
    }
    for dimension in dimensions {
        assert!(
            def.labels.contains(&dimension.as_str()),
            "{where_}: {} has no dimension {dimension:?} (it has {:?})",
            def.name,
            def.labels
        );
    }
    if selector.contains(":percentile(") {
        assert_eq!(
            def.kind,
            Kind::Histogram,
            "{where_}: percentiles need a histogram"
        );
    }
    def
}

/// Each `selector: '…'` of the metric events, with its config id.
fn metric_event_selectors() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(format!("{DIR}/metric-events.yaml")).unwrap();
    let mut id = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(value) = line.strip_prefix("- id: ") {
            id = value.to_owned();
        }
        if let Some(value) = line.strip_prefix("selector: ") {
            let value = value.trim_matches('\'').replace("''", "'");
            out.push((id.clone(), value));
        }
    }
    out
}

#[test]
fn every_metric_event_reads_a_metric_sluice_exports() {
    let selectors = metric_event_selectors();
    assert_eq!(selectors.len(), 10);
    let read: Vec<&str> = selectors
        .iter()
        .map(|(id, selector)| check_selector(selector, id).name)
        .collect();
    // What the alerts must cover.
    for needed in [
        "sluice_consumer_millis_behind_latest",
        "sluice_router_dead_letters_total",
        "sluice_put_records_failed_entries_total",
        "sluice_put_records_given_up_total",
        "sluice_collector_requests_total",
        "sluice_collector_request_duration_seconds",
        "sluice_telemetry_export_failures_total",
        "sluice_router_batches_retried_total",
    ] {
        assert!(read.contains(&needed), "no metric event on {needed}");
    }
    let statuses: Vec<String> = selectors
        .iter()
        .flat_map(|(_, s)| quoted_args(s, "eq(\"status\","))
        .collect();
    assert_eq!(statuses, ["503", "429"]);
}

#[test]
fn the_metric_event_template_renders_to_the_settings_schema() {
    let template = std::fs::read_to_string(format!("{DIR}/metric-event.json")).unwrap();
    let text = std::fs::read_to_string(format!("{DIR}/metric-events.yaml")).unwrap();
    let configs: Vec<&str> = text.split("\n  - id: ").skip(1).collect();
    assert_eq!(configs.len(), 10);
    for config in configs {
        let params = config.split("parameters:\n").nth(1).unwrap();
        let mut rendered = template.clone();
        for line in params.lines() {
            let (name, value) = line.trim().split_once(": ").unwrap();
            let value = value.trim_matches('\'').replace("''", "'");
            let placeholder = format!("{{{{ .{name} }}}}");
            // String parameters are escaped for JSON, as Monaco does.
            let escaped = serde_json::to_string(&value).unwrap();
            rendered = rendered.replace(&placeholder, &escaped[1..escaped.len() - 1]);
        }
        assert!(
            !rendered.contains("{{"),
            "a parameter is missing:\n{rendered}"
        );
        let event: serde_json::Value =
            serde_json::from_str(&rendered).unwrap_or_else(|e| panic!("{e}:\n{rendered}"));
        assert_eq!(event["queryDefinition"]["type"], "METRIC_SELECTOR");
        let model = &event["modelProperties"];
        assert_eq!(model["type"], "STATIC_THRESHOLD");
        let (samples, violating) = (
            model["samples"].as_u64().unwrap(),
            model["violatingSamples"].as_u64().unwrap(),
        );
        assert!(
            (1..=samples).contains(&violating),
            "violating samples within the window"
        );
        assert!(model["threshold"].is_number());
        assert!(["ABOVE", "BELOW"].contains(&model["alertCondition"].as_str().unwrap()));
        let kind = event["eventTemplate"]["eventType"].as_str().unwrap();
        assert!(
            [
                "ERROR",
                "SLOWDOWN",
                "CUSTOM_ALERT",
                "AVAILABILITY",
                "RESOURCE"
            ]
            .contains(&kind),
            "{kind}"
        );
    }
}

#[test]
fn every_dashboard_tile_reads_a_metric_sluice_exports() {
    let text = std::fs::read_to_string(format!("{DIR}/dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let tiles = dashboard["tiles"].as_array().unwrap();
    let mut read = Vec::new();
    for tile in tiles {
        let name = tile["name"].as_str().unwrap();
        let expression = tile["metricExpressions"][0].as_str().unwrap();
        let selector = expression.strip_prefix("resolution=null&").unwrap();
        assert_eq!(tile["queries"][0]["metricSelector"], selector, "{name}");
        read.push(check_selector(selector, name).name);
    }
    for needed in [
        "sluice_collector_events_accepted_total",
        "sluice_router_routed_total",
        "sluice_router_dead_letters_total",
        "sluice_consumer_millis_behind_latest",
        "sluice_collector_request_duration_seconds",
        "sluice_router_batches_retried_total",
    ] {
        assert!(read.contains(&needed), "no tile on {needed}");
    }
}

#[test]
fn metric_names_and_labels_follow_dynatrace_rules() {
    for def in ALL {
        let key = dynatrace_key(def);
        assert!((2..=255).contains(&key.len()));
        assert!(key.starts_with(|c: char| c.is_ascii_alphabetic()), "{key}");
        assert!(
            key.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)),
            "{key}"
        );
        for label in def.labels {
            assert!(valid_dimension_key(label), "{}: {label}", def.name);
        }
    }
}
