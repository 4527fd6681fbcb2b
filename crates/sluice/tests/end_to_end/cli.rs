//! The command line: `sluice send` and `sluice tail`, SIGTERM draining,
//! `sluice collector`, and configuration errors at start-up.

use super::*;

fn sluice_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env("SLUICE_TOKEN", TOKEN)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_sends_and_tails_and_sigterm_drains() {
    let dir = tempfile::tempdir().unwrap();
    let mut sluice = start_up(dir.path());
    let url = sluice.url.clone();

    // `sluice sample` writes the generated shop events; `sluice send` posts
    // them: every event accepted.
    let generated = sluice_cli(&["sample", "--events", "20000", "--seed", "3"]);
    assert!(generated.status.success());
    let text = String::from_utf8(generated.stdout).unwrap();
    assert_eq!(text, sluice_core::sample::ndjson(3, 20_000));
    let sample = dir.path().join("sample.ndjson");
    std::fs::write(&sample, &text).unwrap();
    let transactions = text
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|event| matches!(event["type"].as_str(), Some("purchase" | "refund")))
        .count();
    assert!(transactions > 0);
    let sent = sluice_cli(&["send", sample.to_str().unwrap(), "--url", &url]);
    let stderr = String::from_utf8_lossy(&sent.stderr);
    assert!(sent.status.success(), "{stderr}");
    assert!(
        stderr.contains("20000 events accepted, 0 rejected"),
        "{stderr}"
    );
    // A file with a bad line: the reason is printed and the exit code says so.
    let bad = dir.path().join("bad.ndjson");
    std::fs::write(
        &bad,
        "{\"type\":\"click\"}\n{\"type\":\"click\",\"colour\":1}\n",
    )
    .unwrap();
    let refused = sluice_cli(&["send", bad.to_str().unwrap(), "--url", &url]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unknown field `colour`"));

    // `sluice tail` prints routed envelopes.
    wait_for_count(Duration::from_secs(60), &url, "transactions", transactions).await;
    let tailed = sluice_cli(&["tail", "transactions", "--url", &url, "--limit", "5"]);
    assert!(tailed.status.success());
    let lines: Vec<&[u8]> = tailed
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(lines.len(), 5);
    for line in lines {
        let kind = decode(line).unwrap().headers.get("type").cloned();
        assert!(matches!(kind, Some(HeaderValue::Str(ref t)) if t == "purchase" || t == "refund"));
    }

    // SIGTERM while events are posted: the process drains and exits cleanly,
    // and everything it acknowledged is there after a restart.
    let (posters, acked) = Posters::start(&url, 20, |poster, batch, i| {
        let id = format!("t{poster}-{batch}-{i}");
        let line = format!(r#"{{"type":"click","event_id":"{id}"}}"#);
        (id, line)
    });
    Posters::wait_for_acks(&acked, 1000).await;
    let term = Command::new("kill")
        .args(["-TERM", &sluice.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = sluice.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "sluice did not stop after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "sluice exited with {status}");
    for poster in posters {
        poster.await.unwrap();
    }
    let log = std::fs::read_to_string(dir.path().join("sluice.log")).unwrap();
    assert!(log.contains("stopped"), "{log}");

    let sluice = start_up(dir.path());
    let inbound: HashSet<String> = read_stream(&sluice.url, "inbound")
        .await
        .iter()
        .map(|r| event_id(r))
        .collect();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.iter().all(|id| inbound.contains(id)),
        "an acknowledged event is missing after SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_command_collects_without_routing() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = start_command(dir.path(), "collector");
    let (status, _) = post(
        &sluice.url,
        "application/json",
        r#"{"type":"purchase","event_id":"c-1"}"#,
    )
    .await;
    assert_eq!(status, 202);
    let inbound = read_stream(&sluice.url, "inbound").await;
    assert_eq!(
        inbound.iter().map(|r| event_id(r)).collect::<Vec<_>>(),
        ["c-1"]
    );
    assert!(
        sluice.banner.contains("routing is off"),
        "{}",
        sluice.banner
    );
    let up_dir = tempfile::tempdir().unwrap();
    let up = start_up(up_dir.path());
    assert!(
        up.banner.contains("collector, router and read API"),
        "{}",
        up.banner
    );
    // Ready once the router holds its leases; the collector alone has no
    // router to wait for.
    let checks = |url: String| async move {
        let answer = client().get(format!("{url}/readyz")).send().await.unwrap();
        let status = answer.status().as_u16();
        let body: Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
        (status, body["checks"].clone())
    };
    wait_for(Duration::from_secs(30), "sluice up to be ready", || {
        let url = up.url.clone();
        async move {
            match checks(url).await {
                (200, checks) => {
                    assert_eq!(checks["router"], "ok");
                    assert_eq!(checks["backend"], "ok");
                    Ok(())
                }
                (status, checks) => Err(format!("{status} {checks}")),
            }
        }
    })
    .await;
    let (status, collector_checks) = checks(sluice.url.clone()).await;
    assert_eq!(
        (status, collector_checks),
        (200, serde_json::json!({"backend": "ok", "collector": "ok"}))
    );
}

#[test]
fn a_bad_config_stops_start_up_with_file_line_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("broken.toml");
    std::fs::write(
        &config,
        "[[routes]]\nname = \"r\"\nmatch = { type = [{ regx = \"a\" }] }\nto = [\"x\"]\n",
    )
    .unwrap();
    for command in ["up", "check-config"] {
        let output = sluice_cli(&[command, "--config", config.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{command}: {stderr}");
        assert!(stderr.contains("broken.toml"), "{command}: {stderr}");
        assert!(stderr.contains("line 3"), "{command}: {stderr}");
        assert!(
            stderr.contains("unknown matcher `regx`"),
            "{command}: {stderr}"
        );
    }
    let output = sluice_cli(&["check-config", "--config", "../../sluice.toml"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
