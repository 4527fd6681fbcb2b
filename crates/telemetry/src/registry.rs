//! A small lock-free-on-the-hot-path metric registry: a metric with its
//! labels is looked up once and then updated through an atomic handle.
//! Histograms also record into the OTLP export when it runs (an observable
//! instrument cannot be a histogram), so both see every observation.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// What a metric is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    /// Durations in seconds, in the buckets of [`LATENCY_BOUNDS`].
    Histogram,
}

/// Upper bounds (seconds) of the latency histograms' buckets; a last bucket
/// takes everything above.
pub const LATENCY_BOUNDS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// A metric's definition: name, help text, kind. Defined once in [`crate::metrics`].
#[derive(Debug)]
pub struct MetricDef {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    /// The label names of every series, in this order (dimension keys in
    /// Dynatrace, which the monitoring configuration's selectors use).
    pub labels: &'static [&'static str],
}

impl MetricDef {
    fn check_labels(&self, pairs: &[(&'static str, &str)]) {
        debug_assert!(
            pairs
                .iter()
                .map(|(k, _)| *k)
                .eq(self.labels.iter().copied()),
            "{} takes the labels {:?}, not {:?}",
            self.name,
            self.labels,
            pairs.iter().map(|(k, _)| *k).collect::<Vec<_>>()
        );
    }
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

    /// Adds `v` until the returned guard is dropped, however the holder
    /// ends (a task cancelled or a client gone mid-request included).
    pub fn hold(&self, v: i64) -> GaugeHold {
        self.add(v);
        GaugeHold(self.clone(), v)
    }
}

/// What [`Gauge::hold`] added, taken back on drop.
#[derive(Debug)]
pub struct GaugeHold(Gauge, i64);

impl Drop for GaugeHold {
    fn drop(&mut self) {
        self.0.add(-self.1);
    }
}

/// A distribution of durations.
#[derive(Clone)]
pub struct Histogram(Arc<HistogramCell>);

struct HistogramCell {
    def: &'static MetricDef,
    labels: Labels,
    /// Observations per bucket (not cumulative); the last is above every bound.
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    sum_micros: AtomicU64,
    /// The OTLP side, bound once the export runs.
    otlp: OnceLock<crate::otlp::HistogramRecorder>,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let cell = &self.0;
        let seconds = elapsed.as_secs_f64();
        let bucket = LATENCY_BOUNDS.partition_point(|bound| *bound < seconds);
        cell.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        cell.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        if let Some(recorder) = crate::otlp::histogram_recorder(&cell.otlp, cell.def, &cell.labels)
        {
            recorder.record(seconds);
        }
    }

    fn snapshot(&self) -> HistogramSnapshot {
        let cell = &self.0;
        HistogramSnapshot {
            buckets: cell
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            sum_seconds: cell.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// A histogram's counts now.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    /// Observations per bucket of [`LATENCY_BOUNDS`], the last above them all.
    pub buckets: Vec<u64>,
    pub sum_seconds: f64,
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

enum Cell {
    Counter(Arc<AtomicU64>),
    Gauge(Arc<AtomicI64>),
    Histogram(Histogram),
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
        self.check_labels(pairs);
        let mut series = registry().series.lock().expect("registry lock");
        let cell = series
            .entry((self.name, labels(pairs)))
            .or_insert_with(|| (self, Cell::Counter(Arc::default())));
        match &cell.1 {
            Cell::Counter(c) => Counter(c.clone()),
            _ => unreachable!("kinds are fixed by the definition"),
        }
    }

    /// The gauge of this metric with these labels.
    pub fn gauge(&'static self, pairs: &[(&'static str, &str)]) -> Gauge {
        assert_eq!(self.kind, Kind::Gauge, "{} is not a gauge", self.name);
        self.check_labels(pairs);
        let mut series = registry().series.lock().expect("registry lock");
        let cell = series
            .entry((self.name, labels(pairs)))
            .or_insert_with(|| (self, Cell::Gauge(Arc::default())));
        match &cell.1 {
            Cell::Gauge(g) => Gauge(g.clone()),
            _ => unreachable!("kinds are fixed by the definition"),
        }
    }

    /// Drops the series with these labels, when what it measured is gone
    /// (a shard whose lease went to another worker, a shard that ended):
    /// neither `/metrics` nor the OTLP export reports it any more, instead
    /// of its last value for ever. A handle still held keeps working,
    /// unreported; asking for the series again starts a new one.
    pub fn remove(&'static self, pairs: &[(&'static str, &str)]) {
        self.check_labels(pairs);
        let mut series = registry().series.lock().expect("registry lock");
        series.remove(&(self.name, labels(pairs)));
    }

    /// The histogram of this metric with these labels.
    pub fn histogram(&'static self, pairs: &[(&'static str, &str)]) -> Histogram {
        assert_eq!(
            self.kind,
            Kind::Histogram,
            "{} is not a histogram",
            self.name
        );
        self.check_labels(pairs);
        let mut series = registry().series.lock().expect("registry lock");
        let labels = labels(pairs);
        let cell = series
            .entry((self.name, labels.clone()))
            .or_insert_with(|| {
                let cell = HistogramCell {
                    def: self,
                    labels,
                    buckets: Default::default(),
                    sum_micros: AtomicU64::new(0),
                    otlp: OnceLock::new(),
                };
                (self, Cell::Histogram(Histogram(Arc::new(cell))))
            });
        match &cell.1 {
            Cell::Histogram(h) => h.clone(),
            _ => unreachable!("kinds are fixed by the definition"),
        }
    }
}

/// A series' current value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Counter(u64),
    Gauge(i64),
    Histogram(HistogramSnapshot),
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
                Cell::Histogram(h) => Value::Histogram(h.snapshot()),
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
                Kind::Histogram => "histogram",
            };
            let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} {kind}", def.help);
            last_name = name;
        }
        match cell {
            Cell::Counter(c) => sample(&mut out, name, "", labels, None, c.load(Ordering::Relaxed)),
            Cell::Gauge(g) => sample(&mut out, name, "", labels, None, g.load(Ordering::Relaxed)),
            Cell::Histogram(h) => {
                let snapshot = h.snapshot();
                let mut cumulative = 0;
                for (i, count) in snapshot.buckets.iter().enumerate() {
                    cumulative += count;
                    let le = LATENCY_BOUNDS
                        .get(i)
                        .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
                    sample(&mut out, name, "_bucket", labels, Some(&le), cumulative);
                }
                sample(&mut out, name, "_sum", labels, None, snapshot.sum_seconds);
                sample(&mut out, name, "_count", labels, None, cumulative);
            }
        }
    }
    out
}

/// One sample line: name and suffix, labels (and `le`), value.
fn sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &Labels,
    le: Option<&str>,
    value: impl std::fmt::Display,
) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        let le = le.map(|le| ("le", le.to_owned()));
        for (i, (k, v)) in labels.iter().chain(le.as_ref()).enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape(v));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    static TEST_COUNTER: MetricDef = MetricDef {
        name: "sluice_test_things_total",
        help: "Things counted in a test.",
        kind: Kind::Counter,
        labels: &["reason"],
    };

    static TEST_HISTOGRAM: MetricDef = MetricDef {
        name: "sluice_test_wait_seconds",
        help: "Waits in a test.",
        kind: Kind::Histogram,
        labels: &["stream"],
    };

    #[test]
    fn histograms_render_cumulative_buckets_sum_and_count() {
        let h = TEST_HISTOGRAM.histogram(&[("stream", "s")]);
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(90));
        let text = render_prometheus();
        assert!(
            text.contains("# TYPE sluice_test_wait_seconds histogram"),
            "{text}"
        );
        for line in [
            "sluice_test_wait_seconds_bucket{stream=\"s\",le=\"0.0005\"} 1",
            "sluice_test_wait_seconds_bucket{stream=\"s\",le=\"0.0025\"} 1",
            "sluice_test_wait_seconds_bucket{stream=\"s\",le=\"0.005\"} 2",
            "sluice_test_wait_seconds_bucket{stream=\"s\",le=\"60\"} 2",
            "sluice_test_wait_seconds_bucket{stream=\"s\",le=\"+Inf\"} 3",
            "sluice_test_wait_seconds_sum{stream=\"s\"} 90.0033",
            "sluice_test_wait_seconds_count{stream=\"s\"} 3",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

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
