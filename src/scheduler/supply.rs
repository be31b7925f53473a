//! Starting workers: the one place where a worker is spawned, and the
//! accounting of start-up failures that makes a pool give up instead of
//! respawning forever.
//!
//! A worker fails to start when it cannot be spawned (out of processes or
//! descriptors), or dies, breaks the protocol or stays silent before its
//! handshake. After [`STARTUP_FAILURE_LIMIT`] such failures in a row with
//! no worker ready, the pool is broken: it says why and stops trying. A
//! spawn error is retried after a delay that doubles up to a second, and
//! the pool's thread sleeps until then; a broken pool sleeps for good.

use std::time::{Duration, Instant};

use super::handle::WorkerHandle;
use super::spawner::{SpawnRequest, Spawner};
use crate::flow::{FIRST_RETRY, LAST_RETRY, STARTUP_FAILURE_LIMIT};
use crate::process::Process;

/// One failure to start.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// The process could not be spawned.
    Spawn(String),
    /// It started, then failed before its handshake; the text says how.
    Death(String),
}

/// Spawns the workers of one launcher and keeps count of their failures.
#[derive(Debug)]
pub(crate) struct Supply {
    /// How its workers are started.
    request: SpawnRequest,
    /// How many workers it keeps.
    target: usize,
    /// Replacements asked of the spawner and not back yet.
    pending: usize,
    /// Why it was given up, if it was.
    reason: Option<String>,
    /// Start-up failures in a row, how many of them were spawn errors, and
    /// the last one.
    streak: u32,
    spawn_errors: u32,
    last: Option<Failure>,
    /// When to spawn again after a spawn error.
    retry_at: Option<Instant>,
    delay: Duration,
    /// The pool gave up: no more spawns.
    stopped: bool,
}

impl Supply {
    pub(crate) fn new(request: SpawnRequest, target: usize) -> Supply {
        Supply {
            request,
            target,
            pending: 0,
            reason: None,
            streak: 0,
            spawn_errors: 0,
            last: None,
            retry_at: None,
            delay: Duration::ZERO,
            stopped: false,
        }
    }

    /// Spawns one worker.
    pub(crate) fn spawn(&self) -> std::io::Result<WorkerHandle> {
        let process = self.request.spawn()?;
        Ok(WorkerHandle::new(
            process,
            self.request.launcher,
            self.request.startup_timeout(),
        ))
    }

    /// Asks `spawner` for a replacement worker if it is time to. Returns
    /// whether it did.
    pub(crate) fn replace(&mut self, now: Instant, spawner: &Spawner) -> bool {
        if self.retry_at.is_some_and(|at| now < at) {
            return false;
        }
        spawner.request(self.request.clone());
        self.pending += 1;
        true
    }

    /// What came of a replacement asked for: the new worker, unless it
    /// could not be spawned (counted, and retried later) or the launcher
    /// was given up meanwhile (then it is killed as it drops).
    pub(crate) fn spawned(
        &mut self,
        result: std::io::Result<Process>,
        now: Instant,
    ) -> Option<WorkerHandle> {
        self.pending -= 1;
        match result {
            // Given up meanwhile: no retry either, or the loop would wake
            // for it forever.
            Ok(_) | Err(_) if self.stopped => None,
            Ok(process) => {
                tracing::debug!(worker = process.pid(), "worker respawned");
                self.retry_at = None;
                Some(WorkerHandle::new(
                    process,
                    self.request.launcher,
                    self.request.startup_timeout(),
                ))
            }
            Err(e) => {
                let place = self.request.launch.describe();
                let place = place.as_deref().unwrap_or("this machine");
                tracing::warn!(error = %e, place, "could not spawn a worker");
                self.failed(Failure::Spawn(e.to_string()));
                self.back_off(now);
                None
            }
        }
    }

    /// Replacements asked for and not back yet.
    pub(crate) fn pending(&self) -> usize {
        self.pending
    }

    fn failed(&mut self, failure: Failure) {
        self.streak += 1;
        if matches!(failure, Failure::Spawn(_)) {
            self.spawn_errors += 1;
        }
        self.last = Some(failure);
    }

    /// When the pool's thread must wake up to spawn again, if it must.
    pub(crate) fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// A worker said hello: start-up works.
    pub(crate) fn ready(&mut self) {
        self.streak = 0;
        self.spawn_errors = 0;
        self.last = None;
        self.delay = Duration::ZERO;
    }

    /// A worker failed before its handshake; `how` says how.
    pub(crate) fn died_starting(&mut self, how: String) {
        self.failed(Failure::Death(how));
        // The next start waits too, doubling, until a worker says hello:
        // a launcher that starts one good worker and then only failing
        // ones must not spawn in a tight loop (a flood of ssh logins or
        // Slurm jobs).
        self.back_off(Instant::now());
    }

    fn back_off(&mut self, now: Instant) {
        self.delay = (self.delay * 2).clamp(FIRST_RETRY, LAST_RETRY);
        self.retry_at = Some(now + self.delay);
    }

    /// Whether `starting` more workers could still fail without reaching
    /// the limit: start no more than that, so that the pool gives up after
    /// exactly that many failures.
    pub(crate) fn may_start(&self, starting: usize) -> bool {
        self.streak as usize + starting < STARTUP_FAILURE_LIMIT as usize
    }

    /// Why the pool must give up, if it must (no worker is ready).
    pub(crate) fn gave_up(&self) -> Option<String> {
        if self.streak < STARTUP_FAILURE_LIMIT {
            return None;
        }
        let n = self.streak;
        Some(match self.last.as_ref().expect("a failure") {
            Failure::Spawn(e) if self.spawn_errors == n => {
                format!("{n} attempts in a row to spawn a worker failed; last: {e}")
            }
            Failure::Death(how) if self.spawn_errors == 0 => {
                format!("{n} workers in a row died before their handshake; last: {how}")
            }
            Failure::Spawn(e) => {
                format!("{n} workers in a row failed to start; last: could not spawn: {e}")
            }
            Failure::Death(how) => format!("{n} workers in a row failed to start; last: {how}"),
        })
    }

    /// The pool gave up on it: no more spawns, and no more wake-ups for
    /// them. `reason`: why, if it was this launcher's own failures.
    pub(crate) fn stop(&mut self, reason: Option<String>) {
        self.stopped = true;
        self.retry_at = None;
        self.reason = self.reason.take().or(reason);
    }

    /// Why it was given up, with where its workers run when that is not
    /// this machine, or when the pool has other launchers.
    pub(crate) fn reason(&self, alone: bool) -> Option<String> {
        let reason = self.reason.as_ref()?;
        Some(match self.request.launch.describe() {
            Some(place) => format!("{place}: {reason}"),
            None if alone => reason.clone(),
            None => format!("this machine: {reason}"),
        })
    }

    /// The memory limit its workers are started with, if any.
    pub(crate) fn memory_limit(&self) -> Option<u64> {
        self.request.settings.memory_limit
    }

    /// How many workers it keeps.
    pub(crate) fn target(&self) -> usize {
        self.target
    }

    /// How many of its workers may be starting at once.
    pub(crate) fn max_starting(&self) -> usize {
        self.request.launch.max_starting()
    }

    pub(crate) fn stopped(&self) -> bool {
        self.stopped
    }

    /// The pool shut down: its launcher's helpers end (see
    /// [`Launch::finish`]).
    pub(crate) fn finish(&self) {
        self.request.launch.finish();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::launch::{Launch, Local};

    fn supply() -> Supply {
        Supply::new(SpawnRequest::plain(Arc::new(Local)), 1)
    }

    #[test]
    fn it_gives_up_after_the_limit_and_says_what_failed() {
        let mut supply = supply();
        for k in 0..STARTUP_FAILURE_LIMIT {
            assert_eq!(supply.gave_up(), None);
            assert!(supply.may_start(0));
            supply.died_starting(format!("exit status: {k}"));
        }
        assert!(!supply.may_start(0));
        assert_eq!(
            supply.gave_up().unwrap(),
            "5 workers in a row died before their handshake; last: exit status: 4"
        );
        supply.ready();
        assert_eq!(supply.gave_up(), None, "a ready worker ends the streak");

        for _ in 0..STARTUP_FAILURE_LIMIT {
            supply.failed(Failure::Spawn("no fds".into()));
        }
        assert_eq!(
            supply.gave_up().unwrap(),
            "5 attempts in a row to spawn a worker failed; last: no fds"
        );
        supply.died_starting("signal 9".into());
        assert_eq!(
            supply.gave_up().unwrap(),
            "6 workers in a row failed to start; last: signal 9"
        );
        supply.ready();
        supply.died_starting("exit status: 1".into());
        for _ in 1..STARTUP_FAILURE_LIMIT {
            supply.failed(Failure::Spawn("no fds".into()));
        }
        assert_eq!(
            supply.gave_up().unwrap(),
            "5 workers in a row failed to start; last: could not spawn: no fds"
        );
    }

    #[test]
    fn no_more_starts_than_could_fail_before_the_limit() {
        let mut supply = supply();
        supply.died_starting("x".into());
        supply.died_starting("x".into());
        assert!(supply.may_start(2));
        assert!(!supply.may_start(3));
    }

    /// A launcher whose program does not exist: every spawn fails.
    #[derive(Debug)]
    struct Missing;

    impl Launch for Missing {
        fn command(&self, _: &crate::handoff::Handoff<'_>) -> std::process::Command {
            std::process::Command::new("/nonexistent/buckshot-worker")
        }

        fn worker_is_child(&self) -> bool {
            true
        }

        fn kill_rest(&self, _: u32, _: Option<&crate::launch::Reported>) {}
    }

    #[test]
    fn spawn_errors_are_retried_after_a_doubling_delay() {
        let mut supply = Supply::new(SpawnRequest::plain(Arc::new(Missing)), 1);
        let spawner = Spawner::start(|| {}).unwrap();
        // Asks for a worker if it is time to, and waits for what comes of
        // it: `None` if not asked for, or failed.
        let replace = |supply: &mut Supply, now: Instant| {
            if !supply.replace(now, &spawner) {
                return None;
            }
            assert_eq!(supply.pending(), 1);
            let spawned = spawner.wait_take().expect("the spawner answers");
            let worker = supply.spawned(spawned.result, now);
            assert_eq!(supply.pending(), 0);
            Some(worker)
        };
        let t0 = Instant::now();
        assert!(replace(&mut supply, t0).unwrap().is_none());
        assert_eq!((supply.streak, supply.spawn_errors), (1, 1));
        assert_eq!(supply.retry_at(), Some(t0 + FIRST_RETRY));
        // Not before the delay...
        assert!(replace(&mut supply, t0 + FIRST_RETRY / 2).is_none());
        assert_eq!(supply.streak, 1, "no attempt before the delay");
        // ...then again, with twice the delay.
        let t1 = t0 + FIRST_RETRY;
        assert!(replace(&mut supply, t1).unwrap().is_none());
        assert_eq!(supply.streak, 2);
        assert_eq!(supply.retry_at(), Some(t1 + 2 * FIRST_RETRY));
        // Up to the last.
        for _ in 0..10 {
            let at = supply.retry_at().unwrap();
            assert!(replace(&mut supply, at).unwrap().is_none());
        }
        let at = supply.retry_at().unwrap();
        assert!(replace(&mut supply, at).unwrap().is_none());
        assert_eq!(supply.retry_at(), Some(at + LAST_RETRY));
        assert!(supply.gave_up().unwrap().starts_with(
            "13 attempts in a row to spawn a worker failed; last: No such file or directory"
        ));
    }

    #[test]
    fn a_worker_spawned_after_its_launcher_was_given_up_is_not_kept() {
        let mut supply = supply();
        let spawner = Spawner::start(|| {}).unwrap();
        assert!(supply.replace(Instant::now(), &spawner));
        supply.stop(None);
        let spawned = spawner.wait_take().expect("the spawner answers");
        let process = spawned.result.expect("spawned");
        let pid = process.pid();
        assert!(supply.spawned(Ok(process), Instant::now()).is_none());
        assert_eq!(supply.pending(), 0);
        // Killed and reaped as it dropped: its pid names no child of ours.
        let reaped = rustix::process::waitpid(
            rustix::process::Pid::from_raw(pid as i32),
            rustix::process::WaitOptions::NOHANG,
        );
        assert!(reaped.is_err(), "worker {pid} was not reaped: {reaped:?}");
    }

    #[test]
    fn a_stopped_supply_sleeps() {
        let mut supply = supply();
        supply.retry_at = Some(Instant::now());
        supply.stop(None);
        assert_eq!(supply.retry_at(), None);
        assert!(supply.stopped());
    }
}
