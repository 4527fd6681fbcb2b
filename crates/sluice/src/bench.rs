//! `sluice bench live`: how long an event takes from `POST /v1/events` to
//! the subscribers of a live feed, at a steady rate, with many subscribers.
//!
//! Every event carries the time it was posted (`bench_sent_us`, wall clock
//! in microseconds); the first subscribers note when it arrived, all count
//! what they got. Run it on the machine that runs Sluice, so one clock
//! serves both ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;

/// Subscribers that time every event; the others only count.
const TIMED: usize = 4;

#[derive(clap::Args)]
pub struct LiveBench {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The stream to follow (the collector writes the inbound one).
    #[arg(long, default_value = "inbound")]
    pub stream: String,
    /// Events per second, each posted alone.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Live feed subscribers (the first few time every event; all count).
    #[arg(long, default_value_t = 1)]
    pub subscribers: usize,
    /// Bearer token for a Sluice that requires one.
    #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

pub struct LiveReport {
    pub sent: u64,
    /// The fewest events one subscriber got.
    pub least_delivered: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64
}

/// Every `"bench_sent_us":N` in `chunk`.
fn sent_times(chunk: &[u8]) -> impl Iterator<Item = u64> + '_ {
    const KEY: &[u8] = b"\"bench_sent_us\":";
    let mut at = 0;
    std::iter::from_fn(move || {
        let found = chunk[at..].windows(KEY.len()).position(|w| w == KEY)?;
        let start = at + found + KEY.len();
        let digits = chunk[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        at = start + digits;
        std::str::from_utf8(&chunk[start..at]).ok()?.parse().ok()
    })
}

pub async fn live(bench: LiveBench) -> anyhow::Result<LiveReport> {
    if bench.rate == 0 || bench.subscribers == 0 {
        bail!("--rate and --subscribers must be at least 1");
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let auth = bench.token.as_ref().map(|t| format!("Bearer {t}"));
    let feed = format!(
        "{}/v1/streams/{}/live",
        bench.url.trim_end_matches('/'),
        bench.stream
    );
    let delays = Arc::new(Mutex::new(Vec::<u64>::new()));
    let mut counts = Vec::new();
    let mut readers = Vec::new();
    for index in 0..bench.subscribers {
        let mut request = client.get(&feed);
        if let Some(auth) = &auth {
            request = request.header("authorization", auth);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("subscribing to {feed}"))?;
        if !response.status().is_success() {
            bail!(
                "{feed}: {} {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
        let count = Arc::new(AtomicU64::new(0));
        counts.push(count.clone());
        let delays = (index < TIMED).then(|| delays.clone());
        readers.push(tokio::spawn(async move {
            let mut body = response.bytes_stream();
            // A message can be split across chunks: only whole ones are read.
            let mut pending = Vec::new();
            while let Some(Ok(chunk)) = body.next().await {
                let arrived = now_us();
                pending.extend_from_slice(&chunk);
                let Some(end) = pending.windows(2).rposition(|w| w == b"\n\n") else {
                    continue;
                };
                let whole: Vec<u8> = pending.drain(..end + 2).collect();
                let mut got = 0;
                let mut noted = Vec::new();
                for sent in sent_times(&whole) {
                    got += 1;
                    if delays.is_some() {
                        noted.push(arrived.saturating_sub(sent));
                    }
                }
                count.fetch_add(got, Ordering::Relaxed);
                if let Some(delays) = &delays {
                    delays.lock().expect("delays lock").extend(noted);
                }
            }
        }));
    }

    let events_url = format!("{}/v1/events", bench.url.trim_end_matches('/'));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(256));
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / bench.rate);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = bench.rate as u64 * bench.seconds;
    let failures = Arc::new(AtomicU64::new(0));
    for n in 0..total {
        ticker.tick().await;
        let permit = in_flight.clone().acquire_owned().await?;
        let body = format!(
            "{{\"type\":\"bench\",\"partition_key\":\"k{}\",\"headers\":{{\"bench_sent_us\":{}}}}}",
            n % 64,
            now_us()
        );
        let mut request = client
            .post(&events_url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(auth) = &auth {
            request = request.header("authorization", auth);
        }
        let failures = failures.clone();
        tokio::spawn(async move {
            match request.send().await {
                Ok(r) if r.status().as_u16() == 202 => {}
                _ => {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
            drop(permit);
        });
    }
    let _ = in_flight.acquire_many(256).await?;
    let failed = failures.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} of {total} posts failed");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let least = || {
        counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    };
    while least() < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for reader in &readers {
        reader.abort();
    }
    let mut delays = std::mem::take(&mut *delays.lock().expect("delays lock"));
    if delays.is_empty() {
        bail!("no event reached the subscribers");
    }
    delays.sort_unstable();
    let pick =
        |q: f64| Duration::from_micros(delays[((delays.len() - 1) as f64 * q).round() as usize]);
    Ok(LiveReport {
        sent: total,
        least_delivered: least(),
        p50: pick(0.5),
        p99: pick(0.99),
        max: pick(1.0),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn sent_times_are_found_in_a_chunk() {
        let chunk = br#"id: x
data: {"headers":{"type":"bench","bench_sent_us":17},"payload":{}}

id: y
data: {"headers":{"type":"bench","bench_sent_us":1800000000000000}}

"#;
        let found: Vec<u64> = super::sent_times(chunk).collect();
        assert_eq!(found, [17, 1_800_000_000_000_000]);
        assert_eq!(super::sent_times(b"data: {}").count(), 0);
    }
}
