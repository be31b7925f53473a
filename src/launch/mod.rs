//! How a worker process is started, and what is killed with it.
//!
//! A launcher turns a worker's [`WorkerConfig`] into a [`Command`] whose
//! stdin and stdout carry the protocol; the pool spawns it, pipes it and
//! reaps it the same way whatever the launcher ([`crate::process`]). What
//! differs is where the worker runs and what must be killed besides the
//! local process when the pool ends a worker ([`Launch::kill_rest`]).
//!
//! Launchers, one file each:
//! - [`Local`]: this very binary, re-executed on this machine.

mod local;

use std::process::Command;

use crate::handoff::WorkerConfig;

pub(crate) use local::Local;

/// A way to start workers.
pub(crate) trait Launch: Send + Sync + std::fmt::Debug {
    /// The command that starts one worker told `config`. The caller pipes
    /// its stdin, stdout and stderr.
    fn command(&self, config: &WorkerConfig) -> Command;

    /// Whether the worker is a child of this process, so that it can check
    /// that its parent is still the pool's process when it starts.
    fn worker_is_child(&self) -> bool;

    /// Kills what of a worker can outlive the SIGKILL of its local process
    /// (`local_pid`): its subprocesses, or the worker itself when the local
    /// process only relays to it (`reported_pid` is the pid it announced in
    /// its handshake, if it got that far). Called before the local process
    /// is reaped, so that its pid cannot have been reused.
    fn kill_rest(&self, local_pid: u32, reported_pid: Option<u32>);
}
