//! `cpu_time`: a budget of CPU time per task that no task can lift.
//!
//! `RLIMIT_CPU` counts a process's whole life, in whole seconds. Any
//! process may move its own soft limit up to its hard limit, and may lower
//! its hard limit but never raise it again (that needs
//! `CAP_SYS_RESOURCE`). So anything the worker could do to move its limit
//! before each task, a task could do too. Instead:
//! - the worker sets both limits once, before its handshake: the soft one
//!   `seconds` past the whole second after its use, the hard one a second
//!   later; a seccomp filter then denies setting `RLIMIT_CPU` at all (see
//!   `seccomp`), to the worker as to its tasks;
//! - at the soft limit the kernel sends `SIGXCPU`, whose handler says on
//!   stderr which limit ended the worker and dies of it. A task that
//!   ignores or blocks `SIGXCPU` is killed by the kernel with `SIGKILL` at
//!   the hard limit, a second later; the pool then names the limit itself
//!   ([`limit_reached`]);
//! - after each message it ran, the worker checks ([`Guard`]) that the next
//!   task would still get its whole budget (its use has not reached that
//!   whole second) and that no task left a thread running
//!   (which would spend the next task's budget, and have it blamed for
//!   the death). If either fails, it retires: its last reply says so, and
//!   the pool sends what it had queued there to other workers, unblamed.
//!   A worker thus serves about a second of CPU time, then a fresh one (a
//!   few milliseconds to start) takes its place.
//!
//! CPU time here is what the kernel charges against `RLIMIT_CPU`, which
//! can run ahead of what `getrusage` reports (see [`CHARGED_CPU_CLOCK`]).

use std::fs::File;
use std::os::fd::AsFd;
#[cfg(buckshot_native)]
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rustix::process::Resource;
#[cfg(buckshot_native)]
use rustix::process::Rlimit;

use crate::flow::CPU_READ_INTERVAL;

/// What the `SIGXCPU` handler writes: set once, before the handler.
#[cfg(buckshot_native)]
static CPU_MESSAGE: OnceLock<String> = OnceLock::new();

/// What the worker says on stderr when its CPU limit ends it (and what
/// the pool says when the kernel had to kill it).
pub(crate) fn limit_message(seconds: u64) -> String {
    format!("killed by its CPU time limit of {seconds}s (sandbox cpu_time)")
}

/// The clock `RLIMIT_CPU` is checked against: the process's user plus
/// system time as sampled at each tick (`CPUCLOCK_PROF` of the calling
/// process, in the kernel's encoding of CPU clocks: `!pid << 3 | 0`). On a
/// loaded virtual machine it was measured 20-25% ahead of
/// `CLOCK_PROCESS_CPUTIME_ID`, the time the scheduler gave the process,
/// so a budget read on that clock would be spent before it seemed to be.
const CHARGED_CPU_CLOCK: libc::clockid_t = !0 << 3;

/// The whole second after the CPU time this process was charged: a task
/// that starts before it and gets until `seconds` past it gets at least
/// `seconds`.
fn next_charged_second() -> u64 {
    let mut charged = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the struct it is given. The clock
    // exists since Linux 2.6; should it fail, the use reads as zero.
    unsafe { libc::clock_gettime(CHARGED_CPU_CLOCK, &mut charged) };
    u64::try_from(charged.tv_sec).unwrap_or(0).saturating_add(1)
}

/// Sets this process's limits for tasks of `seconds` each, and the
/// handler that names the limit. Returns the worker's thread directory,
/// which [`Guard`] reads (opened here, before Landlock may deny `/proc`).
#[cfg(buckshot_native)]
pub(crate) fn limit(seconds: u64) -> Result<File, String> {
    let tasks = File::open("/proc/self/task")
        .map_err(|e| format!("could not open /proc/self/task: {e}"))?;
    let no_core = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    rustix::process::setrlimit(Resource::Core, no_core)
        .map_err(|e| format!("could not turn core dumps off: {e}"))?;
    let _ = CPU_MESSAGE.set(format!("buckshot worker: {}\n", limit_message(seconds)));
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value;
    // the handler only calls `write` and `raise`, which are
    // async-signal-safe, and reads a string set before it was installed.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = report_cpu_limit as extern "C" fn(libc::c_int) as usize;
        action.sa_flags = libc::SA_RESETHAND;
        if libc::sigaction(libc::SIGXCPU, &action, std::ptr::null_mut()) != 0 {
            return Err(format!(
                "could not handle SIGXCPU: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    let soft = next_charged_second().saturating_add(seconds);
    let hard = soft.saturating_add(1);
    if let Some(inherited) = rustix::process::getrlimit(Resource::Cpu).maximum {
        if inherited < hard {
            return Err(format!(
                "the program's own RLIMIT_CPU hard limit ({inherited}s) leaves tasks \
                 less than {seconds}s"
            ));
        }
    }
    let limits = Rlimit {
        current: Some(soft),
        maximum: Some(hard),
    };
    rustix::process::setrlimit(Resource::Cpu, limits)
        .map_err(|e| format!("could not set RLIMIT_CPU: {e}"))?;
    Ok(tasks)
}

/// Writes which limit ended the worker, then dies of the same signal (the
/// handler was reset to the default, and the signal is blocked until the
/// handler returns), so that the pool sees `SIGXCPU` as the cause.
#[cfg(buckshot_native)]
extern "C" fn report_cpu_limit(signal: libc::c_int) {
    if let Some(message) = CPU_MESSAGE.get() {
        // SAFETY: write(2) is async-signal-safe; the buffer lives for the
        // whole program.
        unsafe { libc::write(2, message.as_ptr().cast(), message.len()) };
    }
    // SAFETY: raise is async-signal-safe.
    unsafe { libc::raise(signal) };
}

/// Why a worker under `cpu_time` retires after a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retire {
    /// A task left a thread running.
    ThreadLeft,
    /// Its use reached the whole second its limits were set from: the
    /// next task could get less than its budget.
    BudgetSpent,
}

/// Decides after each message whether the worker must retire.
#[derive(Debug)]
pub(crate) struct Guard {
    tasks: File,
    /// Threads the worker has of its own (the watchdog, say).
    threads: u64,
    /// The whole second of use from which a task could get less than its
    /// budget.
    last_second: u64,
    /// When the use was last read.
    read_at: Option<Instant>,
}

/// How long a thread that a task joined may take to leave the count: it
/// is counted until the kernel has released it, a little after `join`
/// returns.
const THREAD_EXIT: Duration = Duration::from_millis(20);

impl Guard {
    /// For a worker whose limits [`limit`] set for tasks of `seconds`, and
    /// whose own threads all run: call it right before the first message.
    pub(crate) fn new(tasks: File, seconds: u64) -> std::io::Result<Guard> {
        let soft = rustix::process::getrlimit(Resource::Cpu)
            .current
            .unwrap_or(u64::MAX);
        Ok(Guard {
            threads: threads(&tasks)?,
            tasks,
            last_second: soft.saturating_sub(seconds),
            read_at: None,
        })
    }

    /// After a message, at `now`: whether the worker must retire, and why.
    /// The use is read only every [`CPU_READ_INTERVAL`]: it is a system
    /// call, which costs tiny tasks.
    pub(crate) fn after_message(&mut self, now: Instant) -> std::io::Result<Option<Retire>> {
        if self.thread_left()? {
            return Ok(Some(Retire::ThreadLeft));
        }
        if self
            .read_at
            .is_some_and(|at| now.duration_since(at) < CPU_READ_INTERVAL)
        {
            return Ok(None);
        }
        self.read_at = Some(now);
        Ok((next_charged_second() > self.last_second).then_some(Retire::BudgetSpent))
    }

    /// Whether more threads run than the worker's own, for longer than a
    /// joined thread takes to go.
    fn thread_left(&self) -> std::io::Result<bool> {
        if threads(&self.tasks)? <= self.threads {
            return Ok(false);
        }
        let deadline = Instant::now() + THREAD_EXIT;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200));
            if threads(&self.tasks)? <= self.threads {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// The threads of this process: `/proc/PID/task` has a link per thread
/// besides `.` and `..`. An `fstat` of a descriptor opened before Landlock,
/// which checks paths at `open` only.
fn threads(tasks: &File) -> std::io::Result<u64> {
    let stat = rustix::fs::fstat(tasks.as_fd())?;
    // `nlink_t` is narrower on some targets.
    #[allow(clippy::useless_conversion)]
    let links = u64::from(stat.st_nlink);
    Ok(links.saturating_sub(2))
}

/// Whether the kernel sent the exited, not yet reaped, process `pid`
/// `SIGXCPU` at its soft CPU limit: it then raises the soft limit by a
/// second, to the hard limit the worker set a second above it (and no
/// task can set it). A worker that died of `SIGKILL` after that had its
/// task ignore or block `SIGXCPU`, and was killed at the hard limit. Read
/// from its `/proc` entry, which stays until it is reaped.
pub(crate) fn limit_reached(pid: u32) -> bool {
    let Ok(limits) = std::fs::read_to_string(format!("/proc/{pid}/limits")) else {
        return false;
    };
    limits
        .lines()
        .find_map(|line| line.strip_prefix("Max cpu time"))
        .and_then(soft_reached_hard)
        .unwrap_or(false)
}

/// From the rest of a `Max cpu time` line of `/proc/PID/limits`: whether
/// the soft limit is the hard one (`None` if either is unlimited).
fn soft_reached_hard(limits: &str) -> Option<bool> {
    let mut values = limits.split_whitespace().map(str::parse::<u64>);
    let soft = values.next()?.ok()?;
    let hard = values.next()?.ok()?;
    Some(soft >= hard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_lines_say_whether_the_soft_limit_reached_the_hard_one() {
        let line = |text: &str| soft_reached_hard(text);
        assert_eq!(line("          3        3        seconds"), Some(true));
        assert_eq!(line(" 2 3 seconds"), Some(false));
        assert_eq!(line(" unlimited unlimited seconds"), None);
        assert_eq!(line(" 2 unlimited seconds"), None);
        assert_eq!(line(""), None);
    }

    #[test]
    fn a_process_without_a_cpu_limit_has_not_reached_it() {
        assert!(!limit_reached(std::process::id()));
        assert!(!limit_reached(u32::MAX));
    }

    #[test]
    fn the_next_charged_second_is_ahead_of_the_use() {
        let mut used = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the struct it is given.
        let rc = unsafe { libc::clock_gettime(CHARGED_CPU_CLOCK, &mut used) };
        assert_eq!(rc, 0);
        let next = next_charged_second();
        assert!(next >= 1 && next as f64 > used.tv_sec as f64 + used.tv_nsec as f64 / 1e9);
    }
}
