//! Rate limits per client address: a token bucket each, in bounded memory.
//!
//! A bucket that has refilled to its burst is the same as a new one, so it
//! can be dropped without changing any answer; that is how the table stays
//! small. When it is full of busy clients all the same (a flood of distinct
//! addresses), the addresses it cannot hold share one bucket per shard of
//! the table until a sweep, at most once a second, makes room: a flood is
//! limited as a whole, and memory never grows past `max_clients`.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.updated = now;
    }
}

struct Shard {
    buckets: HashMap<IpAddr, Bucket>,
    /// Shared by the addresses that found the table full.
    overflow: Bucket,
    last_sweep: Instant,
}

/// Token buckets per client address.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    per_shard: usize,
    shards: Vec<Mutex<Shard>>,
    hasher: std::collections::hash_map::RandomState,
}

impl RateLimiter {
    /// `rate` events a second, `burst` at once, for at most `max_clients`
    /// addresses tracked one by one.
    pub fn new(rate: f64, burst: u32, max_clients: usize) -> Self {
        let now = Instant::now();
        let burst = f64::from(burst);
        Self {
            rate,
            burst,
            per_shard: max_clients.div_ceil(SHARDS).max(1),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        buckets: HashMap::new(),
                        overflow: Bucket {
                            tokens: burst,
                            updated: now,
                        },
                        last_sweep: now,
                    })
                })
                .collect(),
            hasher: Default::default(),
        }
    }

    /// Takes `events` tokens from `client`'s bucket. A request is let in
    /// while the bucket holds `events` tokens, or is full (so a request
    /// larger than the burst is not refused for ever: it leaves the bucket
    /// in debt); otherwise the answer is how many seconds to wait.
    pub fn take(&self, client: IpAddr, events: u32) -> Result<(), Duration> {
        self.take_at(client, events, Instant::now())
    }

    /// As [`take`](Self::take), at a given time.
    pub fn take_at(&self, client: IpAddr, events: u32, now: Instant) -> Result<(), Duration> {
        let (rate, burst) = (self.rate, self.burst);
        let mut shard = self.shards[self.shard_of(client)]
            .lock()
            .expect("limiter lock");
        let shard = &mut *shard;
        if !shard.buckets.contains_key(&client)
            && shard.buckets.len() >= self.per_shard
            && now.saturating_duration_since(shard.last_sweep) >= Duration::from_secs(1)
        {
            shard.last_sweep = now;
            shard.buckets.retain(|_, bucket| {
                bucket.refill(now, rate, burst);
                bucket.tokens < burst
            });
        }
        let bucket = if shard.buckets.contains_key(&client) || shard.buckets.len() < self.per_shard
        {
            shard.buckets.entry(client).or_insert(Bucket {
                tokens: burst,
                updated: now,
            })
        } else {
            &mut shard.overflow
        };
        bucket.refill(now, rate, burst);
        let wanted = f64::from(events);
        if bucket.tokens >= wanted.min(burst) {
            bucket.tokens -= wanted;
            Ok(())
        } else {
            let missing = wanted.min(burst) - bucket.tokens;
            Err(Duration::from_secs_f64(missing / rate))
        }
    }

    /// Addresses tracked one by one now.
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().expect("limiter lock").buckets.len())
            .sum()
    }

    fn shard_of(&self, client: IpAddr) -> usize {
        (self.hasher.hash_one(client) as usize) % SHARDS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn address(i: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
    }

    #[test]
    fn a_bucket_lets_a_burst_through_then_the_rate() {
        let limiter = RateLimiter::new(10.0, 20, 100);
        let start = Instant::now();
        assert!(limiter.take_at(address(1), 20, start).is_ok());
        let wait = limiter.take_at(address(1), 5, start).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        // Another address has a bucket of its own.
        assert!(limiter.take_at(address(2), 20, start).is_ok());
        // Half a second later five tokens are back.
        let later = start + Duration::from_millis(500);
        assert!(limiter.take_at(address(1), 5, later).is_ok());
        assert!(limiter.take_at(address(1), 1, later).is_err());
    }

    #[test]
    fn a_request_larger_than_the_burst_passes_a_full_bucket_and_leaves_it_in_debt() {
        let limiter = RateLimiter::new(10.0, 20, 100);
        let start = Instant::now();
        assert!(limiter.take_at(address(1), 50, start).is_ok());
        // 30 in debt: 5 s until 20 tokens are back.
        let wait = limiter.take_at(address(1), 20, start).unwrap_err();
        assert!((wait.as_secs_f64() - 5.0).abs() < 1e-6, "{wait:?}");
    }

    #[test]
    fn a_flood_of_addresses_stays_within_the_table_and_shares_a_bucket() {
        let limiter = RateLimiter::new(1.0, 2, 1_000);
        let start = Instant::now();
        let mut refused = 0;
        for i in 0..100_000 {
            if limiter.take_at(address(i), 1, start).is_err() {
                refused += 1;
            }
        }
        assert!(limiter.tracked() <= 1_000 + SHARDS, "{}", limiter.tracked());
        // The addresses past the table shared 16 buckets of 2 tokens.
        assert!(refused > 90_000, "{refused} refused");
        // Once their buckets refill, a sweep makes room for new addresses.
        let later = start + Duration::from_secs(5);
        assert!(limiter.take_at(address(200_000), 2, later).is_ok());
        assert!(limiter.take_at(address(200_000), 1, later).is_err());
    }
}
