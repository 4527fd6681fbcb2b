//! The event ids a site's senders had acknowledged lately, so that a resend
//! is acknowledged without being written again.
//!
//! Browsers resend what they cannot know was delivered (a beacon gets no
//! answer; a page may close before a `fetch` answers). Each acknowledged
//! `(site, event_id)` is remembered for a window (ten minutes by default)
//! as a 128-bit keyed hash, in bounded memory: past `capacity` the oldest
//! go first. An id is remembered only once the stream has acknowledged it,
//! so a resend that races its first copy is written twice rather than
//! risk losing it; consumers' dedup catches those, and what crosses
//! collector processes.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sluice_core::hash::BuildPrehashed;

/// A remembered event: a keyed 128-bit hash of its site and id.
pub type EventKey = u128;

pub struct RecentEvents {
    window: Duration,
    capacity: usize,
    keys: (RandomState, RandomState),
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// When each key was remembered, and the number of that remembering.
    /// The keys are keyed hashes already: they are not hashed again.
    seen: HashMap<EventKey, (Instant, u64), BuildPrehashed>,
    /// In the order remembered; an entry whose number no longer matches
    /// `seen` was remembered again later.
    order: VecDeque<(EventKey, u64)>,
    next: u64,
}

impl RecentEvents {
    pub fn new(window: Duration, capacity: usize) -> Self {
        Self {
            window,
            capacity,
            keys: (RandomState::new(), RandomState::new()),
            inner: Mutex::default(),
        }
    }

    /// Whether the window is on at all.
    pub fn enabled(&self) -> bool {
        !self.window.is_zero() && self.capacity > 0
    }

    pub fn key(&self, site: &str, event_id: &str) -> EventKey {
        let half = |state: &RandomState| state.hash_one((site, event_id));
        (u128::from(half(&self.keys.0)) << 64) | u128::from(half(&self.keys.1))
    }

    /// For each key, whether it was acknowledged within the window.
    pub fn seen(&self, keys: &[EventKey]) -> Vec<bool> {
        self.seen_at(keys, Instant::now())
    }

    pub fn seen_at(&self, keys: &[EventKey], now: Instant) -> Vec<bool> {
        let inner = self.inner.lock().expect("recent events lock");
        keys.iter()
            .map(|key| {
                inner
                    .seen
                    .get(key)
                    .is_some_and(|(at, _)| now.saturating_duration_since(*at) < self.window)
            })
            .collect()
    }

    /// Remembers keys the stream acknowledged.
    pub fn remember(&self, keys: &[EventKey]) {
        self.remember_at(keys, Instant::now());
    }

    pub fn remember_at(&self, keys: &[EventKey], now: Instant) {
        if !self.enabled() || keys.is_empty() {
            return;
        }
        let mut inner = self.inner.lock().expect("recent events lock");
        let Inner { seen, order, next } = &mut *inner;
        for key in keys {
            *next += 1;
            seen.insert(*key, (now, *next));
            order.push_back((*key, *next));
        }
        // Forget what left the window, and the oldest past the capacity.
        while let Some(&(key, number)) = order.front() {
            let current = seen.get(&key).filter(|(_, n)| *n == number);
            match current {
                Some((at, _))
                    if now.saturating_duration_since(*at) < self.window
                        && seen.len() <= self.capacity =>
                {
                    break
                }
                Some(_) => {
                    seen.remove(&key);
                }
                // Remembered again later: a stale place in the queue.
                None => {}
            }
            order.pop_front();
        }
        // Keys remembered twice leave stale places behind the front; keep
        // the queue within twice the capacity.
        if order.len() > 2 * self.capacity {
            order.retain(|(key, number)| seen.get(key).is_some_and(|(_, n)| n == number));
        }
    }

    /// Event ids held now.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("recent events lock").seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_acknowledged_id_is_seen_within_the_window_and_per_site() {
        let recent = RecentEvents::new(Duration::from_secs(600), 100);
        let start = Instant::now();
        let shop = recent.key("shop", "e-1");
        let blog = recent.key("blog", "e-1");
        assert_ne!(shop, blog);
        assert_eq!(recent.seen_at(&[shop], start), [false]);
        recent.remember_at(&[shop], start);
        assert_eq!(recent.seen_at(&[shop, blog], start), [true, false]);
        let later = start + Duration::from_secs(601);
        assert_eq!(recent.seen_at(&[shop], later), [false]);
        recent.remember_at(&[blog], later);
        assert_eq!(recent.len(), 1, "the expired id was forgotten");
    }

    #[test]
    fn memory_stays_within_the_capacity_oldest_first() {
        let recent = RecentEvents::new(Duration::from_secs(600), 1_000);
        let now = Instant::now();
        let keys: Vec<EventKey> = (0..10_000)
            .map(|i| recent.key("shop", &format!("e-{i}")))
            .collect();
        for chunk in keys.chunks(10) {
            recent.remember_at(chunk, now);
        }
        assert_eq!(recent.len(), 1_000);
        assert_eq!(recent.seen_at(&keys[9_999..], now), [true]);
        assert_eq!(recent.seen_at(&keys[..1], now), [false]);
        // The same few ids again and again do not grow the queue.
        for _ in 0..10_000 {
            recent.remember_at(&keys[..3], now);
        }
        assert!(recent.inner.lock().unwrap().order.len() <= 2_000 + 3);
    }
}
