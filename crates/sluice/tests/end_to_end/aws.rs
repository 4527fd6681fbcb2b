//! `sluice up` on the AWS backend, against the local API server.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_route_on_the_aws_backend_against_moto() {
    let moto = moto_endpoint();
    let prefix = format!("e2e-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start_with(
        dir.path(),
        "up",
        &aws_config(&moto, &prefix, true),
        &AWS_ENV,
    );
    assert!(
        sluice.banner.contains("collector, router and read API"),
        "{}",
        sluice.banner
    );

    let kinds = ["purchase", "refund", "page_view", "click", "heartbeat"];
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut lines = Vec::new();
    for i in 0..150 {
        let kind = kinds[i % kinds.len()];
        let id = format!("aws-{i}");
        let stream = match kind {
            "purchase" | "refund" => "transactions",
            "page_view" | "click" => "clicks",
            _ => "unrouted",
        };
        expected
            .entry(format!("{prefix}-{stream}"))
            .or_default()
            .push(id.clone());
        lines.push(format!(
            r#"{{"type":"{kind}","event_id":"{id}","partition_key":"user-{}","payload":{{ "i" : {i} }}}}"#,
            i % 13
        ));
    }
    let (status, body) = post(&sluice.url, "application/x-ndjson", lines.join("\n")).await;
    assert_eq!(
        (status, &body),
        (202, &serde_json::json!({"accepted": 150}))
    );

    wait_for(Duration::from_secs(60), "routing on moto", || {
        let (url, expected) = (sluice.url.clone(), expected.clone());
        async move {
            for (stream, ids) in &expected {
                let n = read_stream(&url, stream).await.len();
                if n < ids.len() {
                    return Err(format!("{stream}: {n} of {}", ids.len()));
                }
            }
            Ok(())
        }
    })
    .await;
    for (stream, ids) in &expected {
        let records = read_stream(&sluice.url, stream).await;
        let found: BTreeSet<String> = records.iter().map(|r| event_id(r)).collect();
        assert_eq!(found.len(), records.len(), "{stream} holds each event once");
        assert_eq!(
            found,
            ids.iter().cloned().collect::<BTreeSet<_>>(),
            "{stream}"
        );
        for record in &records {
            let i: usize = event_id(record)[4..].parse().unwrap();
            assert_eq!(
                decode(record).unwrap().payload.unwrap(),
                format!("{{ \"i\" : {i} }}").as_bytes()
            );
        }
    }
}

#[test]
fn on_aws_refused_or_missing_credentials_stop_start_up_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("aws.toml");
    let start_up = |endpoint: &str, env: &[(&str, &str)]| {
        std::fs::write(&config, aws_config(endpoint, "creds", true)).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["up", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .env("AWS_CONFIG_FILE", dir.path().join("no-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                dir.path().join("no-credentials"),
            )
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(env.iter().copied())
            .env("E2E_TOKENS", TOKEN)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        stderr
    };

    // A server that checks credentials refuses these keys.
    let refused = start_up(
        &std::env::var("SLUICE_TEST_MOTO_AUTH").unwrap_or_else(|_| {
            panic!("SLUICE_TEST_MOTO_AUTH is not set: this test needs the credential-checking moto server; run ./scripts/test, which starts it")
        }),
        &[("AWS_ACCESS_KEY_ID", "AKIAWRONG"), ("AWS_SECRET_ACCESS_KEY", "wrong")],
    );
    assert!(refused.contains("access denied"), "{refused}");
    assert!(refused.contains("InvalidClientTokenId"), "{refused}");
    assert!(refused.contains("check the AWS credentials"), "{refused}");
    assert!(
        !refused.contains("wrong"),
        "the secret is not logged: {refused}"
    );

    // No credentials anywhere in the chain.
    let missing = start_up(&moto_endpoint(), &[]);
    assert!(
        missing.contains("no AWS credentials could be loaded"),
        "{missing}"
    );
}

#[test]
fn on_aws_a_missing_stream_stops_start_up_by_name() {
    let moto = moto_endpoint();
    let prefix = format!("missing-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("aws.toml");
    std::fs::write(&config, aws_config(&moto, &prefix, false)).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
        ])
        .envs(AWS_ENV)
        .env("E2E_TOKENS", TOKEN)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("stream {prefix}-inbound does not exist")),
        "{stderr}"
    );
}
