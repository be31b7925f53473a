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
    /// The task ran longer than the pool's timeout; its worker was killed and
    /// replaced.
    #[error("input {index}: timed out after {timeout:?}{}", replay_suffix(replay))]
    TaskTimeout {
        /// Position of the input.
        index: usize,
        /// The pool's timeout.
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
        /// symbolising it costs the worker tens of milliseconds.
        backtrace: Option<String>,
        /// Its replay file, when the pool keeps failures.
        replay: Option<Replay>,
    },

    /// The worker process running the task exited or was killed (abort,
    /// segfault, `exit`, `kill -9`, out of memory, ...). A fresh worker takes
    /// its place.
    #[error(
        "input {index}: worker died ({}){}{}",
        status_text(status),
        last_line(stderr),
        replay_suffix(replay)
    )]
    WorkerDied {
        /// Position of the input.
        index: usize,
        /// How the worker ended: `None` if the program lets the kernel reap
        /// its children (SIGCHLD set to `SIG_IGN`), which takes the status
        /// away.
        status: Option<ExitStatus>,
        /// The last few KiB the worker wrote to stderr.
        stderr: String,
        /// Its replay file, when the pool keeps failures.
        replay: Option<Replay>,
    },

    /// The worker broke the wire protocol (for example a task wrote garbage to
    /// the worker's reply channel); it was killed and replaced.
    #[error(
        "input {index}: worker broke the protocol: {message}{}",
        replay_suffix(replay)
    )]
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
    Encode {
        /// Position of the input.
        index: usize,
        /// The encoder's error.
        #[source]
        source: BoxError,
    },

    /// The worker could not decode the input or encode the task's output.
    #[error("input {index}: worker could not {message}")]
    WorkerCodec {
        /// Position of the input.
        index: usize,
        /// What failed, as reported by the worker.
        message: String,
    },

    /// The task's output came back but could not be decoded.
    #[error("input {index}: could not decode the output")]
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
    PoolClosed {
        /// Position of the input.
        index: usize,
        /// Why the pool shut down, when it was not simply dropped.
        reason: Option<String>,
    },

    /// The function was never registered with [`register!`](crate::register).
    #[error("task `{name}` is not registered (missing `buckshot::register!`?)")]
    NotRegistered {
        /// The function's type name.
        name: String,
    },

    /// A worker process could not be started.
    #[error("could not start a worker process")]
    Spawn {
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// Workers start but fail before they can take work: they died during
    /// start-up, or their handshake did not match this process.
    #[error("workers fail to start: {message}")]
    Startup {
        /// What went wrong.
        message: String,
    },

    /// The context given to [`Pool::with_context`](crate::Pool::with_context)
    /// could not be encoded, or encodes to more than the pool's frame limit.
    #[error("could not encode the context: {message}")]
    Context {
        /// What failed.
        message: String,
    },

    /// A rule of the pool's [`Sandbox`](crate::Sandbox) cannot come up
    /// here: the kernel or the environment lacks what it needs (user
    /// namespaces disabled, no Landlock, a path missing), and the sandbox
    /// is not [`best_effort`](crate::Sandbox::best_effort).
    #[error("sandbox rule {rule} cannot come up: {reason}")]
    Sandbox {
        /// The rule.
        rule: crate::SandboxRule,
        /// Why, as the kernel said it.
        reason: String,
    },

    /// The pool's configuration is invalid.
    #[error("invalid pool configuration: {message}")]
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
            | Error::Context { .. }
            | Error::Spawn { .. }
            | Error::Startup { .. }
            | Error::Sandbox { .. }
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

    /// Whether the task ran past the pool's timeout.
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

/// The last line of a worker's stderr that says what happened: blank lines
/// and backtraces are skipped.
pub(crate) fn telling_line(stderr: &str) -> Option<&str> {
    let is_noise = |line: &str| {
        line.is_empty()
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
