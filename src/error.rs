//! The crate's one error type.
//!
//! Errors that concern a single input carry its `index` (its position in the
//! input iterator) and their message starts with it, so a failed item can be
//! told apart from its neighbours. Pool-level errors (spawning, start-up,
//! configuration, an unregistered task) carry no index.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

/// Boxed source error, so codec and I/O crates stay out of the public API.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in buckshot.
///
/// A `map` yields one `Result<O, Error>` per input: a task that times out,
/// panics or takes its worker down fails that input alone, and the map goes
/// on. Errors returned from [`Pool::map`](crate::Pool::map) or
/// [`PoolBuilder::build`](crate::PoolBuilder::build) themselves concern the
/// whole pool.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The task ran longer than its timeout (its map's,
    /// [`Pool::with_timeout`](crate::Pool::with_timeout), else the pool's);
    /// its worker was killed and replaced.
    #[error("input {index}: timed out after {timeout:?}{}", replay_suffix(replay))]
    #[non_exhaustive]
    TaskTimeout {
        /// Position of the input.
        index: usize,
        /// The timeout that applied: its map's, else the pool's.
        timeout: Duration,
        /// Its replay file, when the pool keeps failures
        /// ([`PoolBuilder::keep_failures`](crate::PoolBuilder::keep_failures)).
        replay: Option<Replay>,
    },

    /// The task panicked. The worker caught the panic and lives on.
    #[error(
        "input {index}: task panicked{}: {message}{}",
        place(location),
        replay_suffix(replay)
    )]
    #[non_exhaustive]
    TaskPanicked {
        /// Position of the input.
        index: usize,
        /// The panic message.
        message: String,
        /// Where the task panicked, if known (not if the task replaced
        /// the worker's panic hook, or re-raised a payload with
        /// `resume_unwind`).
        location: Option<PanicLocation>,
        /// The worker's backtrace at the panic, as text: only when the
        /// pool's process runs with `RUST_BACKTRACE` set (and not `0`), for
        /// symbolising it costs the worker tens of milliseconds (hundreds
        /// for the first one). That time does not count against the
        /// pool's timeout, but is bounded by 10 s of its own: a worker that
        /// takes longer is replaced, and the panic reported without it.
        backtrace: Option<String>,
        /// Its replay file, when the pool keeps failures.
        replay: Option<Replay>,
    },

    /// The worker process running the task exited or was killed (abort,
    /// segfault, `exit`, `kill -9`, out of memory, ...). A fresh worker takes
    /// its place. The message names the limit that ended it, if one did,
    /// the line of its stderr that says what happened, and how many times
    /// the input ran if it was retried
    /// ([`PoolBuilder::retries`](crate::PoolBuilder::retries)): `input 3:
    /// worker died (signal: 9 (SIGKILL)): out of luck (ran 3 times)`.
    #[error(
        "input {index}: worker died ({}{}){}{}{}",
        status_text(status),
        limit_suffix(limit),
        last_line(stderr),
        runs_suffix(*runs),
        replay_suffix(replay)
    )]
    #[non_exhaustive]
    WorkerDied {
        /// Position of the input.
        index: usize,
        /// How the worker ended: `None` if the program lets the kernel reap
        /// its children (SIGCHLD set to `SIG_IGN`), which takes the status
        /// away.
        status: Option<ExitStatus>,
        /// The limit of the pool that ended it, when its status and stderr
        /// say that one did.
        limit: Option<Limit>,
        /// What the worker wrote to stderr while it ran the input: all of
        /// it, or its first and last few KiB in whole lines, with a line
        /// `[buckshot: N KiB left out]` between them.
        stderr: String,
        /// How many times the input ran alone on a worker that died: 1, plus
        /// the retries spent on it. Its status, limit and stderr are those of
        /// the last run.
        runs: u32,
        /// Its replay file, when the pool keeps failures.
        replay: Option<Replay>,
    },

    /// The worker broke the wire protocol (for example a task wrote garbage to
    /// the worker's reply channel); it was killed and replaced.
    #[error(
        "input {index}: worker broke the protocol: {message}{}",
        replay_suffix(replay)
    )]
    #[non_exhaustive]
    Protocol {
        /// Position of the input.
        index: usize,
        /// What was wrong.
        message: String,
        /// Its replay file, when the pool keeps failures.
        replay: Option<Replay>,
    },

    /// The input could not be encoded to CBOR, or its encoding is larger than
    /// the pool's frame limit. It was never sent.
    #[error("input {index}: could not encode the input")]
    #[non_exhaustive]
    Encode {
        /// Position of the input.
        index: usize,
        /// The encoder's error.
        #[source]
        source: BoxError,
    },

    /// The worker could not decode the input or encode the task's output.
    #[error("input {index}: worker could not {message}")]
    #[non_exhaustive]
    WorkerCodec {
        /// Position of the input.
        index: usize,
        /// What failed, as reported by the worker.
        message: String,
    },

    /// The task's output came back but could not be decoded.
    #[error("input {index}: could not decode the output")]
    #[non_exhaustive]
    Decode {
        /// Position of the input.
        index: usize,
        /// The decoder's error.
        #[source]
        source: BoxError,
    },

    /// The pool shut down (it was dropped, or it broke) before this input
    /// finished.
    #[error(
        "input {index}: pool shut down before the task finished{}",
        reason_suffix(reason)
    )]
    #[non_exhaustive]
    PoolClosed {
        /// Position of the input.
        index: usize,
        /// Why the pool shut down, when it was not simply dropped.
        reason: Option<String>,
    },

    /// The function was never registered with [`register!`](crate::register).
    /// Returned by a map or call of it, before any input is pulled.
    #[error("task `{name}` is not registered (missing `buckshot::register!`?)")]
    #[non_exhaustive]
    NotRegistered {
        /// The function's type name.
        name: String,
    },

    /// A worker process could not be started: its launcher's program, or
    /// what the pool needs to talk to it (pipes, a pidfd), could not be
    /// created. Returned by [`PoolBuilder::build`](crate::PoolBuilder::build)
    /// for the first workers; a replacement that cannot be spawned is
    /// retried, and counts towards [`Error::Startup`].
    #[error("could not start a worker process")]
    #[non_exhaustive]
    Spawn {
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The pool could not set up its own machinery in this process (its
    /// thread, the thread that spawns workers, its epoll instance or its
    /// eventfd), before any worker was started: this process is out of
    /// descriptors, threads or memory. Returned by
    /// [`PoolBuilder::build`](crate::PoolBuilder::build).
    #[error("could not set up the pool")]
    #[non_exhaustive]
    PoolSetup {
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The pool gave up: its workers failed before they could take work
    /// (they died during start-up, their handshake did not match this
    /// process, or they could not be spawned, too often in a row), or its
    /// thread failed (an internal error, which the message says). Returned
    /// by every map started on the pool after that; the inputs of maps
    /// already running fail with [`Error::PoolClosed`] and the same
    /// reason. `build` returns before workers say hello, so it does not
    /// return this.
    #[error("workers fail to start: {message}")]
    #[non_exhaustive]
    Startup {
        /// What went wrong.
        message: String,
    },

    /// This program runs with privileges (setuid, setgid or file
    /// capabilities): its copies refuse to serve as workers, for a worker
    /// runs what its environment tells it to. Returned by
    /// [`PoolBuilder::build`](crate::PoolBuilder::build) before any worker
    /// is started.
    #[error(
        "this program runs with privileges (setuid, setgid or file capabilities), \
         and its copies refuse to serve as workers"
    )]
    Privileged,

    /// A launcher could not get ready to start workers (an
    /// [`ssh`](crate::Launcher::ssh) launcher could not copy this program to
    /// its host, say). Returned by
    /// [`PoolBuilder::build`](crate::PoolBuilder::build) before any worker
    /// is started.
    #[error("a launcher could not get ready: {message}")]
    #[non_exhaustive]
    Launcher {
        /// Why, naming the launcher.
        message: String,
    },

    /// The context given to [`Pool::with_context`](crate::Pool::with_context)
    /// could not be encoded, or encodes to more than the pool's frame limit.
    /// Returned by every map of its handle.
    #[error("could not encode the context: {message}")]
    #[non_exhaustive]
    Context {
        /// What failed.
        message: String,
    },

    /// A rule of the pool's [`Sandbox`](crate::Sandbox) cannot come up
    /// here: the kernel or the environment lacks what it needs (user
    /// namespaces disabled, no Landlock, a path missing), and the sandbox
    /// is not [`best_effort`](crate::Sandbox::best_effort). Returned by
    /// [`PoolBuilder::build`](crate::PoolBuilder::build).
    #[error("sandbox rule {rule} cannot come up: {reason}")]
    #[non_exhaustive]
    Sandbox {
        /// The rule.
        rule: crate::SandboxRule,
        /// Why, as the kernel said it.
        reason: String,
    },

    /// The pool could not find out which rules of its
    /// [`Sandbox`](crate::Sandbox) come up here: the probe (a copy of this
    /// program that applies them, started once by
    /// [`PoolBuilder::build`](crate::PoolBuilder::build)) could not be
    /// started, or failed.
    #[error("could not probe the sandbox: {message}")]
    #[non_exhaustive]
    SandboxProbe {
        /// Why: the operating system's error, or how the probe ended and
        /// what it wrote to stderr.
        message: String,
    },

    /// The directory for replay files
    /// ([`PoolBuilder::keep_failures`](crate::PoolBuilder::keep_failures))
    /// could not be created. Returned by
    /// [`PoolBuilder::build`](crate::PoolBuilder::build).
    #[error("cannot create the directory for replay files {}", path.display())]
    #[non_exhaustive]
    ReplayDir {
        /// The directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The journal ([`PoolBuilder::journal`](crate::PoolBuilder::journal))
    /// could not be opened or set up. Returned by
    /// [`PoolBuilder::build`](crate::PoolBuilder::build).
    #[error("cannot open the journal {}", path.display())]
    #[non_exhaustive]
    Journal {
        /// The journal's file.
        path: PathBuf,
        /// Why: SQLite's error, or the operating system's.
        #[source]
        source: BoxError,
    },

    /// A bug in buckshot (the pool's thread panicked while it started):
    /// please report it. Returned by
    /// [`PoolBuilder::build`](crate::PoolBuilder::build).
    #[error("internal error: {message}")]
    #[non_exhaustive]
    Internal {
        /// What went wrong.
        message: String,
    },

    /// The pool's configuration is invalid: a setting out of range, a
    /// combination that cannot work, a feature compiled out (the journal
    /// without the cargo feature `journal`), or more workers than the hard
    /// limit on open files allows. Returned by
    /// [`PoolBuilder::build`](crate::PoolBuilder::build) before any worker
    /// is started, and by the maps of a handle whose timeout is zero
    /// ([`Pool::with_timeout`](crate::Pool::with_timeout)).
    #[error("invalid pool configuration: {message}")]
    #[non_exhaustive]
    Config {
        /// What is wrong.
        message: String,
    },
}

impl Error {
    /// The position of the input this error belongs to, if it concerns one
    /// input rather than the whole pool.
    pub fn index(&self) -> Option<usize> {
        match self {
            Error::TaskTimeout { index, .. }
            | Error::TaskPanicked { index, .. }
            | Error::WorkerDied { index, .. }
            | Error::Protocol { index, .. }
            | Error::Encode { index, .. }
            | Error::WorkerCodec { index, .. }
            | Error::Decode { index, .. }
            | Error::PoolClosed { index, .. } => Some(*index),
            Error::NotRegistered { .. }
            | Error::Spawn { .. }
            | Error::PoolSetup { .. }
            | Error::Startup { .. }
            | Error::Privileged
            | Error::Launcher { .. }
            | Error::Context { .. }
            | Error::Sandbox { .. }
            | Error::SandboxProbe { .. }
            | Error::ReplayDir { .. }
            | Error::Journal { .. }
            | Error::Internal { .. }
            | Error::Config { .. } => None,
        }
    }

    /// The replay file kept for this input, if the pool keeps failures
    /// ([`PoolBuilder::keep_failures`](crate::PoolBuilder::keep_failures))
    /// and wrote one. Run the program with `BUCKSHOT_REPLAY=<file>` to run
    /// the input again, alone, in the foreground.
    pub fn replay_file(&self) -> Option<&Path> {
        match self.replay()? {
            Replay::File(path) => Some(path),
            Replay::NotKept(_) => None,
        }
    }

    /// What became of this input's replay file, for the errors that can
    /// have one.
    pub(crate) fn replay(&self) -> Option<&Replay> {
        match self {
            Error::TaskTimeout { replay, .. }
            | Error::TaskPanicked { replay, .. }
            | Error::WorkerDied { replay, .. }
            | Error::Protocol { replay, .. } => replay.as_ref(),
            _ => None,
        }
    }

    /// The replay slot of the errors that can have a replay file.
    pub(crate) fn replay_mut(&mut self) -> Option<&mut Option<Replay>> {
        match self {
            Error::TaskTimeout { replay, .. }
            | Error::TaskPanicked { replay, .. }
            | Error::WorkerDied { replay, .. }
            | Error::Protocol { replay, .. } => Some(replay),
            _ => None,
        }
    }

    /// Whether the task ran past its timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::TaskTimeout { .. })
    }

    /// Whether the task panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self, Error::TaskPanicked { .. })
    }

    /// Whether the worker running the task died.
    pub fn is_worker_died(&self) -> bool {
        matches!(self, Error::WorkerDied { .. })
    }
}

/// What became of a failed input's replay file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Replay {
    /// The input was written to this file: running the program with
    /// `BUCKSHOT_REPLAY=<file>` runs it again.
    File(PathBuf),
    /// No file was written; the text says why (the map already kept as
    /// many as the pool allows, or the file could not be written).
    NotKept(String),
}

/// `" (replay: <file>)"`, `" (no replay file: <why>)"`, or nothing.
fn replay_suffix(replay: &Option<Replay>) -> String {
    match replay {
        Some(Replay::File(path)) => format!(" (replay: {})", path.display()),
        Some(Replay::NotKept(why)) => format!(" (no replay file: {why})"),
        None => String::new(),
    }
}

/// A limit of the pool that ended a worker: see
/// [`Error::WorkerDied`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Limit {
    /// The pool's
    /// [`memory_limit`](crate::PoolBuilder::memory_limit), in bytes: an
    /// allocation past it failed, and the worker aborted.
    Memory(u64),
    /// The sandbox's [`cpu_time`](crate::Sandbox::cpu_time): the task
    /// used it up.
    CpuTime,
}

impl Limit {
    /// The limit that ended a worker, as its exit `status` and what it
    /// wrote to `stderr` say, among the pool's: `memory_limit`, if it has
    /// one, and whether its workers have a CPU time limit. An allocation
    /// failure says so on stderr before the abort (Rust's `memory
    /// allocation of N bytes failed`, C++'s `std::bad_alloc`, glibc's `out
    /// of memory`); the CPU limit's signal is `SIGXCPU`, and the sandbox's
    /// handler names the limit before it.
    pub(crate) fn of(
        status: Option<ExitStatus>,
        stderr: &str,
        memory_limit: Option<u64>,
        cpu_limited: bool,
    ) -> Option<Limit> {
        use std::os::unix::process::ExitStatusExt;
        let signal = status.and_then(|status| status.signal());
        let said = |sign: fn(&str) -> bool| stderr.lines().any(|line| sign(line.trim()));
        let cpu_said =
            || said(|line| line.starts_with("buckshot worker: killed by its CPU time limit"));
        if cpu_limited && (signal == Some(libc::SIGXCPU) || cpu_said()) {
            return Some(Limit::CpuTime);
        }
        let allocation_failed = said(|line| {
            (line.starts_with("memory allocation of ") && line.ends_with(" failed"))
                || line.contains("std::bad_alloc")
                || line.contains("out of memory")
        });
        match memory_limit {
            Some(bytes) if signal == Some(libc::SIGABRT) && allocation_failed => {
                Some(Limit::Memory(bytes))
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::Memory(bytes) => {
                write!(f, "memory limit of {}", crate::stderr::human_bytes(*bytes))
            }
            Limit::CpuTime => f.write_str("CPU time limit"),
        }
    }
}

/// `", past its <limit>"`, or nothing.
/// `" (ran 3 times)"` for an input that ran more than once, or nothing.
fn runs_suffix(runs: u32) -> String {
    match runs {
        0 | 1 => String::new(),
        runs => format!(" (ran {runs} times)"),
    }
}

fn limit_suffix(limit: &Option<Limit>) -> String {
    limit.map_or_else(String::new, |limit| format!(", past its {limit}"))
}

/// Where a task panicked: a place in its source.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PanicLocation {
    /// The source file, as the compiler named it.
    pub file: String,
    /// Line, from 1.
    pub line: u32,
    /// Column, from 1.
    pub column: u32,
}

impl std::fmt::Display for PanicLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// `" at <place>"`, or nothing.
fn place(location: &Option<PanicLocation>) -> String {
    location
        .as_ref()
        .map_or_else(String::new, |location| format!(" at {location}"))
}

/// How a worker ended, as the message says it.
fn status_text(status: &Option<ExitStatus>) -> String {
    match status {
        Some(status) => status.to_string(),
        None => "exit status unknown".to_owned(),
    }
}

/// `": <line>"` with the [`telling_line`] of a worker's stderr, or nothing.
fn last_line(stderr: &str) -> String {
    telling_line(stderr).map_or_else(String::new, |line| format!(": {line}"))
}

/// The last line of a worker's stderr that says what happened: blank lines,
/// backtraces and the line that stands for what an excerpt left out are
/// skipped.
pub(crate) fn telling_line(stderr: &str) -> Option<&str> {
    let is_noise = |line: &str| {
        line.is_empty()
            || line.starts_with("[buckshot: ")
            || line.starts_with("note: ")
            || line.starts_with("stack backtrace:")
            || line.starts_with("skipping backtrace printing")
            || line.starts_with("at ")
            || line
                .split_once(':')
                .is_some_and(|(n, _)| n.parse::<u32>().is_ok())
    };
    stderr
        .lines()
        .rev()
        .map(str::trim)
        .find(|line| !is_noise(line))
}

fn reason_suffix(reason: &Option<String>) -> String {
    match reason {
        Some(reason) => format!(" ({reason})"),
        None => String::new(),
    }
}

#[cfg(test)]
mod messages;

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    fn signal(signal: i32) -> Option<ExitStatus> {
        Some(ExitStatus::from_raw(signal))
    }

    #[test]
    fn an_allocation_failure_under_a_memory_limit_names_it() {
        let failed = "memory allocation of 2147483648 bytes failed\nstack backtrace:\n";
        let limit = Some(512 << 20);
        let abort = signal(libc::SIGABRT);
        assert_eq!(
            Limit::of(abort, failed, limit, false),
            Some(Limit::Memory(512 << 20))
        );
        for said in [
            "terminate called after throwing an instance of 'std::bad_alloc'\n",
            "Fatal glibc error: failed to register TLS destructor: out of memory\n",
        ] {
            assert_eq!(
                Limit::of(abort, said, limit, false),
                Some(Limit::Memory(512 << 20))
            );
        }
        // Not without a limit, not without the abort, not without the words.
        assert_eq!(Limit::of(abort, failed, None, false), None);
        assert_eq!(Limit::of(signal(libc::SIGKILL), failed, limit, false), None);
        assert_eq!(
            Limit::of(Some(ExitStatus::from_raw(1 << 8)), failed, limit, false),
            None
        );
        assert_eq!(Limit::of(abort, "assertion failed\n", limit, false), None);
        assert_eq!(Limit::of(None, failed, limit, false), None);
    }

    #[test]
    fn the_cpu_limit_is_named_by_its_signal_or_its_message() {
        let xcpu = signal(libc::SIGXCPU);
        assert_eq!(Limit::of(xcpu, "", None, true), Some(Limit::CpuTime));
        let said = "buckshot worker: killed by its CPU time limit of 1s (sandbox cpu_time)\n";
        assert_eq!(
            Limit::of(signal(libc::SIGKILL), said, None, true),
            Some(Limit::CpuTime)
        );
        // Only where the pool has one.
        assert_eq!(Limit::of(xcpu, said, None, false), None);
        assert_eq!(Limit::of(signal(libc::SIGKILL), "", None, true), None);
    }

    #[test]
    fn the_line_for_what_an_excerpt_left_out_tells_nothing() {
        let stderr = format!(
            "memory allocation of 8 bytes failed\n{}   3: main\n",
            crate::stderr::left_out_line(5000)
        );
        assert_eq!(
            telling_line(&stderr),
            Some("memory allocation of 8 bytes failed")
        );
    }
}
