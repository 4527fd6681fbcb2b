//! The event ids a site's senders had acknowledged lately, so that a resend
//! is acknowledged without being written again.
//!
//! Browsers resend what they cannot know was delivered (a beacon gets no
//! answer; a page may close before a `fetch` answers). Each acknowledged
//! `(site, event_id)` is remembered for a window (ten minutes by default)
//! as a 128-bit keyed hash, in bounded memory: past `capacity` the oldest
//! go first. An id is remembered only once the stream has acknowledged it.
//! A resend that arrives while its first copy is still being written waits
//! for that write: acknowledged, the resend is too, without being written;
//! failed, the resend is written. Consumers' dedup catches what crosses
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
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sluice_core::hash::BuildPrehashed;
use tokio::sync::watch;

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
    inner: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    /// Oldest first; the last takes new ids.
    generations: VecDeque<Generation>,
    /// Ids being written now, each with a receiver that wakes when its
    /// writer is done (written or not).
    writing: HashMap<EventKey, watch::Receiver<()>, BuildPrehashed>,
}

/// What a caller is to do with an event id.
pub enum Verdict {
    /// Acknowledged within the window: not to be written again.
    Seen,
    /// This caller writes it, under its [`Writing`].
    Write,
    /// Another caller is writing it: wait for this, then claim it again.
    Wait(watch::Receiver<()>),
}

/// The ids a caller claimed to write. Others carrying them wait until it is
/// dropped; [`Writing::written`] first remembers them.
pub struct Writing<'a> {
    recent: &'a RecentEvents,
    keys: Vec<EventKey>,
    /// Dropped last: wakes the waiters once the ids are remembered or let go.
    _done: watch::Sender<()>,
}

impl Writing<'_> {
    /// The stream acknowledged the claimed ids: remember them.
    pub fn written(mut self) {
        let keys = std::mem::take(&mut self.keys);
        self.recent.remember_at(&keys, Instant::now());
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        let mut window = self.recent.inner.lock().expect("recent events lock");
        for key in &self.keys {
            window.writing.remove(key);
        }
    }
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
        let window = self.inner.lock().expect("recent events lock");
        keys.iter()
            .map(|key| self.holds_id(&window, key, now))
            .collect()
    }

    /// Whether `key` is in a generation whose ids still count.
    fn holds_id(&self, window: &Window, key: &EventKey, now: Instant) -> bool {
        window
            .generations
            .iter()
            .rev()
            .take_while(|g| self.holds(g, now))
            .any(|g| g.ids.contains(key))
    }

    /// For each key, what the caller is to do with it; the ids it is to
    /// write are claimed until the returned [`Writing`] is dropped. A key
    /// twice in `keys` is claimed once, and `Write` both times.
    pub fn claim(&self, keys: &[EventKey]) -> (Vec<Verdict>, Writing<'_>) {
        let (done, receiver) = watch::channel(());
        let mut writing = Writing {
            recent: self,
            keys: Vec::new(),
            _done: done,
        };
        if !self.enabled() {
            return (keys.iter().map(|_| Verdict::Write).collect(), writing);
        }
        let now = Instant::now();
        let mut window = self.inner.lock().expect("recent events lock");
        let verdicts = keys
            .iter()
            .map(|key| {
                if self.holds_id(&window, key, now) {
                    return Verdict::Seen;
                }
                match window.writing.get(key) {
                    Some(other) if !other.same_channel(&receiver) => Verdict::Wait(other.clone()),
                    Some(_) => Verdict::Write,
                    None => {
                        window.writing.insert(*key, receiver.clone());
                        writing.keys.push(*key);
                        Verdict::Write
                    }
                }
            })
            .collect();
        (verdicts, writing)
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
        let mut window = self.inner.lock().expect("recent events lock");
        let Window {
            generations,
            writing,
        } = &mut *window;
        for key in keys {
            writing.remove(key);
        }
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
        let window = self.inner.lock().expect("recent events lock");
        window.generations.iter().map(|g| g.ids.len()).sum()
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
            let window = recent.inner.lock().unwrap();
            let newest = window.generations.back().unwrap();
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
            recent.inner.lock().unwrap().generations.len(),
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

    #[tokio::test]
    async fn an_id_being_written_is_waited_for_then_seen_or_claimed_again() {
        let recent = RecentEvents::new(Duration::from_secs(600), 1_000);
        let [a, b] = ["a", "b"].map(|id| recent.key("shop", id));
        let (first, writing) = recent.claim(&[a, a]);
        assert!(matches!(first[..], [Verdict::Write, Verdict::Write]));

        // A second caller waits for a; b is its own to write.
        let (second, other) = recent.claim(&[a, b]);
        let [Verdict::Wait(done), Verdict::Write] = &second[..] else {
            panic!("a should be waited for, b written");
        };
        let mut done = done.clone();
        let waiting = tokio::spawn(async move { done.changed().await.is_err() });
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "the wait ends only when the writer is done"
        );
        writing.written();
        assert!(waiting.await.unwrap(), "the writer's end wakes the waiter");
        assert!(matches!(recent.claim(&[a]).0[..], [Verdict::Seen]));

        // A writer that fails lets go: the id is the next caller's to write.
        drop(other);
        let (third, _writing) = recent.claim(&[b]);
        assert!(matches!(third[..], [Verdict::Write]));
        assert_eq!(recent.seen(&[b]), [false]);
    }
}
