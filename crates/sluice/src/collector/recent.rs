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
//!
//! The ids are kept in generations: sets that each take an eighth of the
//! capacity or of the window, oldest first. A generation is forgotten whole,
//! when its newest id has left the window or when a new one needs its room,
//! so an id is held for the window and at most an eighth of it more, and
//! nothing is done per id to forget it. No set grows past an eighth of the
//! capacity, and a new one starts at the size the last one reached: the
//! window never stops its callers to move a large table.

use std::collections::hash_map::RandomState;
use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sluice_core::hash::BuildPrehashed;

/// A remembered event: a keyed 128-bit hash of its site and id.
pub type EventKey = u128;

/// Generations at most: each holds an eighth of the capacity and starts
/// within an eighth of the window.
const GENERATIONS: usize = 8;

pub struct RecentEvents {
    window: Duration,
    /// Generations at most: [`GENERATIONS`], fewer for a tiny capacity.
    generations: usize,
    /// Ids a generation holds at most.
    room: usize,
    /// How long after its first id a generation takes new ones.
    span: Duration,
    keys: (RandomState, RandomState),
    /// Oldest first; the last takes new ids.
    inner: Mutex<VecDeque<Generation>>,
}

/// Ids remembered within one span of time.
struct Generation {
    /// Keyed hashes already: they are not hashed again.
    ids: HashSet<EventKey, BuildPrehashed>,
    opened: Instant,
    newest: Instant,
}

impl RecentEvents {
    pub fn new(window: Duration, capacity: usize) -> Self {
        let generations = GENERATIONS.min(capacity).max(1);
        Self {
            window,
            generations,
            room: capacity / generations,
            span: window / generations as u32,
            keys: (RandomState::new(), RandomState::new()),
            inner: Mutex::default(),
        }
    }

    /// Whether the window is on at all.
    pub fn enabled(&self) -> bool {
        !self.window.is_zero() && self.room > 0
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
        let generations = self.inner.lock().expect("recent events lock");
        let live = generations
            .iter()
            .rev()
            .take_while(|g| self.holds(g, now))
            .count();
        keys.iter()
            .map(|key| {
                generations
                    .iter()
                    .rev()
                    .take(live)
                    .any(|g| g.ids.contains(key))
            })
            .collect()
    }

    /// Whether a generation's ids still count: its newest is in the window.
    fn holds(&self, generation: &Generation, now: Instant) -> bool {
        now.saturating_duration_since(generation.newest) < self.window
    }

    /// Remembers keys the stream acknowledged.
    pub fn remember(&self, keys: &[EventKey]) {
        self.remember_at(keys, Instant::now());
    }

    pub fn remember_at(&self, keys: &[EventKey], now: Instant) {
        if !self.enabled() || keys.is_empty() {
            return;
        }
        let mut generations = self.inner.lock().expect("recent events lock");
        // Forget the generations whose every id left the window.
        while generations.front().is_some_and(|g| !self.holds(g, now)) {
            generations.pop_front();
        }
        for key in keys {
            let current = generations.back().filter(|g| {
                g.ids.len() < self.room && now.saturating_duration_since(g.opened) < self.span
            });
            if current.is_none() {
                // The last generation's size is the best guess of the next's.
                let size = generations.back().map_or(0, |g| g.ids.len());
                if generations.len() == self.generations {
                    generations.pop_front();
                }
                generations.push_back(Generation {
                    ids: HashSet::with_capacity_and_hasher(size, BuildPrehashed::default()),
                    opened: now,
                    newest: now,
                });
            }
            let current = generations.back_mut().expect("a generation was just made");
            current.ids.insert(*key);
            current.newest = now;
        }
    }

    /// Event ids held now.
    pub fn len(&self) -> usize {
        let generations = self.inner.lock().expect("recent events lock");
        generations.iter().map(|g| g.ids.len()).sum()
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
        let keys: Vec<EventKey> = (0..10_005)
            .map(|i| recent.key("shop", &format!("e-{i}")))
            .collect();
        for chunk in keys.chunks(10) {
            recent.remember_at(chunk, now);
        }
        // Whole generations of 125 go: between seven and eight of them stay.
        let held = recent.len();
        assert!((875..=1_000).contains(&held), "{held} ids held");
        assert!(recent
            .seen_at(&keys[10_005 - 875..], now)
            .iter()
            .all(|&s| s));
        assert!(!recent
            .seen_at(&keys[..10_005 - 1_000], now)
            .iter()
            .any(|&s| s));
        // A new generation starts at the size the last one reached.
        {
            let generations = recent.inner.lock().unwrap();
            let newest = generations.back().unwrap();
            assert_eq!(newest.ids.len(), 5);
            assert!(newest.ids.capacity() >= 125);
        }
        // The same few ids again and again do not grow the window.
        for _ in 0..10_000 {
            recent.remember_at(&keys[..3], now);
        }
        assert!(recent.len() <= 1_000);
    }

    #[test]
    fn an_id_is_held_for_the_window_and_at_most_an_eighth_of_it_more() {
        // Generations start at least 100 s apart.
        let recent = RecentEvents::new(Duration::from_secs(800), 1_000);
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let [a, b, c] = ["a", "b", "c"].map(|id| recent.key("shop", id));
        recent.remember_at(&[a], at(0));
        recent.remember_at(&[b], at(50));
        recent.remember_at(&[c], at(150));
        assert_eq!(
            recent.inner.lock().unwrap().len(),
            2,
            "c opened a generation"
        );
        // a is 820 s old, but its generation's newest id (b) is not.
        assert_eq!(recent.seen_at(&[a, b, c], at(820)), [true, true, true]);
        assert_eq!(recent.seen_at(&[a, b, c], at(850)), [false, false, true]);
        recent.remember_at(&[a], at(850));
        assert_eq!(recent.len(), 2, "the first generation was forgotten whole");
        assert_eq!(recent.seen_at(&[a, b, c], at(950)), [true, false, false]);
    }
}
