//! Commands a launcher runs besides its workers: `ssh HOST test -x ...`
//! before the first worker starts, `ssh HOST kill ...` or `scancel` after
//! one is killed.
//!
//! None of them may hang the pool or outlive it, whatever the network
//! does. [`run_bounded`] runs one on the calling thread (the one building
//! the pool) and kills it at a deadline. [`Helpers`] runs them off the
//! pool's thread, which never waits on the network: a few at a time (a
//! pool killing 100 remote workers at once must not flood one sshd), each
//! killed at a deadline. When the pool shuts down, the helpers still
//! running get a short grace (the remote kill of the workers it has just
//! killed usually takes one login), then they are killed and reaped: none
//! outlives the pool. Each helper leads a process group of its own, killed
//! as a group, so that what it started (an ssh `ProxyCommand`) goes with
//! it.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;

use super::kill_group;
use crate::flow::{HELPERS_AT_ONCE, REAP_BOUND};
use crate::sys::ChildHandle;

/// Runs `command` with its stdout and stderr collected, and kills it (with
/// its process group) if it has not exited within `bound`: then the error
/// is of kind [`io::ErrorKind::TimedOut`].
pub(crate) fn run_bounded(command: &mut Command, bound: Duration) -> io::Result<Output> {
    let deadline = Instant::now() + bound;
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    let collected = collect(&mut child, deadline);
    if collected.is_err() {
        // Not reaped yet: the group's id is still ours.
        kill_group(child.id());
    }
    let status = child.wait()?;
    let [stdout, stderr] = collected.map_err(|e| match e.kind() {
        io::ErrorKind::TimedOut => io::Error::new(e.kind(), format!("no answer within {bound:?}")),
        _ => e,
    })?;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Reads `child`'s stdout and stderr until it exits, or fails with
/// [`io::ErrorKind::TimedOut`] at `deadline`.
fn collect(child: &mut Child, deadline: Instant) -> io::Result<[Vec<u8>; 2]> {
    let handle = ChildHandle::open(child)?;
    let mut pipes: [Option<OwnedFd>; 2] = [
        child.stdout.take().map(OwnedFd::from),
        child.stderr.take().map(OwnedFd::from),
    ];
    for pipe in pipes.iter().flatten() {
        rustix::fs::fcntl_setfl(pipe, rustix::fs::OFlags::NONBLOCK)?;
    }
    let mut read = [Vec::new(), Vec::new()];
    loop {
        for (pipe, read) in pipes.iter_mut().zip(&mut read) {
            drain(pipe, read)?;
        }
        // What it wrote before it exited is in the pipes, read above; a
        // subprocess of its may keep them open, so their end is not
        // waited for.
        if handle.has_exited() {
            return Ok(read);
        }
        let mut left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let exit = handle.exit_fd();
        if exit.is_none() {
            // Its exit wakes nothing: look again soon.
            left = left.min(EXIT_LOOK);
        }
        let mut fds: Vec<PollFd<'_>> = exit
            .iter()
            .map(|fd| PollFd::new(fd, PollFlags::IN))
            .collect();
        fds.extend(
            pipes
                .iter()
                .flatten()
                .map(|p| PollFd::new(p, PollFlags::IN)),
        );
        let timeout = Timespec::try_from(left).expect("a bound that fits");
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Appends what is in `pipe` now to `read`; closes it at its end.
fn drain(pipe: &mut Option<OwnedFd>, read: &mut Vec<u8>) -> io::Result<()> {
    let mut buf = [0u8; 4096];
    while let Some(fd) = pipe {
        match rustix::io::read(&*fd, &mut buf) {
            Ok(0) => *pipe = None,
            Ok(n) => read.extend_from_slice(&buf[..n]),
            Err(Errno::AGAIN) => break,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// How often a child's exit is looked for where nothing polls on it.
const EXIT_LOOK: Duration = Duration::from_millis(10);

/// Helper commands run off the pool's thread, bounded in number, in time,
/// and by the pool's life: see the module's note. One per pool.
#[derive(Debug, Default)]
pub(crate) struct Helpers {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Threads that run helpers (running one, or waiting for their turn).
    threads: usize,
    /// The helpers running, by pid: process group leaders, not reaped yet
    /// (a thread takes its helper out before reaping it), so that their
    /// group ids are still theirs.
    running: Vec<u32>,
    /// The pool shut down: no helper is asked for any more...
    closed: bool,
    /// ...and after its grace, none starts any more.
    expired: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs one helper, killed after `bound`; whether the ones after it
    /// may run.
    fn run(&self, mut command: Command, bound: Duration) -> bool {
        let mut state = self.lock();
        while !state.expired && state.running.len() >= HELPERS_AT_ONCE {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if state.expired {
            return false;
        }
        // Started under the lock, so that a shutdown that kills the
        // running helpers never misses one being started.
        let spawned = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
        let Ok(mut child) = spawned else {
            return true;
        };
        let pid = child.id();
        state.running.push(pid);
        drop(state);
        let exited = match ChildHandle::open(&child) {
            Ok(handle) => handle.wait_exit(Instant::now() + bound),
            Err(_) => false,
        };
        let mut state = self.lock();
        state.running.retain(|&p| p != pid);
        if !exited {
            kill_group(pid);
        }
        drop(state);
        let _ = child.wait();
        self.changed.notify_all();
        exited
    }
}

/// Counts a thread out of [`State::threads`] however it ends.
struct ThreadOut(Arc<Shared>);

impl Drop for ThreadOut {
    fn drop(&mut self) {
        self.0.lock().threads -= 1;
        self.0.changed.notify_all();
    }
}

impl Helpers {
    /// Runs `commands` one after the other on a thread named `name`, each
    /// with no input or output and killed if it runs past `bound`. Not
    /// once the pool has shut down.
    pub(crate) fn run(&self, name: &str, commands: Vec<Command>, bound: Duration) {
        {
            let mut state = self.shared.lock();
            if state.closed {
                return;
            }
            state.threads += 1;
        }
        let out = ThreadOut(Arc::clone(&self.shared));
        // If the thread cannot start, `out` drops here and counts it out.
        let _ = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                for command in commands {
                    if !out.0.run(command, bound) {
                        break;
                    }
                }
                drop(out);
            });
    }

    /// The pool shut down: no more helpers are asked for; those asked for
    /// (the remote kills of the workers it has just killed, say) get
    /// `grace` to run, then those still running are killed and reaped.
    pub(crate) fn finish(&self, grace: Duration) {
        let mut state = self.shared.lock();
        state.closed = true;
        state = self.wait_for_threads(state, Instant::now() + grace);
        state.expired = true;
        self.shared.changed.notify_all();
        for &pid in &state.running {
            kill_group(pid);
        }
        // They go at once: only their reaping is waited for.
        drop(self.wait_for_threads(state, Instant::now() + REAP_BOUND));
    }

    /// Waits until no thread runs helpers, or `deadline`.
    fn wait_for_threads<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        deadline: Instant,
    ) -> MutexGuard<'a, State> {
        while state.threads > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary file for a shell to write pids to.
    fn pid_file(name: &str) -> std::path::PathBuf {
        let path =
            std::env::temp_dir().join(format!("buckshot-helpers-{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        path
    }

    fn pids_in(path: &std::path::Path) -> Vec<u32> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|line| line.trim().parse().unwrap())
            .collect()
    }

    /// Waits at most 10 s for `condition`.
    fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "{what}: not within 10 s");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Whether `pid` is gone, or a zombie that is not ours to reap.
    fn gone(pid: u32) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rfind(')')
            .is_none_or(|i| stat[i + 1..].trim_start().starts_with('Z'))
    }

    #[test]
    fn a_command_is_run_to_its_end_with_its_output() {
        let output = run_bounded(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(output.status.code(), Some(3));
        assert_eq!(output.stdout, b"out\n");
        assert_eq!(output.stderr, b"err\n");
    }

    #[test]
    fn a_command_past_its_bound_is_killed_with_its_group() {
        let pids = pid_file("bounded");
        let script = format!(
            "sleep 100 & echo $! >> '{p}'; echo $$ >> '{p}'; exec sleep 100",
            p = pids.display()
        );
        let started = Instant::now();
        let error = run_bounded(
            Command::new("sh").args(["-c", &script]),
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(error.to_string(), "no answer within 300ms");
        let killed = pids_in(&pids);
        assert_eq!(killed.len(), 2, "{killed:?}");
        for pid in killed {
            wait_for(&format!("process {pid} ends"), || gone(pid));
        }
        let _ = std::fs::remove_file(&pids);
    }

    /// Helpers that each write their pid to `path`, then wait for ever.
    fn sleepers(path: &std::path::Path, n: usize) -> Vec<Command> {
        (0..n)
            .map(|_| {
                let mut command = Command::new("sh");
                let script = format!("echo $$ >> '{}'; exec sleep 100", path.display());
                command.args(["-c", &script]);
                command
            })
            .collect()
    }

    #[test]
    fn a_helper_past_its_bound_is_killed() {
        let pids = pid_file("helper-bound");
        let helpers = Helpers::default();
        helpers.run(
            "test-helper",
            sleepers(&pids, 1),
            Duration::from_millis(200),
        );
        wait_for("the helper is killed and reaped", || {
            helpers.shared.lock().threads == 0
        });
        let killed = pids_in(&pids);
        assert_eq!(killed.len(), 1);
        assert!(gone(killed[0]));
        let _ = std::fs::remove_file(&pids);
    }

    #[test]
    fn a_few_helpers_run_at_once_and_none_outlives_the_pool() {
        let pids = pid_file("helpers-at-once");
        let helpers = Helpers::default();
        for _ in 0..HELPERS_AT_ONCE + 4 {
            helpers.run("test-helper", sleepers(&pids, 1), HELPER_TEST_BOUND);
        }
        wait_for("as many helpers as may run at once run", || {
            pids_in(&pids).len() == HELPERS_AT_ONCE
        });
        {
            let state = helpers.shared.lock();
            assert_eq!(state.running.len(), HELPERS_AT_ONCE);
            assert_eq!(state.threads, HELPERS_AT_ONCE + 4);
        }
        let started = Instant::now();
        helpers.finish(Duration::from_millis(100));
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(100), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        let state = helpers.shared.lock();
        assert_eq!((state.threads, state.running.len()), (0, 0));
        drop(state);
        let ran = pids_in(&pids);
        assert_eq!(
            ran.len(),
            HELPERS_AT_ONCE,
            "none started after the pool ended"
        );
        for pid in ran {
            assert!(gone(pid), "helper {pid} outlived the pool");
        }
        // And none starts afterwards.
        helpers.run("test-helper", sleepers(&pids, 1), HELPER_TEST_BOUND);
        assert_eq!(helpers.shared.lock().threads, 0);
        let _ = std::fs::remove_file(&pids);
    }

    #[test]
    fn helpers_asked_for_just_before_the_pool_ends_still_run() {
        let pids = pid_file("last-helpers");
        let helpers = Helpers::default();
        for _ in 0..3 {
            let mut command = Command::new("sh");
            command.args(["-c", &format!("echo $$ >> '{}'", pids.display())]);
            helpers.run("test-helper", vec![command], HELPER_TEST_BOUND);
        }
        let started = Instant::now();
        helpers.finish(Duration::from_secs(30));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(pids_in(&pids).len(), 3);
        let _ = std::fs::remove_file(&pids);
    }

    const HELPER_TEST_BOUND: Duration = Duration::from_secs(100);
}
