//! Waiting for a condition instead of sleeping for a guess.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `ready` every 50 ms until it gives a value; after `limit`, fails
/// naming `what` and the last state it reported.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut ready: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match ready().await {
            Ok(value) => return value,
            Err(state) if start.elapsed() > limit => {
                panic!("timed out waiting for {what}: {state}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// [`wait_for`] for a check that needs no await.
pub async fn wait_until<T>(
    limit: Duration,
    what: &str,
    mut ready: impl FnMut() -> Result<T, String>,
) -> T {
    wait_for(limit, what, || std::future::ready(ready())).await
}
