//! A small lock-free-on-the-hot-path metric registry: a metric with its
//! labels is looked up once and then updated through an atomic handle.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// What a metric is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// A metric's definition: name, help text, kind. Defined once in [`crate::metrics`].
#[derive(Debug)]
pub struct MetricDef {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
}

type Labels = Vec<(&'static str, String)>;

/// A monotonically increasing count.
#[derive(Clone, Debug)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Clone, Debug)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn add(&self, v: i64) {
        self.0.fetch_add(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

enum Cell {
    Counter(Arc<AtomicU64>),
    Gauge(Arc<AtomicI64>),
}

/// Series by metric name and labels.
type Series = BTreeMap<(&'static str, Labels), (&'static MetricDef, Cell)>;

#[derive(Default)]
struct Registry {
    series: Mutex<Series>,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

impl MetricDef {
    /// The counter of this metric with these labels.
    pub fn counter(&'static self, pairs: &[(&'static str, &str)]) -> Counter {
        assert_eq!(self.kind, Kind::Counter, "{} is not a counter", self.name);
        let mut series = registry().series.lock().expect("registry lock");
        let cell = series
            .entry((self.name, labels(pairs)))
            .or_insert_with(|| (self, Cell::Counter(Arc::default())));
        match &cell.1 {
            Cell::Counter(c) => Counter(c.clone()),
            Cell::Gauge(_) => unreachable!("kinds are fixed by the definition"),
        }
    }

    /// The gauge of this metric with these labels.
    pub fn gauge(&'static self, pairs: &[(&'static str, &str)]) -> Gauge {
        assert_eq!(self.kind, Kind::Gauge, "{} is not a gauge", self.name);
        let mut series = registry().series.lock().expect("registry lock");
        let cell = series
            .entry((self.name, labels(pairs)))
            .or_insert_with(|| (self, Cell::Gauge(Arc::default())));
        match &cell.1 {
            Cell::Gauge(g) => Gauge(g.clone()),
            Cell::Counter(_) => unreachable!("kinds are fixed by the definition"),
        }
    }
}

/// A series' current value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value {
    Counter(u64),
    Gauge(i64),
}

/// Every series of one metric now: its labels and value.
pub fn series_of(def: &MetricDef) -> Vec<(Vec<(&'static str, String)>, Value)> {
    let series = registry().series.lock().expect("registry lock");
    series
        .range((def.name, Vec::new())..)
        .take_while(|((name, _), _)| *name == def.name)
        .map(|((_, labels), (_, cell))| {
            let value = match cell {
                Cell::Counter(c) => Value::Counter(c.load(Ordering::Relaxed)),
                Cell::Gauge(g) => Value::Gauge(g.load(Ordering::Relaxed)),
            };
            (labels.clone(), value)
        })
        .collect()
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Every series in the Prometheus text exposition format (version 0.0.4).
pub fn render_prometheus() -> String {
    let series = registry().series.lock().expect("registry lock");
    let mut out = String::new();
    let mut last_name = "";
    for ((name, labels), (def, cell)) in series.iter() {
        if *name != last_name {
            let kind = match def.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} {kind}", def.help);
            last_name = name;
        }
        out.push_str(name);
        if !labels.is_empty() {
            out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{k}=\"{}\"", escape(v));
            }
            out.push('}');
        }
        let value = match cell {
            Cell::Counter(c) => c.load(Ordering::Relaxed).to_string(),
            Cell::Gauge(g) => g.load(Ordering::Relaxed).to_string(),
        };
        let _ = writeln!(out, " {value}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    static TEST_COUNTER: MetricDef = MetricDef {
        name: "sluice_test_things_total",
        help: "Things counted in a test.",
        kind: Kind::Counter,
    };

    #[test]
    fn counters_render_with_escaped_labels() {
        let c = TEST_COUNTER.counter(&[("reason", "bad \"json\"")]);
        c.add(3);
        TEST_COUNTER.counter(&[("reason", "bad \"json\"")]).inc();
        let text = render_prometheus();
        assert!(
            text.contains("# TYPE sluice_test_things_total counter"),
            "{text}"
        );
        assert!(
            text.contains("sluice_test_things_total{reason=\"bad \\\"json\\\"\"} 4"),
            "{text}"
        );
    }
}
