//! Drills: every Dynatrace alert Sluice ships (`deploy/dynatrace`), tripped
//! by the fault it exists for, and judged on what `sluice up` exported over
//! OTLP the way Dynatrace judges a metric event (see `support::alerts`);
//! and a clean run of the same length in which none of them opens.
//!
//! A drill's sample is [`SAMPLE`] where Dynatrace's is a minute, with the
//! thresholds as written: each drill causes in a second what opens the
//! event in a minute. The lag alerts' threshold is a time (60 s behind), so
//! their drill waits for records to be that old.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::alerts::{alert, alerts, percentile, Series, SAMPLE, SAMPLES};
use support::otlp::{receiver, Exports};
use support::process::{Sluice, TOKEN};
use support::wait::{wait_for, wait_until};

const KEY: &str = "wk_drill_shop";
const ORIGIN: &str = "https://shop.example";

/// `sluice up`'s configuration: `collector` goes into `[collector]`,
/// `tables` after the rest.
fn config(collector: &str, tables: &str) -> String {
    format!(
        r#"
inbound = "inbound"
[streams]
inbound_shards = 2
output_shards = 1
[collector]
tokens_env = "E2E_TOKENS"
{collector}

[[routes]]
name = "clicks"
match = {{ type = ["click"] }}
to = ["clicks"]

[[sites]]
name = "shop"
write_key = "{KEY}"
origins = ["{ORIGIN}"]
rate_limit = {{ events_per_sec = 50, burst = 50 }}

{tables}
"#
    )
}

/// Writers posting for the length of a run.
#[derive(Clone, Copy)]
struct Writers {
    /// Requests in flight at once.
    concurrency: usize,
    events_per_request: usize,
    /// Bytes of padding in each event's payload.
    padding: usize,
    /// A website's write key and origin instead of the bearer token.
    site: bool,
    /// Between one answer and the next request of a writer.
    pause: Duration,
}

impl Writers {
    const CALM: Writers = Writers {
        concurrency: 2,
        events_per_request: 10,
        padding: 64,
        site: false,
        pause: Duration::from_millis(50),
    };
}

/// Posts until `until`; the number of answers per status.
async fn write(url: &str, writers: Writers, until: Instant) -> BTreeMap<u16, u64> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let statuses = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    let mut tasks = Vec::new();
    for _ in 0..writers.concurrency {
        let (http, statuses, url) = (http.clone(), statuses.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            let pad = "x".repeat(writers.padding);
            while Instant::now() < until {
                let body: String = (0..writers.events_per_request)
                    .map(|_| {
                        let n = NEXT.fetch_add(1, Ordering::Relaxed);
                        format!(
                            "{{\"type\":\"click\",\"event_id\":\"drill-{}-{n}\",\"payload\":{{\"pad\":\"{pad}\"}}}}\n",
                            std::process::id()
                        )
                    })
                    .collect();
                let request = if writers.site {
                    http.post(format!("{url}/v1/events?key={KEY}"))
                        .header("origin", ORIGIN)
                        .header("content-type", "text/plain")
                } else {
                    http.post(format!("{url}/v1/events"))
                        .bearer_auth(TOKEN)
                        .header("content-type", "application/x-ndjson")
                };
                let status = match request.body(body).send().await {
                    Ok(answer) => answer.status().as_u16(),
                    Err(_) => 0,
                };
                *statuses.lock().unwrap().entry(status).or_insert(0) += 1;
                tokio::time::sleep(writers.pause).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    Arc::try_unwrap(statuses).unwrap().into_inner().unwrap()
}

/// What a run exported, and what its writers were answered.
struct Run {
    exports: Exports,
    start: Instant,
    statuses: BTreeMap<u16, u64>,
}

impl Run {
    fn series(&self, id: &str) -> Series {
        let received = self.exports.metrics.lock().unwrap();
        alert(id).series(&received, self.start, SAMPLE, SAMPLES)
    }

    /// Asserts that the metric event `id` opens, and shows where.
    fn assert_fires(&self, id: &str) {
        let series = self.series(id);
        assert!(
            alert(id).fired(&series).is_some(),
            "{id} did not open; samples per series {series:?}; answers {:?}",
            self.statuses
        );
    }
}

/// The OTLP settings of a run: metrics every 200 ms, every request traced.
fn telemetry_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_owned()),
        ("OTEL_METRIC_EXPORT_INTERVAL", "200".into()),
        ("OTEL_TRACES_SAMPLER", "parentbased_always_on".into()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
    ]
}

/// Waits until an export arrived after `after`: the run's last sample is in.
async fn wait_for_export_after(exports: &Exports, after: Instant) {
    wait_until(
        Duration::from_secs(20),
        "an OTLP export after the run",
        || {
            let metrics = exports.metrics.lock().unwrap();
            match metrics.iter().any(|(at, _)| *at > after) {
                true => Ok(()),
                false => Err(format!("{} exports, none after", metrics.len())),
            }
        },
    )
    .await
}

/// Runs `sluice up` with `config_text`, ready before the clock starts, with
/// `writers` for [`SAMPLES`] samples.
async fn run(dir: &Path, config_text: &str, refuse_traces: bool, writers: &[Writers]) -> Run {
    let (endpoint, exports) = receiver(refuse_traces).await;
    let env = telemetry_env(&endpoint);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut sluice = Sluice::start_with(dir, "up", config_text, &env);
    wait_ready(&sluice.url).await;
    let start = Instant::now();
    let until = start + SAMPLE * SAMPLES as u32;
    let mut statuses = BTreeMap::new();
    let runs: Vec<_> = writers
        .iter()
        .map(|w| {
            let url = sluice.url.clone();
            let w = *w;
            tokio::spawn(async move { write(&url, w, until).await })
        })
        .collect();
    for answers in runs {
        for (status, n) in answers.await.unwrap() {
            *statuses.entry(status).or_insert(0) += n;
        }
    }
    wait_for_export_after(&exports, until).await;
    sluice.stop();
    Run {
        exports,
        start,
        statuses,
    }
}

async fn wait_ready(url: &str) {
    wait_for(Duration::from_secs(30), "sluice up to be ready", || async {
        match reqwest::get(format!("{url}/readyz")).await {
            Ok(answer) if answer.status() == 200 => Ok(()),
            Ok(answer) => Err(answer.text().await.unwrap_or_default()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_run_opens_no_alert() {
    let dir = tempfile::tempdir().unwrap();
    let site = Writers {
        site: true,
        events_per_request: 2,
        pause: Duration::from_millis(100),
        ..Writers::CALM
    };
    let run = run(dir.path(), &config("", ""), false, &[Writers::CALM, site]).await;
    let answered: u64 = run.statuses.values().sum();
    assert_eq!(
        run.statuses.get(&202),
        Some(&answered),
        "{:?}",
        run.statuses
    );
    for alert in alerts() {
        if alert.id == "sluice-router-lambda-errors" {
            continue; // the Lambda's own clean run is in tests/lambda.rs
        }
        let series = run.series(&alert.id);
        assert_eq!(alert.fired(&series), None, "{}: {series:?}", alert.id);
    }
    // Not quiet for want of data: the pipeline reported all along.
    for id in [
        "sluice-collector-latency",
        "sluice-router-lag",
        "sluice-consumer-lag",
    ] {
        let series = run.series(id);
        assert!(
            !series.is_empty() && series.values().all(|s| s.iter().all(Option::is_some)),
            "{id}: a sample without data: {series:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_a_full_collector_queue_opens_the_503_alert() {
    let dir = tempfile::tempdir().unwrap();
    let slow_stream = "[faults]\ndelay_rate = 1.0\nmax_delay_ms = 1000\nseed = 1";
    let writers = Writers {
        concurrency: 12,
        pause: Duration::from_millis(20),
        ..Writers::CALM
    };
    let config = config(
        "queue_events = 20\nmax_events_per_request = 10",
        slow_stream,
    );
    let run = run(dir.path(), &config, false, &[writers]).await;
    run.assert_fires("sluice-collector-unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_a_site_past_its_rate_limit_opens_the_429_alert() {
    let dir = tempfile::tempdir().unwrap();
    let flood = Writers {
        concurrency: 4,
        events_per_request: 1,
        site: true,
        pause: Duration::from_millis(5),
        ..Writers::CALM
    };
    let run = run(dir.path(), &config("", ""), false, &[flood]).await;
    run.assert_fires("sluice-collector-rate-limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_a_slow_stream_opens_the_latency_alert() {
    let dir = tempfile::tempdir().unwrap();
    let slow_stream = "[faults]\ndelay_rate = 1.0\nmax_delay_ms = 1500\nseed = 2";
    let writers = Writers {
        concurrency: 8,
        ..Writers::CALM
    };
    let run = run(dir.path(), &config("", slow_stream), false, &[writers]).await;
    run.assert_fires("sluice-collector-latency");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_failing_entries_open_the_failed_entries_alert() {
    let dir = tempfile::tempdir().unwrap();
    let failing = "[faults]\nentry_failure_rate = 0.5\nseed = 3";
    let writers = Writers {
        concurrency: 4,
        events_per_request: 50,
        ..Writers::CALM
    };
    let run = run(dir.path(), &config("", failing), false, &[writers]).await;
    run.assert_fires("sluice-put-failed-entries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_a_stream_refusing_every_entry_opens_the_given_up_alert() {
    let dir = tempfile::tempdir().unwrap();
    let refusing = "[faults]\nentry_failure_rate = 1.0\nseed = 4";
    let quick = "retry = { base_ms = 10, max_ms = 20, max_elapsed_ms = 200 }";
    let run = run(
        dir.path(),
        &config(quick, refusing),
        false,
        &[Writers::CALM],
    )
    .await;
    assert!(
        run.statuses.get(&503).is_some_and(|n| *n > 0),
        "{:?}",
        run.statuses
    );
    run.assert_fires("sluice-put-given-up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_records_too_large_for_the_router_open_the_dead_letter_alert() {
    let dir = tempfile::tempdir().unwrap();
    // The collector takes events up to its limit; the router's is lower.
    let small = "[router]\nmax_record_bytes = 400";
    let big = Writers {
        padding: 600,
        events_per_request: 2,
        pause: Duration::from_millis(500),
        ..Writers::CALM
    };
    let run = run(dir.path(), &config("", small), false, &[big]).await;
    run.assert_fires("sluice-dead-letters");
    assert!(run
        .series("sluice-dead-letters")
        .contains_key(&vec!["too_large".to_owned()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_a_refusing_telemetry_endpoint_opens_the_export_failure_alert() {
    let dir = tempfile::tempdir().unwrap();
    let run = run(dir.path(), &config("", ""), true, &[Writers::CALM]).await;
    run.assert_fires("sluice-telemetry-export-failures");
    assert!(run
        .series("sluice-telemetry-export-failures")
        .contains_key(&vec!["traces".to_owned()]));
}

/// The lag alerts: the router stopped while events came in, started again
/// a minute later, reading one record at a time from a slow stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_a_router_a_minute_behind_opens_the_lag_alerts() {
    let dir = tempfile::tempdir().unwrap();
    // Events in while nothing routes.
    let mut collector = Sluice::start_with(dir.path(), "collector", &config("", ""), &[]);
    let body: String = (0..300)
        .map(|i| format!("{{\"type\":\"click\",\"event_id\":\"late-{i}\"}}\n"))
        .collect();
    support::process::post_ndjson(&collector.url, body).await;
    let written = Instant::now();
    collector.stop();
    // The fault is time itself: the records must be a minute old.
    tokio::time::sleep_until((written + Duration::from_secs(62)).into()).await;

    let (endpoint, exports) = receiver(false).await;
    let env = telemetry_env(&endpoint);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let slow =
        "[router]\nbatch_records = 1\n[faults]\ndelay_rate = 1.0\nmax_delay_ms = 200\nseed = 5";
    let start = Instant::now();
    let mut sluice = Sluice::start_with(dir.path(), "up", &config("", slow), &env);
    let until = start + SAMPLE * SAMPLES as u32;
    wait_for_export_after(&exports, until).await;
    sluice.stop();
    let run = Run {
        exports,
        start,
        statuses: BTreeMap::new(),
    };
    run.assert_fires("sluice-router-lag");
    run.assert_fires("sluice-consumer-lag");
}

#[test]
fn percentiles_interpolate_inside_their_bucket() {
    // 100 observations: 50 in (0, 1], 49 in (1, 2], 1 above 2.
    let counts = [50, 49, 1];
    let bounds = [1.0, 2.0];
    assert_eq!(percentile(&counts, &bounds, 50.0), Some(1.0));
    assert_eq!(percentile(&counts, &bounds, 99.0), Some(2.0));
    assert_eq!(percentile(&counts, &bounds, 100.0), Some(2.0));
    let p75 = percentile(&counts, &bounds, 75.0).unwrap();
    assert!((p75 - (1.0 + 25.0 / 49.0)).abs() < 1e-9, "{p75}");
    assert_eq!(percentile(&[0, 0, 0], &bounds, 99.0), None);
}

#[test]
fn a_window_opens_with_enough_violating_samples_only() {
    let mut event = alert("sluice-collector-unavailable");
    event.threshold = 10.0;
    event.samples = 5;
    event.violating = 3;
    let series = |values: &[f64]| -> Series {
        [(Vec::new(), values.iter().map(|v| Some(*v)).collect())].into()
    };
    // Two violating samples in every window of five: quiet.
    assert_eq!(
        event.fired(&series(&[11.0, 0.0, 0.0, 0.0, 11.0, 0.0, 0.0, 0.0])),
        None
    );
    // At the threshold is not above it.
    assert_eq!(event.fired(&series(&[10.0; 8])), None);
    // Three in one window: open, at the window's first sample.
    assert_eq!(
        event.fired(&series(&[0.0, 0.0, 11.0, 0.0, 12.0, 0.0, 13.0, 0.0])),
        Some((Vec::new(), 2))
    );
}
