//! `/healthz` and `/readyz` of `sluice up` on the AWS backend against moto,
//! reached through a proxy that can cut the connection.

mod support;

use std::time::Duration;

use serde_json::Value;

use sluice_backends::conformance::servers::dynamodb;
use sluice_core::table::{AttrValue, Condition, Item};
use sluice_core::TableBackend;
use support::aws::{config_on_moto, moto_endpoint, AWS_ENV};
use support::process::Sluice;
use support::proxy::Proxy;
use support::wait::wait_for;

async fn get(url: &str) -> (u16, String) {
    let answer = reqwest::get(url).await.unwrap();
    (answer.status().as_u16(), answer.text().await.unwrap())
}

/// Polls `/readyz` until its status is `status` and `check` holds for its
/// body; returns the body.
async fn readyz_until(url: &str, status: u16, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    wait_for(Duration::from_secs(60), what, || async {
        let (got, text) = get(&format!("{url}/readyz")).await;
        let body: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        if got == status && check(&body) {
            Ok(body)
        } else {
            Err(format!("last answer {got} {body}"))
        }
    })
    .await
}

fn check_says(body: &Value, check: &str, words: &[&str]) -> bool {
    let finding = body["checks"][check].as_str().unwrap_or_default();
    words.iter().all(|w| finding.contains(w))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_an_unreachable_backend_and_a_shard_the_router_cannot_hold() {
    let moto = moto_endpoint();
    let proxy = Proxy::start(&moto).await;
    let prefix = format!("ready-{}", std::process::id());
    let config = config_on_moto(&proxy.url, &prefix, true)
        .replace("[router]\n", "[router]\nfailover_ms = 3000\n");
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start_with(dir.path(), "up", &config, &AWS_ENV);
    let ready = readyz_until(&sluice.url, 200, "ready", |_| true).await;
    assert_eq!(
        ready,
        serde_json::json!({"ready": true, "checks": {"backend": "ok", "router": "ok", "collector": "ok"}})
    );

    // Someone breaks the lease row of a shard: the router cannot hold it.
    let tables = dynamodb(&moto);
    let leases = format!("{prefix}-checkpoints");
    let shard = "shardId-000000000000";
    let odd: Item = [("leaseCounter".to_owned(), AttrValue::S("many".into()))].into();
    tables
        .put(&leases, shard, odd, Condition::Always)
        .await
        .unwrap();
    let short = readyz_until(&sluice.url, 503, "the router to be short", |b| {
        check_says(b, "router", &[shard, "cannot be read"])
    })
    .await;
    assert_eq!(short["ready"], false);
    assert!(short["error"].as_str().unwrap().contains(shard), "{short}");
    assert_eq!(short["checks"]["backend"], "ok", "{short}");
    // Liveness is another matter: the process is alive.
    assert_eq!(get(&format!("{}/healthz", sluice.url)).await.0, 200);
    tables
        .delete(&leases, shard, Condition::Always)
        .await
        .unwrap();
    readyz_until(&sluice.url, 200, "ready after the row is gone", |_| true).await;

    // The network to the backend goes.
    proxy.cut();
    let unreachable = readyz_until(&sluice.url, 503, "the backend to be unreachable", |b| {
        check_says(b, "backend", &["does not answer"])
    })
    .await;
    assert!(
        unreachable["error"]
            .as_str()
            .unwrap()
            .contains("does not answer"),
        "{unreachable}"
    );
    assert_eq!(get(&format!("{}/healthz", sluice.url)).await.0, 200);
    proxy.mend();
    let again = readyz_until(&sluice.url, 200, "ready once the network is back", |_| true).await;
    assert_eq!(again["checks"]["backend"], "ok");
}
