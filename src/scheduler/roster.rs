//! The roster: the pool's workers, live and dying, and how the live ones
//! are filed for the loop: touched this turn, fated, by deadline, and
//! whether they take more work (see [`dispatch`](super::dispatch)).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use slab::Slab;

use super::deadlines::Deadlines;
use super::faults::Dying;
use super::handle::WorkerHandle;
use super::poll::Key;

/// Where a worker that takes more work is filed: ready workers first
/// (`false`), then by estimated backlog.
pub(super) type Hunger = (bool, Duration);

/// A live worker and what the loop keeps about it.
pub(super) struct Seat {
    pub(super) worker: WorkerHandle,
    pub(super) serial: u32,
    /// It holds one of its launcher's seats: it may run tasks.
    pub(super) seated: bool,
    /// Its request pipe is in the epoll set.
    pub(super) writes_watched: bool,
    /// Its deadline as the heap knows it.
    pub(super) deadline: Option<Instant>,
    /// It is in `touched`.
    pub(super) touched: bool,
    /// It was seen taking no more work (counted by `replenish`).
    pub(super) idle_noted: bool,
    /// How it is filed in `hungry`, if it is there.
    pub(super) hungry: Option<Hunger>,
    /// It is in `idle`.
    pub(super) idle: bool,
    /// Since when it has been idle (as `idle` says), as last settled: with
    /// an idle timeout, it is let go that long after.
    pub(super) idle_since: Option<Instant>,
    /// Its backlog as filed in `stocked`, if it is there.
    pub(super) stocked: Option<Duration>,
    /// Its inputs given (`Books::assigned`) when it was last found to have
    /// nothing to take back: it is not looked at again before it gets more.
    pub(super) nothing_back_at: Option<u64>,
    /// Its inputs answered (`Books::answered`) when work was taken back
    /// from it: it gets no more before it answers again.
    pub(super) held_back_at: Option<u64>,
}

/// A worker taken out of service, waiting to be reaped.
pub(super) struct DyingSeat {
    pub(super) dying: Dying,
    pub(super) serial: u32,
}

/// The workers and how they are filed.
pub(super) struct Roster {
    /// The live workers, by slot: a slot stays a worker's while it serves.
    pub(super) workers: Slab<Seat>,
    pub(super) dying: Slab<DyingSeat>,
    /// Serial number of the next worker to join or leave service.
    pub(super) next_serial: u32,
    pub(super) deadlines: Deadlines,
    /// Slots of the workers that something happened to this turn: only
    /// these are written, checked and settled.
    pub(super) touched: Vec<usize>,
    /// Slots of the workers with a fate, to bury at the end of the turn.
    pub(super) fated: Vec<usize>,
    /// The workers that take more work, ready ones first, then by
    /// estimated backlog: dispatch takes the first, without looking at the
    /// others.
    pub(super) hungry: BTreeSet<(Hunger, usize)>,
    /// Ready workers with nothing to do.
    pub(super) idle: BTreeSet<usize>,
    /// Workers with frames queued behind the one they run, by backlog:
    /// where an idle worker takes work back from when nothing is queued.
    pub(super) stocked: BTreeSet<(Duration, usize)>,
    /// Dying workers whose exit was signalled.
    pub(super) exited: Vec<Key>,
    /// Frames a worker may have in flight (one with `batch_size(1)`).
    pub(super) max_frames: usize,
}

impl Roster {
    pub(super) fn new(max_frames: usize) -> Roster {
        Roster {
            workers: Slab::new(),
            dying: Slab::new(),
            next_serial: 0,
            deadlines: Deadlines::default(),
            touched: Vec::new(),
            fated: Vec::new(),
            hungry: BTreeSet::new(),
            idle: BTreeSet::new(),
            stocked: BTreeSet::new(),
            exited: Vec::new(),
            max_frames,
        }
    }

    /// A serial number for a worker that joins or leaves service.
    pub(super) fn next_serial(&mut self) -> u32 {
        let serial = self.next_serial;
        self.next_serial = serial.wrapping_add(1);
        serial
    }

    /// Something happened to the worker in `slot`: it is settled this turn.
    pub(super) fn touch(&mut self, slot: usize) {
        let seat = &mut self.workers[slot];
        if !seat.touched {
            seat.touched = true;
            self.touched.push(slot);
        }
    }

    /// The live worker `key` names, unless it is gone.
    pub(super) fn live(&self, key: Key) -> bool {
        self.workers
            .get(key.slot)
            .is_some_and(|seat| seat.serial == key.serial)
    }

    /// The dying worker `key` names, unless it is reaped.
    pub(super) fn dying_live(&self, key: Key) -> bool {
        self.dying
            .get(key.slot)
            .is_some_and(|seat| seat.serial == key.serial)
    }
}
