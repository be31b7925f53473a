//! Workers taken out of service: what their inputs get, and reaping them.
//!
//! When a worker goes (it died, timed out, broke the protocol, its map was
//! dropped, or it retired), its unanswered inputs are sorted:
//! - a worker that never said hello ran nothing: all of it goes back;
//! - the frame it was to run next, if the worker took none of it (all of
//!   it still in the pipe, or not written at all), goes back without blame
//!   and without spending a retry: it never started. At most
//!   [`UNSTARTED_RETURNS`] times, so that nothing goes round forever;
//! - a frame of several inputs that was running goes back one input per
//!   frame, since any of them may have been the culprit (the worker answers
//!   a frame as a whole); only one that fails alone is reported;
//! - a single input that was running gets the error: a timeout or protocol
//!   error at once, a death (or a retry) once the exit status is known. An
//!   input that panicked, whose backtrace its worker was still making when
//!   the bound on that ran out, gets its panic, without the backtrace;
//! - the frames behind it never started: they go back;
//! - a worker that retired by itself ran none of what it leaves: all of it
//!   goes back, unblamed and uncounted (see `protocol`, RETIRED).
//!
//! A dead worker is reaped through its pidfd, after whatever its launcher
//! kills besides it (its process group), while its pid is still ours. A
//! worker that retired gets [`RETIRE_GRACE`] to exit before it is killed.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Instant;

use super::books::Unanswered;
use super::handle::{Fate, Remains};
use super::posting::Posting;
use super::supply::Supply;
use crate::chunk::Chunk;
use crate::delivery::Delivery;
use crate::error::{Error, Limit, telling_line};
use crate::flow::{REAP_BOUND, RETIRE_GRACE, STARTUP_TIMEOUT, UNSTARTED_RETURNS};
use crate::panics::PanicReport;
use crate::process::Process;

/// What an input that was running when its worker went gets.
#[derive(Debug, PartialEq)]
enum Blame {
    Timeout,
    Protocol(String),
    /// Reported (or retried) once the exit status is known.
    Death,
    /// It had panicked, and the worker did not finish making the
    /// backtrace in time: the panic, without one.
    Panicked(PanicReport),
}

impl Blame {
    /// `symbolising`: the panic whose backtrace the worker was making.
    fn for_fate(fate: Fate, symbolising: Option<PanicReport>) -> Blame {
        match (fate, symbolising) {
            (Fate::TimedOut, Some(report)) => Blame::Panicked(report),
            (Fate::TimedOut, None) => Blame::Timeout,
            (Fate::Broke(message), _) => Blame::Protocol(message),
            _ => Blame::Death,
        }
    }
}

/// A worker that was killed or exited, waiting to be reaped.
pub(crate) struct Dying {
    process: Process,
    /// The launcher that started it, by position in the pool's.
    launcher: usize,
    /// When to kill it if it has not exited by itself (it retired).
    kill_at: Option<Instant>,
    /// The map and index of the input it was running when it died:
    /// reported once the exit status is known.
    victim: Option<(u64, usize)>,
    /// That input's chunk, for the pool's observers.
    victim_input: Option<Chunk>,
    /// How many times that input ran alone on a worker that died, this one
    /// included.
    victim_runs: u32,
    /// It failed before its handshake: counts toward giving up. The text
    /// says why the pool killed it, when that is the reason (it ends by
    /// SIGKILL even though it failed by itself).
    failed_starting: Option<Option<String>>,
}

impl Dying {
    pub(crate) fn process_mut(&mut self) -> &mut Process {
        &mut self.process
    }

    pub(crate) fn launcher(&self) -> usize {
        self.launcher
    }

    /// Whether it failed before its handshake (and is not counted yet).
    pub(crate) fn failed_starting(&self) -> bool {
        self.failed_starting.is_some()
    }

    /// The input it was running, to be failed otherwise at shutdown.
    pub(crate) fn take_victim(&mut self) -> Option<(u64, usize)> {
        self.victim.take()
    }

    /// When it must be killed, if it is still waited for.
    pub(crate) fn kill_at(&self) -> Option<Instant> {
        self.kill_at
    }
}

/// What burying a worker needs to know and where its inputs go.
pub(crate) struct Burial<'a> {
    pub retries: u32,
    pub posting: &'a mut Posting,
    /// Chunks to put back at the front of the queue, in order.
    pub requeue: &'a mut Vec<Chunk>,
}

impl Burial<'_> {
    /// Sorts the inputs of a worker taken out of service and returns it, to
    /// be reaped.
    pub(crate) fn bury(&mut self, remains: Remains) -> Dying {
        let Remains {
            process,
            launcher,
            books,
            fate,
            head_untouched,
            symbolising,
        } = remains;
        let ready = books.is_ready();
        let unanswered = books.into_unanswered();
        // A worker that retired ran none of what it leaves.
        let running = running(&unanswered, ready, head_untouched).filter(|_| fate != Fate::Retired);
        log_fate(process.worker_pid(), &fate, running);
        let mut dying = Dying {
            process,
            launcher,
            kill_at: (fate == Fate::Retired).then(|| Instant::now() + RETIRE_GRACE),
            victim: None,
            victim_input: None,
            victim_runs: 0,
            failed_starting: None,
        };
        if fate == Fate::Retired {
            // It ran none of it (it said so), or answered everything.
            self.requeue.extend(unanswered.into_chunks());
            return dying;
        }
        if !ready || fate == Fate::PoolBroken {
            // Nothing ran (or nothing will): what is left goes back.
            if !ready {
                dying.failed_starting = match &fate {
                    Fate::Died => Some(None),
                    Fate::Broke(message) => Some(Some(format!("broke the protocol: {message}"))),
                    Fate::StartupTimeout => {
                        Some(Some(format!("no handshake within {STARTUP_TIMEOUT:?}")))
                    }
                    _ => None,
                };
            }
            self.requeue.extend(unanswered.into_chunks());
            return dying;
        }
        if let Some(mut head) = unanswered.head {
            if fate == Fate::Cancelled {
                // Its map is gone, and its chunks with it.
                self.requeue.push(head);
            } else if head_untouched && head.returns < UNSTARTED_RETURNS {
                // It never started.
                head.returns += 1;
                self.requeue.push(head);
            } else if head.count > 1 {
                self.requeue.extend(head.singletons());
            } else {
                // A worker announces the panic of the item it runs: with
                // one input left, that one.
                self.blame(head, Blame::for_fate(fate, symbolising), &mut dying);
            }
        }
        self.requeue.extend(unanswered.rest);
        dying
    }

    /// Reports what happened to `victim`, the one input its worker was
    /// running.
    fn blame(&mut self, mut victim: Chunk, blame: Blame, dying: &mut Dying) {
        let (index, map) = (victim.first_index, victim.map);
        let error = match blame {
            Blame::Timeout => Error::TaskTimeout {
                index,
                // The timeout it ran against: its map's, or the pool's.
                timeout: victim
                    .timeout
                    .expect("an input that timed out has a timeout"),
                replay: None,
            },
            Blame::Protocol(message) => Error::Protocol {
                index,
                message,
                replay: None,
            },
            Blame::Panicked(PanicReport {
                message, location, ..
            }) => Error::TaskPanicked {
                index,
                message,
                location,
                backtrace: None,
                replay: None,
            },
            Blame::Death if victim.attempts < self.retries => {
                victim.attempts += 1;
                self.requeue.push(victim);
                return;
            }
            Blame::Death => {
                dying.victim = Some((map, index));
                dying.victim_runs = victim.attempts + 1;
                dying.victim_input = Some(victim);
                return;
            }
        };
        let stderr = if self.posting.wants().stderr_tail {
            let stderr = dying.process.stderr();
            stderr.pump();
            stderr.excerpt()
        } else {
            String::new()
        };
        self.posting
            .fail(&victim, index, victim.only_item(), error, None, &stderr);
    }
}

/// Reaps `dying` if it has exited (never blocks), and reports its victim
/// and start-up failure; kills it first if its grace ran out at `now`.
/// Returns whether it was reaped.
pub(crate) fn try_reap(
    dying: &mut Dying,
    now: Instant,
    supply: &mut Supply,
    posting: &mut Posting,
) -> bool {
    if dying.kill_at.is_some_and(|at| now >= at) {
        dying.kill_at = None;
        dying.process.kill();
    }
    let Some(status) = dying.process.try_reap() else {
        return false;
    };
    tracing::debug!(
        worker = dying.process.worker_pid(),
        status = %status_text(status),
        map = dying.victim.map(|(map, _)| map),
        input = dying.victim.map(|(_, index)| index),
        "worker exited"
    );
    // What it wrote last explains its death. Take what is there, but do not
    // wait for the end: a subprocess may hold the pipe open.
    let stderr = dying.process.stderr();
    stderr.pump();
    stderr.flush_line();
    let mut stderr = stderr.excerpt();
    let cpu_note = dying.process.cpu_limit_note(status);
    if let Some(note) = &cpu_note {
        stderr.push_str(note);
        stderr.push('\n');
    }
    if let Some(fault) = &dying.failed_starting {
        // A SIGKILL from outside says nothing about whether workers can
        // start; a worker that failed by itself, or that the pool killed for
        // a fault of its own, does. Whose SIGKILL it was is known from
        // whether the pool sent one while the worker ran: a launcher's
        // process (`ssh`) whose worker failed at once is killed by the pool
        // as its stream ends, before it exits by itself.
        let killed_from_outside = fault.is_none()
            && !dying.process.killed_by_pool()
            && status.is_some_and(|s| s.signal() == Some(libc::SIGKILL));
        if !killed_from_outside {
            supply.died_starting(match (fault, status, telling_line(&stderr)) {
                (Some(fault), _, _) => fault.clone(),
                (None, status, Some(line)) => format!("{}: {line}", status_text(status)),
                (None, status, None) => status_text(status),
            });
        }
    }
    if let Some((map, index)) = dying.victim.take() {
        let input = dying.victim_input.take();
        let cpu_limited = dying.process.launch().cpu_limit().is_some();
        let kept_stderr = match &input {
            Some(_) if posting.wants().stderr_tail => stderr.clone(),
            _ => String::new(),
        };
        let error = Error::WorkerDied {
            index,
            status,
            // The pool's own note says the kernel killed it at its hard
            // CPU limit; otherwise the signal or the worker's words do.
            limit: match cpu_note {
                Some(_) => Some(Limit::CpuTime),
                None => Limit::of(status, &stderr, supply.memory_limit(), cpu_limited),
            },
            stderr,
            runs: dying.victim_runs,
            replay: None,
        };
        match input {
            Some(input) => posting.fail(
                &input,
                index,
                input.only_item(),
                error,
                status,
                &kept_stderr,
            ),
            None => posting.push(map, Delivery::Failed(error)),
        }
    }
    true
}

/// The inputs a worker taken out of service was running, if it was: its
/// map, the first input's index and how many there were.
fn running(
    unanswered: &Unanswered,
    ready: bool,
    head_untouched: bool,
) -> Option<(u64, usize, u32)> {
    let head = unanswered
        .head
        .as_ref()
        .filter(|_| ready && !head_untouched)?;
    Some((head.map, head.first_index, head.count))
}

/// Says, at debug level, what became of `worker` and which input it was
/// running (`map`, `input`, and `inputs` when it ran several in one
/// frame).
fn log_fate(worker: u32, fate: &Fate, running: Option<(u64, usize, u32)>) {
    let map = running.map(|(map, _, _)| map);
    let input = running.map(|(_, index, _)| index);
    let inputs = running
        .map(|(_, _, count)| count)
        .filter(|&count| count > 1);
    macro_rules! say {
        ($($field:ident = $value:expr,)* $message:literal) => {
            tracing::debug!(worker, $($field = $value,)* map, input, inputs, $message)
        };
    }
    match fate {
        Fate::TimedOut => say!("worker timed out: killed"),
        Fate::Died => say!("worker died"),
        Fate::Broke(problem) => say!(
            problem = problem.as_str(),
            "worker broke the protocol: killed"
        ),
        Fate::Cancelled => say!("worker's map was dropped: killed"),
        Fate::Retired => say!("worker retired"),
        Fate::StartupTimeout => say!("worker did not start in time: killed"),
        Fate::PoolBroken => say!("pool gave up: worker killed"),
    }
}

fn status_text(status: Option<ExitStatus>) -> String {
    status.map_or_else(|| "no exit status".to_owned(), |s| s.to_string())
}

/// At shutdown: kills and reaps a dying worker, waiting at most
/// [`REAP_BOUND`].
pub(crate) fn reap_at_shutdown(mut dying: Dying) {
    dying.process.kill_and_reap(REAP_BOUND);
    let stderr = dying.process.stderr();
    stderr.pump();
    stderr.flush_line();
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::process::Command;
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::flow::STARTUP_FAILURE_LIMIT;
    use crate::handoff::Handoff;
    use crate::launch::{Launch, Local};
    use crate::scheduler::spawner::SpawnRequest;

    /// Starts `sleep 60` in a process group of its own, as a worker that
    /// does not exit by itself.
    #[derive(Debug)]
    struct Sleeper;

    impl Launch for Sleeper {
        fn command(&self, _: &Handoff<'_>) -> Command {
            let mut command = Command::new("sleep");
            command.arg("60").process_group(0);
            command
        }

        fn worker_is_child(&self) -> bool {
            true
        }

        fn kill_rest(&self, local_pid: u32, reported: Option<&crate::launch::Reported>) {
            Local.kill_rest(local_pid, reported);
        }
    }

    const MS: Duration = Duration::from_millis(1);

    fn chunk(first_index: usize, count: u32, returns: u32) -> Chunk {
        let mut frame = crate::protocol::RunFrame::new(0);
        for k in 0..count {
            frame
                .push_with(|buf| crate::protocol::encode(&k, buf))
                .unwrap();
        }
        Chunk {
            map: 7,
            task: 0,
            context: 0,
            first_index,
            count,
            frame: frame.finish(),
            attempts: 0,
            returns,
            bulk: Vec::new(),
            context_frame: None,
            timeout: Some(250 * MS),
        }
    }

    /// A worker (a real `sleep`) taken out of service with `fate`, which was
    /// given `chunks`, all written.
    fn remains(fate: Fate, ready: bool, chunks: Vec<Chunk>, head_untouched: bool) -> Remains {
        let now = Instant::now();
        let mut books = super::super::books::Books::default();
        if ready {
            books.ready(now);
        }
        let bytes: usize = chunks.iter().map(|c| c.frame.len()).sum();
        for chunk in chunks {
            books.assign(None, chunk, MS, Arc::default());
        }
        books.wrote(bytes, now);
        Remains {
            process: SpawnRequest::plain(Arc::new(Sleeper)).spawn().unwrap(),
            launcher: 0,
            books,
            fate,
            head_untouched,
            symbolising: None,
        }
    }

    /// Buries `remains`; returns the dying worker, what went back to the
    /// queue and what was reported.
    fn bury(remains: Remains, retries: u32) -> (Dying, Vec<Chunk>, Posting) {
        let (mut posting, mut requeue) = (Posting::default(), Vec::new());
        let mut burial = Burial {
            retries,
            posting: &mut posting,
            requeue: &mut requeue,
        };
        let dying = burial.bury(remains);
        (dying, requeue, posting)
    }

    fn placed(chunks: &[Chunk]) -> Vec<(usize, u32)> {
        chunks.iter().map(|c| (c.first_index, c.count)).collect()
    }

    #[test]
    fn an_untouched_input_goes_back_a_few_times_then_is_blamed() {
        for returns in 0..=UNSTARTED_RETURNS {
            let remains = remains(Fate::Died, true, vec![chunk(3, 1, returns)], true);
            let (dying, requeue, posting) = bury(remains, 0);
            assert!(posting.is_empty());
            if returns < UNSTARTED_RETURNS {
                assert_eq!(dying.victim, None);
                assert_eq!(requeue.len(), 1);
                assert_eq!((requeue[0].returns, requeue[0].attempts), (returns + 1, 0));
            } else {
                assert_eq!(dying.victim, Some((7, 3)), "after {returns} returns");
                assert!(requeue.is_empty());
            }
        }
    }

    #[test]
    fn a_running_input_gets_the_error_and_the_rest_goes_back() {
        let running = || vec![chunk(0, 1, 0), chunk(1, 2, 0)];
        let (_, requeue, posting) = bury(remains(Fate::TimedOut, true, running(), false), 0);
        assert_eq!(placed(&requeue), [(1, 2)]);
        assert!(matches!(
            posting.deliveries(),
            [(7, Delivery::Failed(Error::TaskTimeout { index: 0, timeout, .. }))]
                if *timeout == 250 * MS
        ));
        let broke = Fate::Broke("garbage".into());
        let (_, _, posting) = bury(remains(broke, true, running(), false), 0);
        assert!(matches!(
            posting.deliveries(),
            [(7, Delivery::Failed(Error::Protocol { index: 0, message, .. }))] if message == "garbage"
        ));
        // A death is reported once the status is known, or retried.
        let (dying, requeue, posting) = bury(remains(Fate::Died, true, running(), false), 0);
        assert_eq!((dying.victim, posting.len()), (Some((7, 0)), 0));
        assert_eq!(placed(&requeue), [(1, 2)]);
        let (dying, requeue, _) = bury(remains(Fate::Died, true, running(), false), 1);
        assert_eq!(dying.victim, None);
        assert_eq!(placed(&requeue), [(0, 1), (1, 2)]);
        assert_eq!((requeue[0].attempts, requeue[1].attempts), (1, 0));
    }

    #[test]
    fn a_panic_whose_backtrace_was_not_made_in_time_is_reported_without_it() {
        let report = PanicReport {
            message: "boom".into(),
            location: None,
            backtrace: None,
        };
        let with_panic = |fate| Remains {
            symbolising: Some(report.clone()),
            ..remains(fate, true, vec![chunk(5, 1, 0)], false)
        };
        let (dying, requeue, posting) = bury(with_panic(Fate::TimedOut), 0);
        assert!(requeue.is_empty() && dying.victim.is_none());
        assert!(matches!(
            posting.deliveries(),
            [(7, Delivery::Failed(Error::TaskPanicked { index: 5, message, backtrace: None, .. }))]
                if message == "boom"
        ));
        // A death while making it is a death (or a retry), as any.
        let (dying, _, posting) = bury(with_panic(Fate::Died), 0);
        assert_eq!((dying.victim, posting.len()), (Some((7, 5)), 0));
        // A batch goes back one input at a time, as any.
        let batch = Remains {
            symbolising: Some(report.clone()),
            ..remains(Fate::TimedOut, true, vec![chunk(0, 2, 0)], false)
        };
        let (_, requeue, posting) = bury(batch, 0);
        assert_eq!((placed(&requeue), posting.len()), (vec![(0, 1), (1, 1)], 0));
    }

    #[test]
    fn a_running_batch_goes_back_one_input_at_a_time() {
        let (dying, requeue, posting) =
            bury(remains(Fate::Died, true, vec![chunk(0, 3, 0)], false), 0);
        assert_eq!(placed(&requeue), [(0, 1), (1, 1), (2, 1)]);
        assert_eq!((dying.victim, posting.len()), (None, 0));
        // A cancelled worker's inputs go back whole; their map is gone.
        let (_, requeue, posting) = bury(
            remains(Fate::Cancelled, true, vec![chunk(0, 3, 0)], false),
            0,
        );
        assert_eq!((placed(&requeue), posting.len()), (vec![(0, 3)], 0));
    }

    #[test]
    fn a_worker_that_never_said_hello_ran_nothing() {
        let cases = [
            (Fate::Died, Some(None)),
            (
                Fate::Broke("noise".into()),
                Some(Some("broke the protocol: noise".to_owned())),
            ),
            (
                Fate::StartupTimeout,
                Some(Some(format!("no handshake within {STARTUP_TIMEOUT:?}"))),
            ),
            (Fate::PoolBroken, None),
        ];
        for (fate, failed_starting) in cases {
            let (dying, requeue, posting) =
                bury(remains(fate, false, vec![chunk(0, 2, 0)], false), 0);
            assert_eq!(dying.failed_starting, failed_starting);
            assert_eq!((placed(&requeue), posting.len()), (vec![(0, 2)], 0));
        }
    }

    /// A worker that failed before its handshake, to be reaped once it
    /// exited.
    fn failed_starting(process: Process) -> Dying {
        Dying {
            process,
            launcher: 0,
            kill_at: None,
            victim: None,
            victim_input: None,
            victim_runs: 0,
            failed_starting: Some(None),
        }
    }

    /// Waits (at most 10 s) until `process` exits.
    fn wait_exit(process: &Process) {
        let deadline = Instant::now() + Duration::from_secs(10);
        assert!(process.handle().wait_exit(deadline), "exited within 10 s");
    }

    /// Waits until `dying` exits, and reaps it.
    fn reap(dying: &mut Dying, supply: &mut Supply) {
        wait_exit(&dying.process);
        assert!(try_reap(
            dying,
            Instant::now(),
            supply,
            &mut Posting::default()
        ));
    }

    #[test]
    #[cfg_attr(
        not(buckshot_native),
        ignore = "telling an outside SIGKILL that raced the pool's needs /proc (PF_EXITING)"
    )]
    fn only_the_pools_own_sigkill_counts_as_a_failure_to_start() {
        let spawn = || SpawnRequest::plain(Arc::new(Sleeper)).spawn().unwrap();
        let mut supply = Supply::new(SpawnRequest::plain(Arc::new(Local)), 1);
        // Killed from outside, then by the pool as its stream ends: the
        // SIGKILL was not the pool's, and says nothing of start-up.
        let mut dying = failed_starting(spawn());
        let pid = dying.process.pid();
        // SAFETY: kill has no memory-safety preconditions; `pid` is our
        // unreaped child.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
        wait_exit(&dying.process);
        dying.process.kill();
        assert!(!dying.process.killed_by_pool());
        reap(&mut dying, &mut supply);
        assert!(
            supply.may_start(STARTUP_FAILURE_LIMIT as usize - 1),
            "counted"
        );
        // Killed by the pool while it ran (an `ssh` whose remote program
        // failed, killed as its stream ends): counted.
        let mut dying = failed_starting(spawn());
        dying.process.kill();
        assert!(dying.process.killed_by_pool());
        reap(&mut dying, &mut supply);
        assert!(
            !supply.may_start(STARTUP_FAILURE_LIMIT as usize - 1),
            "not counted"
        );
        assert!(supply.may_start(STARTUP_FAILURE_LIMIT as usize - 2));
    }

    #[test]
    fn a_retired_worker_gets_a_grace_and_no_other() {
        let before = Instant::now();
        let (dying, _, _) = bury(remains(Fate::Retired, true, Vec::new(), false), 0);
        let kill_at = dying.kill_at.expect("a grace");
        assert!(kill_at >= before + RETIRE_GRACE && kill_at <= Instant::now() + RETIRE_GRACE);
        let (dying, _, _) = bury(remains(Fate::Died, true, Vec::new(), false), 0);
        assert_eq!(dying.kill_at, None);
    }

    #[test]
    fn a_retired_worker_that_does_not_exit_is_killed_after_its_grace() {
        let process = SpawnRequest::plain(Arc::new(Sleeper)).spawn().unwrap();
        let pid = process.pid();
        let now = Instant::now();
        let mut dying = Dying {
            process,
            launcher: 0,
            kill_at: Some(now + RETIRE_GRACE),
            victim: None,
            victim_input: None,
            victim_runs: 0,
            failed_starting: None,
        };
        let mut supply = Supply::new(SpawnRequest::plain(Arc::new(Local)), 1);
        let mut posting = Posting::default();
        // Within its grace, it is left alone: it does not exit (the bound
        // is how long a SIGKILL would take to show, at most).
        assert!(!try_reap(&mut dying, now, &mut supply, &mut posting));
        assert!(
            !dying.process.handle().wait_exit(Instant::now() + 100 * MS),
            "killed within its grace"
        );
        // After it, it is killed, then reaped once it has exited.
        let later = now + RETIRE_GRACE;
        if !try_reap(&mut dying, later, &mut supply, &mut posting) {
            assert!(
                dying
                    .process
                    .handle()
                    .wait_exit(Instant::now() + REAP_BOUND)
            );
            assert!(try_reap(&mut dying, later, &mut supply, &mut posting));
        }
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
        assert!(posting.is_empty(), "a retired worker has no victim");
    }
}
