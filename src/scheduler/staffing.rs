//! Staffing: keeping each launcher's number of workers, from the first
//! spawns to replacements, and giving a launcher (or the pool) up when its
//! workers keep failing to start; and the seats, which bound how many of a
//! launcher's workers may run tasks at once to how many it has.
//!
//! A launcher has workers "at most" (its number, [`Supply::target`]) and
//! "wanted now" ([`Staffing::wanted`]), which `replenish` keeps. They are
//! the same unless the pool has an idle timeout: a worker idle that long
//! is let go (retired: it exits by itself) and is wanted no more, down to
//! none. Chunks that no worker takes make workers wanted again, one per
//! chunk beyond the spawns on their way, up to the number at most
//! ([`Scheduler::meet_demand`]). Letting go is not a failure: a launcher
//! with no workers is not given up, and a pool with none is not broken
//! (the loop sleeps until work comes).

use std::num::NonZero;
use std::time::Instant;

use super::Scheduler;
use super::handle::{Fate, Heard, WorkerHandle};
use super::poll::Key;
use super::roster::Roster;
use super::spawner::Spawner;
use super::supply::Supply;
use crate::error::Error;
use crate::flow::SPAWNED_AT_START;
use crate::shared::Phase;

/// Each launcher's supply of workers, and the seats of those there.
pub(super) struct Staffing {
    /// One per launcher, in the order the pool was given them.
    pub(super) supplies: Vec<Supply>,
    pub(super) spawner: Spawner,
    /// Workers of each launcher that hold a seat: at most its number of
    /// workers, so that no more tasks run at once than the pool has
    /// processes. A replacement spawned while the worker it replaces still
    /// runs its last inputs waits on the bench for its seat.
    pub(super) seated: Vec<usize>,
    /// Workers without a seat, oldest first.
    pub(super) benched: Vec<Key>,
    /// Workers of each launcher that take work wanted now: its number,
    /// less those let go for idleness and not wanted again since.
    pub(super) wanted: Vec<usize>,
    /// Something changed how many workers each launcher has or may start:
    /// `replenish` has work to do.
    pub(super) workforce_changed: bool,
}

impl Staffing {
    pub(super) fn new(supplies: Vec<Supply>, spawner: Spawner) -> Staffing {
        Staffing {
            seated: vec![0; supplies.len()],
            wanted: supplies.iter().map(Supply::target).collect(),
            supplies,
            spawner,
            benched: Vec::new(),
            workforce_changed: true,
        }
    }

    /// When a launcher must spawn again after a spawn error, if one must.
    pub(super) fn retry_at(&self) -> Option<Instant> {
        self.supplies.iter().filter_map(Supply::retry_at).min()
    }

    /// Gives a worker of launcher number `launcher` that joins a seat if
    /// one is free: whether it did.
    pub(super) fn take_seat(&mut self, launcher: usize) -> bool {
        let free = self.seated[launcher] < self.supplies[launcher].target();
        if free {
            self.seated[launcher] += 1;
        }
        free
    }

    /// A seated worker of launcher number `launcher` left service (it
    /// answered its last input, or was killed): the oldest of its benched
    /// workers in `roster` takes the seat.
    pub(super) fn free_seat(&mut self, launcher: usize, roster: &mut Roster) {
        self.seated[launcher] -= 1;
        self.benched.retain(|&key| roster.live(key));
        let next = self
            .benched
            .iter()
            .position(|key| roster.workers[key.slot].worker.launcher() == launcher);
        if let Some(position) = next {
            let key = self.benched.remove(position);
            roster.workers[key.slot].seated = true;
            self.seated[launcher] += 1;
            roster.touch(key.slot);
        }
    }
}

impl Scheduler {
    /// Spawns the first workers of each launcher here (see
    /// [`SPAWNED_AT_START`]), so that a launcher that cannot spawn at all
    /// fails the pool's start; the others are asked of the spawner, and
    /// join as they come.
    pub(super) fn spawn_initial(&mut self) -> Result<(), Error> {
        let now = Instant::now();
        // Asked only of a wide pool: it reads cgroup files, which takes a
        // noticeable part of a small pool's start.
        let cores = || std::thread::available_parallelism().map_or(1, NonZero::get);
        for launcher in 0..self.staffing.supplies.len() {
            let supply = &mut self.staffing.supplies[launcher];
            // The rest start as these say hello (see `replenish_launcher`).
            let initial = supply.target().min(supply.max_starting());
            let here = if initial <= SPAWNED_AT_START {
                initial
            } else {
                initial.min(SPAWNED_AT_START.max(cores()))
            };
            let mut spawned = Vec::with_capacity(here);
            for _ in 0..here {
                let worker = supply.spawn().map_err(|source| Error::Spawn { source })?;
                tracing::debug!(worker = worker.process().pid(), "worker spawned");
                spawned.push(worker);
            }
            for _ in here..initial {
                supply.replace(now, &self.staffing.spawner);
            }
            for worker in spawned {
                self.admit(worker);
            }
        }
        Ok(())
    }

    /// Keeps each launcher's number of workers that take work, unless its
    /// start-up keeps failing: then it is given up, and the pool with it
    /// when it was the last. Looks at the workers only when something
    /// changed their numbers, or a spawn retry is due.
    pub(super) fn replenish(&mut self) {
        let now = Instant::now();
        while let Some(spawned) = self.staffing.spawner.try_take() {
            let supply = &mut self.staffing.supplies[spawned.launcher];
            if let Some(worker) = supply.spawned(spawned.result, now) {
                self.admit(worker);
            }
            self.staffing.workforce_changed = true;
        }
        // Every launcher stopped: the pool broke when the last one did.
        if self.staffing.supplies.iter().all(Supply::stopped) {
            return;
        }
        let retry_due = self.staffing.retry_at().is_some_and(|at| at <= now);
        if !std::mem::take(&mut self.staffing.workforce_changed) && !retry_due {
            return;
        }
        for launcher in 0..self.staffing.supplies.len() {
            self.replenish_launcher(launcher);
        }
    }

    /// Gives launcher number `launcher` up, for `reason`; and the pool with
    /// it, when it was the last.
    fn stop_launcher(&mut self, launcher: usize, reason: String) {
        self.staffing.supplies[launcher].stop(Some(reason));
        self.staffing.workforce_changed = true;
        let supplies = &self.staffing.supplies;
        if supplies.iter().all(Supply::stopped) {
            let alone = supplies.len() == 1;
            let reasons: Vec<String> = supplies
                .iter()
                .filter_map(|supply| supply.reason(alone))
                .collect();
            self.break_pool(reasons.join("; "));
        }
    }

    pub(super) fn replenish_launcher(&mut self, launcher: usize) {
        if self.staffing.supplies[launcher].stopped() {
            return;
        }
        let ours = |worker: &&WorkerHandle| worker.launcher() == launcher;
        let workers = || self.roster.workers.iter().map(|(_, seat)| &seat.worker);
        let ready = workers().filter(ours).any(|w| w.books().is_ready());
        if !ready {
            if let Some(reason) = self.staffing.supplies[launcher].gave_up() {
                tracing::warn!(launcher = ?self.staffing.supplies[launcher], reason, "workers keep failing to start: launcher given up");
                self.stop_launcher(launcher, reason);
                return;
            }
        }
        let now = Instant::now();
        let working = workers().filter(ours).filter(|w| w.takes_work()).count();
        let starting = |w: &&WorkerHandle| w.fate().is_none() && !w.books().is_ready();
        let starting = workers().filter(ours).filter(starting).count();
        let alive = workers()
            .filter(ours)
            .filter(|w| w.fate().is_none())
            .count();
        let failed_starting = self
            .roster
            .dying
            .iter()
            .filter(|(_, d)| d.dying.launcher() == launcher && d.dying.failed_starting())
            .count();
        let wanted = self.staffing.wanted[launcher];
        let supply = &mut self.staffing.supplies[launcher];
        while working + supply.pending() < wanted {
            if starting + supply.pending() >= supply.max_starting() {
                return;
            }
            if !ready && !supply.may_start(alive + failed_starting + supply.pending()) {
                return;
            }
            if !supply.replace(now, &self.staffing.spawner) {
                return;
            }
        }
    }

    /// Lets the idle worker in `slot` go: it is retired (it exits by
    /// itself once it reads that, or is killed after a grace period), and
    /// is not replaced until work comes.
    pub(super) fn let_idle_go(&mut self, slot: usize) {
        let worker = &mut self.roster.workers[slot].worker;
        tracing::debug!(
            worker = worker.process().worker_pid(),
            "worker had nothing to do for its idle timeout: retired"
        );
        let launcher = worker.launcher();
        worker.retire();
        // Nothing else is written to it: its RETIRE frame goes now.
        worker.write(&self.watch);
        let wanted = &mut self.staffing.wanted[launcher];
        *wanted = wanted.saturating_sub(1);
        self.staffing.workforce_changed = true;
    }

    /// `waiting` chunks are queued that no worker took: launchers that let
    /// workers go want more again, one per chunk beyond the spawns on their
    /// way, up to their number, in the order the pool was given them.
    pub(super) fn meet_demand(&mut self, waiting: usize) {
        let staffing = &self.staffing;
        let short = |(launcher, supply): (usize, &Supply)| {
            !supply.stopped() && staffing.wanted[launcher] < supply.target()
        };
        if !staffing.supplies.iter().enumerate().any(short) {
            return;
        }
        let coming: usize = staffing.supplies.iter().map(Supply::pending).sum();
        let mut more = waiting.saturating_sub(coming);
        for launcher in 0..self.staffing.supplies.len() {
            let supply = &self.staffing.supplies[launcher];
            if more == 0 {
                break;
            }
            if supply.stopped() {
                continue;
            }
            let wanted = &mut self.staffing.wanted[launcher];
            let added = (supply.target() - *wanted).min(more);
            if added > 0 {
                *wanted += added;
                more -= added;
                tracing::debug!(
                    launcher,
                    workers = *wanted,
                    "work came: workers wanted again"
                );
                self.replenish_launcher(launcher);
            }
        }
    }

    /// Gives up on the pool: every worker goes, every input still owed
    /// fails with `reason`, new maps are refused.
    pub(super) fn break_pool(&mut self, reason: String) {
        let slots: Vec<usize> = self.roster.workers.iter().map(|(slot, _)| slot).collect();
        for slot in slots {
            self.roster.workers[slot].worker.doom(Fate::PoolBroken);
            self.roster.touch(slot);
        }
        for supply in &mut self.staffing.supplies {
            supply.stop(None);
        }
        let mut state = self.shared.lock();
        if state.phase == Phase::Open {
            state.phase = Phase::Broken(reason);
        }
    }

    pub(super) fn hear(&mut self, heard: Option<Heard>, launcher: usize) {
        match heard {
            Some(Heard::Ready) => {
                self.staffing.supplies[launcher].ready();
                self.staffing.workforce_changed = true;
            }
            // Every worker of that launcher would say the same: no point
            // retrying it. Its workers go, their inputs to the others.
            Some(Heard::Mismatch(problem)) => {
                let slots: Vec<usize> = self
                    .roster
                    .workers
                    .iter()
                    .filter(|(_, seat)| seat.worker.launcher() == launcher)
                    .map(|(slot, _)| slot)
                    .collect();
                for slot in slots {
                    self.roster.workers[slot].worker.doom(Fate::PoolBroken);
                    self.roster.touch(slot);
                }
                self.stop_launcher(launcher, problem);
            }
            None => {}
        }
    }
}
