//! The pool's settings, as the builder validated them: what the core needs
//! to run workers. Optional features are not here: they are values the
//! builder hands the pool ([`crate::hooks::Plugins`]).

use std::sync::Arc;
use std::time::Duration;

use crate::bulk::Segments;
use crate::handoff::WorkerEnv;
use crate::launch::Launcher;

/// The pool's settings, validated by the builder.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// Workers in all, and how many each launcher starts.
    pub processes: usize,
    pub launchers: Vec<(Launcher, usize)>,
    pub timeout: Option<Duration>,
    pub max_frame_bytes: u32,
    pub memory_limit: Option<u64>,
    pub retries: u32,
    pub max_tasks_per_worker: Option<u64>,
    /// How long a worker may have nothing to do before it is let go.
    pub idle_timeout: Option<Duration>,
    pub batch_size: Option<u32>,
    /// Where workers' stderr goes: our stderr, the pool's callback, or
    /// nowhere.
    pub forward_stderr: crate::stderr::Route,
    /// The subscriber of the thread that built the pool.
    pub dispatch: tracing::Dispatch,
    /// Whether panics carry a backtrace: the builder's process asked for
    /// them (`RUST_BACKTRACE`).
    pub backtraces: bool,
    /// Where inputs' long strings go, when every worker is local (and can
    /// reach them).
    pub bulk: Option<Arc<Segments>>,
    /// The position of the task each worker runs once before its first
    /// (`PoolBuilder::initializer`).
    pub initializer: Option<u32>,
    /// Variables set in workers' environment (`PoolBuilder::env`).
    pub env: Arc<WorkerEnv>,
    /// The resident memory past which a worker retires after a message.
    pub max_worker_rss: Option<u64>,
}
