//! Who gets work: the dispatch of queued chunks to the workers that take
//! more, and taking work back for a worker that has nothing to do.
//!
//! A worker takes more while it holds a seat (see `seated` in
//! [`Scheduler`]), is not held back, and its flow says so
//! ([`crate::flow`]): few frames and a short estimated backlog. Ready
//! workers go first, then those with the least backlog; a worker still
//! starting gets work only when no ready one takes it.
//!
//! When nothing is queued and a ready worker has nothing to do, the frames
//! that other workers hold and have not read (not written yet, or still
//! whole in their request pipe: `books`) come back to the front of the
//! queue, from the worker with the most backlog first, and go out again.
//! So an idle worker never waits while an input it could run sits unread
//! in another worker's pipe. A worker that gave frames back gets no more
//! until it answers the input it runs: it is slower than its estimate.
//! A worker found to have nothing to give back is not looked at again
//! before it gets more work. Frames given this turn are not taken back.

use std::sync::Arc;

use super::Scheduler;
use super::roster::{Roster, Seat};
use crate::flow::UNKNOWN_ESTIMATE;
use crate::shared::State;

impl Seat {
    /// Whether it takes more work, with at most `max_frames` in flight.
    fn takes_more(&self, max_frames: usize) -> bool {
        let books = self.worker.books();
        // Held back until it answers the input it runs, if it runs one.
        let held_back = books.frames() > 0 && self.held_back_at == Some(books.answered());
        self.seated && !held_back && self.worker.wants_more() && books.frames() < max_frames
    }

    /// Whether it may have frames to take back: some queued behind the
    /// one it runs (any, before its handshake), and some of its frames
    /// written (frames given this turn are not taken back at once).
    fn may_give_back(&self) -> bool {
        let books = self.worker.books();
        let behind = if books.is_ready() { 2 } else { 1 };
        self.worker.fate().is_none()
            && books.frames() >= behind
            && books.any_written()
            && self.nothing_back_at != Some(books.assigned())
    }
}

impl Roster {
    /// Files the worker in `slot` among the hungry (by readiness and
    /// backlog), the idle and the stocked (by backlog), or takes it out of
    /// those it no longer belongs to.
    pub(super) fn file(&mut self, slot: usize) {
        let seat = &mut self.workers[slot];
        let books = seat.worker.books();
        let takes_more = seat.takes_more(self.max_frames);
        let hunger = takes_more.then(|| (!books.is_ready(), books.backlog()));
        if hunger != seat.hungry {
            if let Some(hunger) = seat.hungry {
                self.hungry.remove(&(hunger, slot));
            }
            if let Some(hunger) = hunger {
                self.hungry.insert((hunger, slot));
            }
            seat.hungry = hunger;
        }
        let idle = takes_more && books.is_ready() && books.frames() == 0;
        if idle != seat.idle {
            match idle {
                true => self.idle.insert(slot),
                false => self.idle.remove(&slot),
            };
            seat.idle = idle;
        }
        let stocked = seat.may_give_back().then(|| books.backlog());
        if stocked != seat.stocked {
            if let Some(backlog) = seat.stocked {
                self.stocked.remove(&(backlog, slot));
            }
            if let Some(backlog) = stocked {
                self.stocked.insert((backlog, slot));
            }
            seat.stocked = stocked;
        }
    }

    /// The worker that takes more work and is ready, or has the least
    /// backlog, if any.
    pub(super) fn hungriest(&mut self) -> Option<usize> {
        while let Some(&(hunger, slot)) = self.hungry.first() {
            // Filed when it was last settled; it may have been doomed since.
            match self.workers.get(slot) {
                Some(seat) if seat.hungry == Some(hunger) && seat.takes_more(self.max_frames) => {
                    return Some(slot);
                }
                Some(seat) if seat.hungry == Some(hunger) => self.file(slot),
                _ => {
                    self.hungry.pop_first();
                }
            }
        }
        None
    }

    /// Whether a ready worker has nothing to do.
    pub(super) fn anyone_idle(&mut self) -> bool {
        while let Some(&slot) = self.idle.first() {
            match self.workers.get(slot) {
                Some(seat) if seat.idle && seat.takes_more(self.max_frames) => return true,
                Some(seat) if seat.idle => self.file(slot),
                _ => {
                    self.idle.pop_first();
                }
            }
        }
        false
    }

    /// The worker with the most backlog that may have frames to take back.
    pub(super) fn most_stocked(&mut self) -> Option<usize> {
        while let Some(&(backlog, slot)) = self.stocked.last() {
            match self.workers.get(slot) {
                Some(seat) if seat.stocked == Some(backlog) && seat.may_give_back() => {
                    return Some(slot);
                }
                Some(seat) if seat.stocked == Some(backlog) => self.file(slot),
                _ => {
                    self.stocked.pop_last();
                }
            }
        }
        None
    }
}

impl Scheduler {
    /// Gives queued chunks to the workers that take more, ready ones and
    /// those with the least estimated backlog first; when nothing is queued
    /// and a worker has nothing to do, takes back the frames other workers
    /// have not read, and gives those.
    pub(super) fn dispatch(&mut self, state: &mut State) {
        loop {
            self.dispatch_queued(state);
            if !state.queue.is_empty() || !self.take_back_for_idle(state) {
                break;
            }
        }
    }

    /// Takes back, from the workers with the most backlog first, the frames
    /// they have not read, to the front of the queue, if a worker has
    /// nothing to do. A worker that gave some back gets no more before it
    /// answers the input it runs. Returns whether it took any.
    fn take_back_for_idle(&mut self, state: &mut State) -> bool {
        if !self.roster.anyone_idle() {
            return false;
        }
        while let Some(slot) = self.roster.most_stocked() {
            let seat = &mut self.roster.workers[slot];
            let taken = seat.worker.take_back();
            let books = seat.worker.books();
            if taken.is_empty() {
                seat.nothing_back_at = Some(books.assigned());
            } else {
                seat.held_back_at = Some(books.answered());
            }
            self.roster.file(slot);
            // What is left of its frames is written again.
            self.roster.touch(slot);
            if !taken.is_empty() {
                tracing::trace!(
                    worker = self.roster.workers[slot].worker.process().worker_pid(),
                    frames = taken.len(),
                    "frames taken back for an idle worker"
                );
                for chunk in taken.into_iter().rev() {
                    state.queue.push_front(chunk);
                }
                return true;
            }
        }
        false
    }

    /// Gives queued chunks to the workers that take more.
    fn dispatch_queued(&mut self, state: &mut State) {
        let quota = self.shared.config.max_tasks_per_worker;
        while let Some(chunk) = state.queue.front() {
            let Some(link) = state.maps.get(&chunk.map) else {
                state.queue.pop_front();
                continue;
            };
            let estimate = link.stats.per_item().unwrap_or(UNKNOWN_ESTIMATE);
            let stats = Arc::clone(&link.stats);
            let context = link.context.clone();
            let Some(slot) = self.roster.hungriest() else {
                break;
            };
            let worker = &mut self.roster.workers[slot].worker;
            let mut chunk = state.queue.pop_front().expect("front exists");
            self.known_maps.insert(chunk.map);
            if let Some(quota) = quota {
                let assigned = worker.books().assigned();
                let room = u32::try_from(quota - assigned).unwrap_or(u32::MAX);
                let (head, rest) = chunk.split(room);
                if let Some(rest) = rest {
                    state.queue.push_front(rest);
                }
                chunk = head.expect("a worker that takes work has room for one more");
                if assigned + u64::from(chunk.count) >= quota {
                    worker.retire();
                }
            }
            worker.assign(chunk, context.as_deref(), estimate, stats);
            self.roster.file(slot);
            self.roster.touch(slot);
        }
    }
}
