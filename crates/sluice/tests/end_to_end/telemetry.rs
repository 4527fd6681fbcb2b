//! One trace from the page to the consumer, metrics over OTLP and
//! Prometheus, and a pipeline that does not wait for telemetry.

use super::*;

fn spans(exports: &Exports) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for request in exports.traces.lock().unwrap().iter() {
        for resource in &request.resource_spans {
            let service = resource
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| a.value.clone())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for scope in &resource.scope_spans {
                for span in &scope.spans {
                    let trace: String = span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                    out.push((service.clone(), span.name.clone(), trace));
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_is_followed_from_the_page_to_collector_router_and_consumer_in_one_trace() {
    let (endpoint, traces) = receiver(false).await;
    let moto = moto_endpoint();
    let prefix = format!("trace-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let mut env: Vec<(&str, &str)> = AWS_ENV.to_vec();
    env.extend([
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        // Every request traced, not the default 1%.
        ("OTEL_TRACES_SAMPLER", "parentbased_always_on"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
    ]);
    let sluice = Sluice::start_with(dir.path(), "up", &aws_config(&moto, &prefix, true), &env);
    let mut consumer = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "consume",
            "--app",
            &format!("{prefix}-readers"),
            "--stream",
            &format!("{prefix}-clicks"),
        ])
        .args(["--failover-ms", "3000", "--config"])
        .arg(dir.path().join("sluice.toml"))
        .envs(env.iter().copied())
        .env("E2E_TOKENS", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // The page's own trace context, as a browser SDK or RUM agent sends it
    // in the `traceparent` request header: the collector continues it.
    let page_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let answer = client()
        .post(format!("{}/v1/events", sluice.url))
        .header("content-type", "application/json")
        .header(
            "traceparent",
            format!("00-{page_trace}-00f067aa0ba902b7-01"),
        )
        .body(r#"{"type":"click","event_id":"traced-1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    wait_for_count(
        Duration::from_secs(60),
        &sluice.url,
        &format!("{prefix}-clicks"),
        1,
    )
    .await;
    let record = read_stream(&sluice.url, &format!("{prefix}-clicks"))
        .await
        .remove(0);
    let Some(HeaderValue::Str(traceparent)) =
        decode(&record).unwrap().headers.get("traceparent").cloned()
    else {
        panic!("no traceparent in the routed record")
    };
    let trace = traceparent.split('-').nth(1).unwrap().to_owned();
    assert_eq!(trace, page_trace, "the page's trace is continued");

    wait_for(
        Duration::from_secs(60),
        "the three hops in one trace",
        || {
            let found = spans(&traces);
            let trace = trace.clone();
            async move {
                let hops: BTreeSet<&str> = found
                    .iter()
                    .filter(|(_, _, t)| *t == trace)
                    .map(|(_, name, _)| name.as_str())
                    .collect();
                if ["collector.request", "router.route", "consume"]
                    .iter()
                    .all(|h| hops.contains(h))
                {
                    Ok(())
                } else {
                    Err(format!("trace {trace} has {hops:?}"))
                }
            }
        },
    )
    .await;
    let _ = consumer.kill();
    let _ = consumer.wait();
}

/// Every metric of that name in the export requests.
fn metrics_named<'a>(
    requests: &'a [MetricsRequest],
    name: &'a str,
) -> impl Iterator<Item = &'a opentelemetry_proto::tonic::metrics::v1::Metric> {
    requests
        .iter()
        .flat_map(|r| &r.resource_metrics)
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .filter(move |m| m.name == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_go_out_with_otlp_as_deltas_and_on_the_prometheus_endpoint() {
    use opentelemetry_proto::tonic::metrics::v1::{
        metric::Data, number_data_point::Value as Point, AggregationTemporality,
    };
    let (endpoint, received) = receiver(false).await;
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start_with(
        dir.path(),
        "up",
        CONFIG,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
            ("SLUICE_ENVIRONMENT", "test"),
        ],
    );
    let lines: Vec<String> = (0..5)
        .map(|i| format!(r#"{{"type":"click","event_id":"otlp-{i}"}}"#))
        .collect();
    let (status, body) = post(&sluice.url, "application/x-ndjson", lines.join("\n")).await;
    assert_eq!(status, 202, "{body}");

    // The deltas of the accepted-events counter add up to what was sent.
    wait_for(
        Duration::from_secs(30),
        "5 accepted events in OTLP deltas",
        || {
            let requests = received.metrics_requests();
            async move {
                let mut total = 0;
                for metric in metrics_named(&requests, "sluice_collector_events_accepted_total") {
                    let Some(Data::Sum(sum)) = &metric.data else {
                        return Err(format!("not a sum: {metric:?}"));
                    };
                    if sum.aggregation_temporality != AggregationTemporality::Delta as i32 {
                        return Err(format!("not delta: {sum:?}"));
                    }
                    for point in &sum.data_points {
                        if let Some(Point::AsInt(v)) = point.value {
                            total += v;
                        }
                    }
                }
                if total == 5 {
                    Ok(())
                } else {
                    Err(format!("{total} in {} requests", requests.len()))
                }
            }
        },
    )
    .await;
    let requests = received.metrics_requests();
    let resource = requests[0].resource_metrics[0].resource.clone().unwrap();
    let attribute = |key: &str| {
        resource
            .attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.clone())
            .and_then(|v| v.value)
            .map(|v| format!("{v:?}"))
    };
    assert!(attribute("service.name").unwrap().contains("sluice"));
    assert!(attribute("deployment.environment.name")
        .unwrap()
        .contains("test"));

    // The same counter on /metrics, in the Prometheus text format.
    let text = metrics_text(&sluice.url).await;
    let accepted: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("sluice_collector_events_accepted_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert_eq!(accepted, [5.0], "{text}");
    assert!(text.contains("# TYPE sluice_collector_events_accepted_total counter"));

    // Latencies: histograms in both, delta in OTLP. One request was made,
    // and at least one PutRecords call on the inbound stream.
    wait_for(
        Duration::from_secs(30),
        "the request and PutRecords histograms in OTLP",
        || {
            let requests = received.metrics_requests();
            async move {
                let count = |name: &str, label: Option<(&str, &str)>| -> Result<u64, String> {
                    let mut total = 0;
                    for metric in metrics_named(&requests, name) {
                        let Some(Data::Histogram(histogram)) = &metric.data else {
                            return Err(format!("not a histogram: {metric:?}"));
                        };
                        if histogram.aggregation_temporality != AggregationTemporality::Delta as i32
                        {
                            return Err(format!("not delta: {histogram:?}"));
                        }
                        for point in &histogram.data_points {
                            let labelled = label.is_none_or(|(key, value)| {
                                point.attributes.iter().any(|a| {
                                    a.key == key
                                        && format!("{:?}", a.value).contains(&format!("{value:?}"))
                                })
                            });
                            if labelled {
                                assert_eq!(point.bucket_counts.iter().sum::<u64>(), point.count);
                                total += point.count;
                            }
                        }
                    }
                    Ok(total)
                };
                let requests_timed = count("sluice_collector_request_duration_seconds", None)?;
                let calls_timed = count(
                    "sluice_put_records_duration_seconds",
                    Some(("stream", "inbound")),
                )?;
                if requests_timed == 1 && calls_timed >= 1 {
                    Ok(())
                } else {
                    Err(format!(
                        "{requests_timed} requests and {calls_timed} calls timed"
                    ))
                }
            }
        },
    )
    .await;
    let text = metrics_text(&sluice.url).await;
    for line in [
        "# TYPE sluice_collector_request_duration_seconds histogram",
        "sluice_collector_request_duration_seconds_count 1",
        "sluice_collector_request_duration_seconds_bucket{le=\"+Inf\"} 1",
        "sluice_collector_requests_total{status=\"202\"} 1",
        "# TYPE sluice_put_records_duration_seconds histogram",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_telemetry_endpoint_does_not_stop_the_pipeline() {
    // Nothing listens here.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start_with(
        dir.path(),
        "up",
        CONFIG,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_METRIC_EXPORT_INTERVAL", "100"),
            ("OTEL_TRACES_SAMPLER", "parentbased_always_on"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    for round in 0..3 {
        let (status, body) = post(
            &sluice.url,
            "application/json",
            format!(r#"{{"type":"purchase","event_id":"down-{round}"}}"#),
        )
        .await;
        assert_eq!(status, 202, "{body}");
    }
    wait_for(
        Duration::from_secs(30),
        "failed metric and span exports to be counted",
        || {
            let url = sluice.url.clone();
            async move {
                let text = metrics_text(&url).await;
                let failures = |signal: &str| -> f64 {
                    let series =
                        format!("sluice_telemetry_export_failures_total{{signal=\"{signal}\"}}");
                    text.lines()
                        .find(|l| l.starts_with(&series))
                        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
                        .unwrap_or(0.0)
                };
                if failures("metrics") > 0.0 && failures("traces") > 0.0 {
                    Ok(())
                } else {
                    Err(format!("not both counted yet:\n{text}"))
                }
            }
        },
    )
    .await;
    wait_for_count(Duration::from_secs(30), &sluice.url, "transactions", 3).await;
}
