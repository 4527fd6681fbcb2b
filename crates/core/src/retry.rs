//! Retry policy: full-jitter exponential backoff inside a bounded total time,
//! and the `Retryable` trait that tells passing failures from fatal ones.

use std::time::Duration;

/// An error that knows whether trying again can help.
pub trait Retryable {
    fn is_retryable(&self) -> bool;
}

/// Full-jitter exponential backoff: attempt `n` sleeps a random time in
/// `[0, min(max_delay, base * 2^n)]`, and nothing is retried after
/// `max_elapsed` since the first attempt.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// First backoff ceiling, in milliseconds (default 50).
    #[serde(default = "Backoff::default_base_ms")]
    pub base_ms: u64,
    /// Largest single backoff, in milliseconds (default 2,000).
    #[serde(default = "Backoff::default_max_ms")]
    pub max_ms: u64,
    /// Total time after which a record is given up, in milliseconds (default 30,000).
    #[serde(default = "Backoff::default_max_elapsed_ms")]
    pub max_elapsed_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base_ms: Self::default_base_ms(),
            max_ms: Self::default_max_ms(),
            max_elapsed_ms: Self::default_max_elapsed_ms(),
        }
    }
}

impl Backoff {
    fn default_base_ms() -> u64 {
        50
    }
    fn default_max_ms() -> u64 {
        2_000
    }
    fn default_max_elapsed_ms() -> u64 {
        30_000
    }

    /// What is wrong with these settings, if anything: a zero first backoff
    /// or a largest one below it would retry in a hot loop. `key` names the
    /// settings in the message.
    pub fn check(&self, key: &str) -> Result<(), String> {
        if self.base_ms == 0 {
            return Err(format!(
                "{key}.base_ms: expected at least 1 (0 retries in a hot loop)"
            ));
        }
        if self.max_ms < self.base_ms {
            return Err(format!(
                "{key}.max_ms: expected at least base_ms ({}), found {}",
                self.base_ms, self.max_ms
            ));
        }
        Ok(())
    }

    /// Short sleeps for tests.
    pub fn for_tests() -> Self {
        Self {
            base_ms: 1,
            max_ms: 10,
            max_elapsed_ms: 5_000,
        }
    }

    /// The ceiling of the `attempt`-th backoff (0-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = self.base_ms.saturating_mul(1u64 << attempt.min(30));
        Duration::from_millis(exp.min(self.max_ms))
    }

    /// A full-jitter delay for the `attempt`-th retry.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt).as_millis() as u64;
        Duration::from_millis(rand::random::<u64>() % (ceiling + 1))
    }

    pub fn max_elapsed(&self) -> Duration {
        Duration::from_millis(self.max_elapsed_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_under_a_growing_capped_ceiling() {
        let backoff = Backoff {
            base_ms: 10,
            max_ms: 100,
            max_elapsed_ms: 1_000,
        };
        assert_eq!(backoff.ceiling(0), Duration::from_millis(10));
        assert_eq!(backoff.ceiling(2), Duration::from_millis(40));
        assert_eq!(backoff.ceiling(10), Duration::from_millis(100));
        assert_eq!(backoff.ceiling(63), Duration::from_millis(100));
        for attempt in 0..20 {
            assert!(backoff.delay(attempt) <= backoff.ceiling(attempt));
        }
    }
}
