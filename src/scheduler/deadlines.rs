//! The workers' deadlines, nearest first, without looking at every worker.
//!
//! A worker's deadline moves whenever it is written to or answers, so the
//! heap is lazy: a worker whose deadline changes gets a new entry, and an
//! entry counts only while it is still its worker's deadline (the caller
//! says, through `current`). Stale entries are dropped as they come to the
//! top, and the heap is rebuilt when they outnumber the live ones, so it
//! stays within a few entries per worker.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use super::poll::Key;

#[derive(Default)]
pub(crate) struct Deadlines {
    heap: BinaryHeap<Reverse<(Instant, usize, u32)>>,
}

impl Deadlines {
    /// `key`'s deadline is now `at`.
    pub(crate) fn set(&mut self, key: Key, at: Instant) {
        self.heap.push(Reverse((at, key.slot, key.serial)));
    }

    /// The nearest deadline still current; `current(key, at)`: whether
    /// `at` is still `key`'s deadline.
    pub(crate) fn nearest(&mut self, current: impl Fn(Key, Instant) -> bool) -> Option<Instant> {
        while let Some(&Reverse((at, slot, serial))) = self.heap.peek() {
            if current(Key { slot, serial }, at) {
                return Some(at);
            }
            self.heap.pop();
        }
        None
    }

    /// Takes the workers whose current deadline is at or before `now`.
    pub(crate) fn expired(
        &mut self,
        now: Instant,
        current: impl Fn(Key, Instant) -> bool,
        out: &mut Vec<Key>,
    ) {
        while let Some(&Reverse((at, slot, serial))) = self.heap.peek() {
            if at > now {
                break;
            }
            self.heap.pop();
            let key = Key { slot, serial };
            if current(key, at) {
                out.push(key);
            }
        }
    }

    /// Rebuilds the heap from the live deadlines if stale entries outnumber
    /// them (`live`: how many workers there are).
    pub(crate) fn compact(&mut self, live: usize, deadlines: impl FnOnce() -> Vec<(Key, Instant)>) {
        if self.heap.len() <= 2 * live + 64 {
            return;
        }
        self.heap = deadlines()
            .into_iter()
            .map(|(key, at)| Reverse((at, key.slot, key.serial)))
            .collect();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;

    #[test]
    fn only_current_deadlines_count_and_stale_ones_go() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let key = |slot| Key { slot, serial: 1 };
        let mut current: HashMap<usize, Instant> = HashMap::new();
        let mut deadlines = Deadlines::default();
        for (slot, at) in [(0, t0 + 3 * s), (1, t0 + 2 * s), (2, t0 + 5 * s)] {
            deadlines.set(key(slot), at);
            current.insert(slot, at);
        }
        // Worker 1's deadline moves later: its old entry no longer counts.
        deadlines.set(key(1), t0 + 4 * s);
        current.insert(1, t0 + 4 * s);
        let is_current = |k: Key, at| current.get(&k.slot) == Some(&at);
        assert_eq!(deadlines.nearest(is_current), Some(t0 + 3 * s));
        let mut out = Vec::new();
        deadlines.expired(t0 + 4 * s, is_current, &mut out);
        assert_eq!(out, [key(0), key(1)]);
        assert_eq!(deadlines.nearest(is_current), Some(t0 + 5 * s));
        // A worker that is gone has no deadline.
        current.remove(&2);
        let is_current = |k: Key, at| current.get(&k.slot) == Some(&at);
        assert_eq!(deadlines.nearest(is_current), None);
    }

    #[test]
    fn stale_entries_do_not_pile_up() {
        let t0 = Instant::now();
        let mut deadlines = Deadlines::default();
        let key = Key { slot: 0, serial: 0 };
        let mut last = t0;
        for k in 0..10_000u64 {
            last = t0 + Duration::from_nanos(k);
            deadlines.set(key, last);
            deadlines.compact(1, || vec![(key, last)]);
        }
        assert!(deadlines.len() <= 2 + 64 + 1, "{} entries", deadlines.len());
        assert_eq!(deadlines.nearest(|_, at| at == last), Some(last));
    }
}
