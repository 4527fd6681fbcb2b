//! Sluice's Dynatrace alerts (`deploy/dynatrace/sluice/metric-events.yaml`)
//! evaluated on what a Sluice exports over OTLP, the way Dynatrace
//! evaluates a metric event with a static threshold: the selector's metric,
//! filtered, split into series by its dimensions and aggregated per sample
//! (`sum` of a counter's deltas, `max` of a gauge, `percentile(p)` of a
//! histogram's merged buckets); a sample violates when its value is above
//! (or below) the threshold; the event opens when `violatingSamples` of any
//! `samples` consecutive samples of one series violate.
//!
//! Dynatrace's samples are minutes; a drill's are shorter (see
//! [`Alert::fired`]), with thresholds as written: a drill must cause in one
//! sample what would open the event in a minute.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point};

/// What stands for one of Dynatrace's one-minute samples in a drill.
pub const SAMPLE: Duration = Duration::from_secs(1);
/// Samples in a drill: room for every window of 5.
pub const SAMPLES: usize = 8;

const EVENTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/dynatrace/sluice/metric-events.yaml"
);

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Aggregation {
    Sum,
    Max,
    Percentile(f64),
}

/// One metric event of the configuration.
#[derive(Clone, Debug)]
pub struct Alert {
    pub id: String,
    /// The OTLP metric: the selector's key without `.count` / `.gauge`.
    pub metric: String,
    pub filter: Vec<(String, String)>,
    pub split_by: Vec<String>,
    pub aggregation: Aggregation,
    pub threshold: f64,
    pub above: bool,
    pub samples: usize,
    pub violating: usize,
}

/// Every metric event in the configuration.
pub fn alerts() -> Vec<Alert> {
    let text = std::fs::read_to_string(EVENTS).unwrap();
    text.split("\n  - id: ")
        .skip(1)
        .map(|config| {
            let id = config.lines().next().unwrap().trim().to_owned();
            let params: BTreeMap<&str, String> = config
                .split("parameters:\n")
                .nth(1)
                .unwrap_or_else(|| panic!("{id}: no parameters"))
                .lines()
                .filter_map(|line| line.trim().split_once(": "))
                .map(|(k, v)| (k, v.trim_matches('\'').replace("''", "'")))
                .collect();
            let number = |name: &str| -> f64 {
                params
                    .get(name)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{id}: {name} is not a number"))
            };
            let mut alert = parse_selector(&id, &params["selector"]);
            alert.threshold = number("threshold");
            alert.above = match params["condition"].as_str() {
                "ABOVE" => true,
                "BELOW" => false,
                other => panic!("{id}: condition {other}"),
            };
            alert.samples = number("samples") as usize;
            alert.violating = number("violatingSamples") as usize;
            alert
        })
        .collect()
}

/// The metric event with this id.
pub fn alert(id: &str) -> Alert {
    alerts()
        .into_iter()
        .find(|a| a.id == id)
        .unwrap_or_else(|| panic!("no metric event {id}"))
}

/// The quoted strings of `call(…)`.
fn quoted(call: &str) -> Vec<String> {
    call.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

fn parse_selector(id: &str, selector: &str) -> Alert {
    let mut parts = selector.split(':');
    let key = parts.next().unwrap();
    let metric = key
        .strip_suffix(".count")
        .or_else(|| key.strip_suffix(".gauge"))
        .unwrap_or(key)
        .to_owned();
    let mut alert = Alert {
        id: id.to_owned(),
        metric,
        filter: Vec::new(),
        split_by: Vec::new(),
        aggregation: Aggregation::Sum,
        threshold: 0.0,
        above: true,
        samples: 0,
        violating: 0,
    };
    for part in parts {
        if part.starts_with("filter(eq(") {
            let args = quoted(part);
            alert.filter.push((args[0].clone(), args[1].clone()));
        } else if part.starts_with("splitBy(") {
            alert.split_by = quoted(part);
        } else if part == "sum" {
            alert.aggregation = Aggregation::Sum;
        } else if part == "max" {
            alert.aggregation = Aggregation::Max;
        } else if let Some(p) = part
            .strip_prefix("percentile(")
            .and_then(|p| p.strip_suffix(')'))
        {
            alert.aggregation = Aggregation::Percentile(p.parse().unwrap());
        } else {
            panic!("{id}: selector part {part} is not understood here");
        }
    }
    alert
}

/// What one data point adds to a sample.
#[derive(Clone, Debug)]
enum Point {
    Number(f64),
    /// Bucket counts and explicit bounds.
    Buckets(Vec<u64>, Vec<f64>),
}

/// A series' value in each sample (`None`: no data).
pub type Series = BTreeMap<Vec<String>, Vec<Option<f64>>>;

impl Alert {
    /// Each series' samples: `count` samples of `length` from `start`, of
    /// the requests that arrived then.
    pub fn series(
        &self,
        received: &[(Instant, ExportMetricsServiceRequest)],
        start: Instant,
        length: Duration,
        count: usize,
    ) -> Series {
        let mut points: BTreeMap<Vec<String>, Vec<Vec<Point>>> = BTreeMap::new();
        for (at, request) in received {
            let Some(since) = at.checked_duration_since(start) else {
                continue;
            };
            let sample = (since.as_nanos() / length.as_nanos()) as usize;
            if sample >= count {
                continue;
            }
            for metric in request
                .resource_metrics
                .iter()
                .flat_map(|r| &r.scope_metrics)
                .flat_map(|s| &s.metrics)
                .filter(|m| m.name == self.metric)
            {
                for (attributes, point) in data_points(metric.data.as_ref()) {
                    let value = |key: &str| attribute(attributes, key).unwrap_or_default();
                    if self.filter.iter().any(|(k, v)| value(k) != *v) {
                        continue;
                    }
                    let key: Vec<String> = self.split_by.iter().map(|k| value(k)).collect();
                    points.entry(key).or_insert_with(|| vec![Vec::new(); count])[sample]
                        .push(point);
                }
            }
        }
        points
            .into_iter()
            .map(|(key, samples)| {
                let values = samples.iter().map(|s| self.aggregate(s)).collect();
                (key, values)
            })
            .collect()
    }

    fn aggregate(&self, points: &[Point]) -> Option<f64> {
        if points.is_empty() {
            return None;
        }
        let numbers = || {
            points.iter().map(|p| match p {
                Point::Number(v) => *v,
                Point::Buckets(..) => panic!("{}: a histogram needs a percentile", self.id),
            })
        };
        match self.aggregation {
            Aggregation::Sum => Some(numbers().sum()),
            Aggregation::Max => numbers().reduce(f64::max),
            Aggregation::Percentile(p) => {
                let mut merged: Vec<u64> = Vec::new();
                let mut bounds: Vec<f64> = Vec::new();
                for point in points {
                    let Point::Buckets(counts, b) = point else {
                        panic!("{}: a percentile needs a histogram", self.id)
                    };
                    if merged.is_empty() {
                        merged = vec![0; counts.len()];
                        bounds = b.clone();
                    }
                    assert_eq!(bounds, *b, "{}: buckets changed", self.id);
                    for (m, c) in merged.iter_mut().zip(counts) {
                        *m += c;
                    }
                }
                percentile(&merged, &bounds, p)
            }
        }
    }

    /// Whether the event opens on these samples, and where: the series and
    /// the first sample of the window.
    pub fn fired(&self, series: &Series) -> Option<(Vec<String>, usize)> {
        let breaks = |v: &Option<f64>| match v {
            Some(v) if self.above => *v > self.threshold,
            Some(v) => *v < self.threshold,
            None => false,
        };
        for (key, values) in series {
            assert!(
                values.len() >= self.samples,
                "{}: {} samples cannot fill a window of {}",
                self.id,
                values.len(),
                self.samples
            );
            for start in 0..=values.len() - self.samples {
                let violating = values[start..start + self.samples]
                    .iter()
                    .filter(|v| breaks(v))
                    .count();
                if violating >= self.violating {
                    return Some((key.clone(), start));
                }
            }
        }
        None
    }
}

/// The `p`th percentile of a histogram, interpolated inside its bucket as
/// Dynatrace estimates percentiles of OTLP histograms.
pub fn percentile(counts: &[u64], bounds: &[f64], p: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = p / 100.0 * total as f64;
    let mut below = 0u64;
    for (i, &count) in counts.iter().enumerate() {
        if count > 0 && (below + count) as f64 >= rank {
            let low = if i == 0 { 0.0 } else { bounds[i - 1] };
            let Some(&high) = bounds.get(i) else {
                // The overflow bucket: at least its lower bound.
                return Some(low);
            };
            let within = (rank - below as f64) / count as f64;
            return Some(low + (high - low) * within);
        }
        below += count;
    }
    bounds.last().copied()
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|a| a.key == key)?.value.as_ref()?;
    match value.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    }
}

fn data_points(data: Option<&Data>) -> Vec<(&[KeyValue], Point)> {
    let number = |v: Option<number_data_point::Value>| match v {
        Some(number_data_point::Value::AsInt(i)) => i as f64,
        Some(number_data_point::Value::AsDouble(d)) => d,
        None => 0.0,
    };
    match data {
        Some(Data::Sum(sum)) => sum
            .data_points
            .iter()
            .map(|p| (p.attributes.as_slice(), Point::Number(number(p.value))))
            .collect(),
        Some(Data::Gauge(gauge)) => gauge
            .data_points
            .iter()
            .map(|p| (p.attributes.as_slice(), Point::Number(number(p.value))))
            .collect(),
        Some(Data::Histogram(histogram)) => histogram
            .data_points
            .iter()
            .map(|p| {
                let buckets = Point::Buckets(p.bucket_counts.clone(), p.explicit_bounds.clone());
                (p.attributes.as_slice(), buckets)
            })
            .collect(),
        _ => Vec::new(),
    }
}
