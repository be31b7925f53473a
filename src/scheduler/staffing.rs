//! Staffing: keeping each launcher's number of workers, from the first
//! spawns to replacements, and giving a launcher (or the pool) up when its
//! workers keep failing to start; and the seats, which bound how many of a
//! launcher's workers may run tasks at once to how many it has.

use std::num::NonZero;
use std::time::Instant;

use super::Scheduler;
use super::handle::{Fate, Heard, WorkerHandle};
use super::supply::Supply;
use crate::error::Error;
use crate::flow::SPAWNED_AT_START;
use crate::shared::Phase;

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
        for launcher in 0..self.supplies.len() {
            let supply = &mut self.supplies[launcher];
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
                supply.replace(now, &self.spawner);
            }
            for worker in spawned {
                self.admit(worker);
            }
        }
        Ok(())
    }

    /// When a launcher must spawn again after a spawn error, if one must.
    pub(super) fn retry_at(&self) -> Option<Instant> {
        self.supplies.iter().filter_map(Supply::retry_at).min()
    }

    /// Keeps each launcher's number of workers that take work, unless its
    /// start-up keeps failing: then it is given up, and the pool with it
    /// when it was the last. Looks at the workers only when something
    /// changed their numbers, or a spawn retry is due.
    pub(super) fn replenish(&mut self) {
        let now = Instant::now();
        while let Some(spawned) = self.spawner.try_take() {
            let supply = &mut self.supplies[spawned.launcher];
            if let Some(worker) = supply.spawned(spawned.result, now) {
                self.admit(worker);
            }
            self.workforce_changed = true;
        }
        if self.broken {
            return;
        }
        let retry_due = self.retry_at().is_some_and(|at| at <= now);
        if !std::mem::take(&mut self.workforce_changed) && !retry_due {
            return;
        }
        for launcher in 0..self.supplies.len() {
            self.replenish_launcher(launcher);
        }
        if self.supplies.iter().all(Supply::stopped) {
            let alone = self.supplies.len() == 1;
            let reasons: Vec<String> = self
                .supplies
                .iter()
                .filter_map(|supply| supply.reason(alone))
                .collect();
            self.break_pool(reasons.join("; "));
        }
    }

    pub(super) fn replenish_launcher(&mut self, launcher: usize) {
        if self.supplies[launcher].stopped() {
            return;
        }
        let ours = |worker: &&WorkerHandle| worker.launcher() == launcher;
        let workers = || self.workers.iter().map(|(_, seat)| &seat.worker);
        let ready = workers().filter(ours).any(|w| w.books().is_ready());
        if !ready {
            if let Some(reason) = self.supplies[launcher].gave_up() {
                tracing::warn!(launcher = ?self.supplies[launcher], reason, "workers keep failing to start: launcher given up");
                self.supplies[launcher].stop(Some(reason));
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
            .dying
            .iter()
            .filter(|(_, d)| d.dying.launcher() == launcher && d.dying.failed_starting())
            .count();
        let supply = &mut self.supplies[launcher];
        while working + supply.pending() < supply.target() {
            if starting + supply.pending() >= supply.max_starting() {
                return;
            }
            if !ready && !supply.may_start(alive + failed_starting + supply.pending()) {
                return;
            }
            if !supply.replace(now, &self.spawner) {
                return;
            }
        }
    }

    /// Gives a worker of launcher number `launcher` that joins a seat if one is
    /// free: whether it did.
    pub(super) fn take_seat(&mut self, launcher: usize) -> bool {
        let free = self.seated[launcher] < self.supplies[launcher].target();
        if free {
            self.seated[launcher] += 1;
        }
        free
    }

    /// A seated worker of launcher number `launcher` left service (it answered its
    /// last input, or was killed): the oldest of its benched workers takes
    /// the seat.
    pub(super) fn free_seat(&mut self, launcher: usize) {
        self.seated[launcher] -= 1;
        let workers = &self.workers;
        self.benched.retain(|key| {
            workers
                .get(key.slot)
                .is_some_and(|seat| seat.serial == key.serial)
        });
        let next = self
            .benched
            .iter()
            .position(|key| self.workers[key.slot].worker.launcher() == launcher);
        if let Some(position) = next {
            let key = self.benched.remove(position);
            self.workers[key.slot].seated = true;
            self.seated[launcher] += 1;
            self.touch(key.slot);
        }
    }

    /// Gives up on the pool: every worker goes, every input still owed
    /// fails with `reason`, new maps are refused.
    pub(super) fn break_pool(&mut self, reason: String) {
        self.broken = true;
        let slots: Vec<usize> = self.workers.iter().map(|(slot, _)| slot).collect();
        for slot in slots {
            self.workers[slot].worker.doom(Fate::PoolBroken);
            self.touch(slot);
        }
        for supply in &mut self.supplies {
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
                self.supplies[launcher].ready();
                self.workforce_changed = true;
            }
            // Every worker of that launcher would say the same: no point
            // retrying it. Its workers go, their inputs to the others.
            Some(Heard::Mismatch(problem)) => {
                let slots: Vec<usize> = self
                    .workers
                    .iter()
                    .filter(|(_, seat)| seat.worker.launcher() == launcher)
                    .map(|(slot, _)| slot)
                    .collect();
                for slot in slots {
                    self.workers[slot].worker.doom(Fate::PoolBroken);
                    self.touch(slot);
                }
                self.supplies[launcher].stop(Some(problem));
                self.workforce_changed = true;
            }
            None => {}
        }
    }
}
