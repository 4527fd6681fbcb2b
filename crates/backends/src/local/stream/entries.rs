//! A list of index entries that grows without stalls.

use std::collections::VecDeque;

use super::log::Entry;

/// Entries per chunk (160 KiB).
const CHUNK: usize = 4096;

/// Entries in log order, held in fixed-size chunks. A `Vec` or `VecDeque`
/// that doubles copies everything it holds into fresh memory, and on a
/// virtual machine faulting those pages in costs more than the copy: with a
/// few hundred thousand entries that held the writer (and, for a shard's
/// index, every reader) for tens of milliseconds. Here growing takes one
/// chunk at a time, and removing from the front frees whole chunks.
#[derive(Default)]
pub(super) struct Entries {
    chunks: VecDeque<Vec<Entry>>,
    /// Entries already removed from the first chunk.
    head: usize,
    len: usize,
}

impl Entries {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn push(&mut self, entry: Entry) {
        match self.chunks.back_mut() {
            Some(last) if last.len() < CHUNK => last.push(entry),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(entry);
                self.chunks.push_back(chunk);
            }
        }
        self.len += 1;
    }

    pub(super) fn get(&self, index: usize) -> Option<&Entry> {
        if index >= self.len {
            return None;
        }
        let at = self.head + index;
        self.chunks.get(at / CHUNK)?.get(at % CHUNK)
    }

    pub(super) fn front(&self) -> Option<&Entry> {
        self.get(0)
    }

    pub(super) fn back(&self) -> Option<&Entry> {
        self.len.checked_sub(1).and_then(|last| self.get(last))
    }

    /// The first index whose entry is not `before` (entries for which
    /// `before` holds come first, as with `slice::partition_point`).
    pub(super) fn partition_point(&self, before: impl Fn(&Entry) -> bool) -> usize {
        let (mut low, mut high) = (0, self.len);
        while low < high {
            let mid = low + (high - low) / 2;
            if before(self.get(mid).expect("in range")) {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        low
    }

    /// The entries from `index` on, in order.
    pub(super) fn iter_from(&self, index: usize) -> impl Iterator<Item = &Entry> {
        let at = self.head + index.min(self.len);
        let (first, skip) = (at / CHUNK, at % CHUNK);
        self.chunks
            .range(first.min(self.chunks.len())..)
            .enumerate()
            .flat_map(move |(i, chunk)| chunk[if i == 0 { skip } else { 0 }..].iter())
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.iter_from(0)
    }

    /// Removes entries from the front while `gone` holds for them; returns
    /// how many went.
    pub(super) fn pop_front_while(&mut self, gone: impl Fn(&Entry) -> bool) -> usize {
        let before = self.len;
        while let Some(entry) = self.front() {
            if !gone(entry) {
                break;
            }
            self.head += 1;
            self.len -= 1;
            if self.head == CHUNK || self.len == 0 {
                self.chunks.pop_front();
                self.head = 0;
            }
        }
        if self.len == 0 {
            self.chunks.clear();
            self.head = 0;
        }
        before - self.len
    }
}

impl FromIterator<Entry> for Entries {
    fn from_iter<I: IntoIterator<Item = Entry>>(entries: I) -> Self {
        let mut list = Self::default();
        for entry in entries {
            list.push(entry);
        }
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64) -> Entry {
        Entry {
            shard: 0,
            seq,
            arrival_ms: seq as i64 / 10,
            segment: seq / 1000 * 1000,
            offset: seq as u32,
            len: 1,
        }
    }

    /// Every operation agrees with a plain VecDeque, across chunk edges,
    /// while entries are added at the back and removed from the front.
    #[test]
    fn behaves_as_a_deque_across_chunk_edges() {
        let mut list = Entries::default();
        let mut model: VecDeque<Entry> = VecDeque::new();
        let mut next = 0u64;
        for round in 0..12u64 {
            for _ in 0..(CHUNK as u64 * 3 / 2 + round * 37) {
                list.push(entry(next));
                model.push_back(entry(next));
                next += 1;
            }
            let cut = model.len() as u64 * (round % 4) / 5;
            let edge = model.front().map_or(0, |e| e.seq) + cut;
            let gone = list.pop_front_while(|e| e.seq < edge);
            let mut model_gone = 0;
            while model.front().is_some_and(|e| e.seq < edge) {
                model.pop_front();
                model_gone += 1;
            }
            assert_eq!(gone, model_gone);
            assert_eq!(list.len(), model.len());
            assert_eq!(list.front(), model.front());
            assert_eq!(list.back(), model.back());
            assert!(list.iter().eq(model.iter()));
            for probe in [
                0,
                1,
                CHUNK - 1,
                CHUNK,
                CHUNK + 1,
                model.len() / 2,
                model.len(),
            ] {
                assert_eq!(list.get(probe), model.get(probe));
                assert!(list
                    .iter_from(probe)
                    .eq(model.range(probe.min(model.len())..)));
                let seq = model.front().map_or(0, |e| e.seq) + probe as u64;
                assert_eq!(
                    list.partition_point(|e| e.seq < seq),
                    model.partition_point(|e| e.seq < seq)
                );
            }
        }
        list.pop_front_while(|_| true);
        assert_eq!(
            (list.len(), list.front(), list.iter().count()),
            (0, None, 0)
        );
        list.push(entry(next));
        assert_eq!(list.front(), Some(&entry(next)));
    }
}
