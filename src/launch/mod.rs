//! How a worker process is started, and what is killed with it.
//!
//! A launcher turns a worker's [`Handoff`] (its
//! [`WorkerConfig`](crate::handoff::WorkerConfig) and the
//! variables the pool sets in workers' environment) into a [`Command`]
//! whose stdin and stdout carry the protocol; the pool spawns it, pipes it and
//! reaps it the same way whatever the launcher ([`crate::process`]). What
//! differs is where the worker runs and what must be killed besides the
//! local process when the pool ends a worker ([`Launch::kill_rest`]).
//!
//! Launchers, one file each:
//! - [`Local`]: this very binary, re-executed on this machine;
//! - [`command::Prefixed`]: through any command prefix;
//! - [`Ssh`]: on other hosts, through `ssh`;
//! - [`Srun`]: as Slurm job steps, through `srun`.
//!
//! [`Launcher`] is the public face: what a user passes to
//! [`PoolBuilder::workers`](crate::PoolBuilder::workers). What a launcher
//! runs besides its workers (a remote kill, `scancel`) is bounded in time
//! and ends with the pool ([`helpers`]).

mod command;
mod helpers;
mod local;
mod srun;
mod ssh;

use std::ffi::OsString;
use std::process::Command;
use std::sync::Arc;

use rustix::process::{Pid, Signal};

use crate::handoff::Handoff;
use crate::protocol::Hello;

pub(crate) use local::Local;
pub use srun::Srun;
pub use ssh::Ssh;

/// Where and how a pool starts workers: given with a number of workers to
/// [`PoolBuilder::workers`](crate::PoolBuilder::workers), as often as
/// needed to mix them.
///
/// ```
/// use buckshot::{Launcher, Pool};
///
/// fn double(x: u64) -> u64 {
///     x * 2
/// }
/// buckshot::register!(double);
///
/// # fn main() -> Result<(), buckshot::Error> {
/// // Two workers here, and one started through `nice`.
/// let pool = Pool::builder()
///     .workers(Launcher::local(), 2)
///     .workers(Launcher::command(["nice", "-n", "5"]), 1)
///     .build()?;
/// let doubled: Vec<u64> = pool.map(double, 0..100)?.collect::<Result<_, _>>()?;
/// assert_eq!(doubled, (0..100).map(|x| x * 2).collect::<Vec<_>>());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Launcher {
    launch: Arc<dyn Launch>,
}

impl Launcher {
    /// Workers on this machine: this binary, re-executed. What
    /// [`PoolBuilder::processes`](crate::PoolBuilder::processes) starts.
    pub fn local() -> Launcher {
        Launcher {
            launch: Arc::new(Local),
        }
    }

    /// Workers started through a command prefix that runs what follows it
    /// with its stdin and stdout connected, such as
    /// `["docker", "exec", "-i", "box"]`. What follows is
    /// `env [NAME=VALUE...] __BUCKSHOT_WORKER=... BINARY`, where the
    /// variables are those of [`PoolBuilder::env`](crate::PoolBuilder::env)
    /// and `BINARY` is this program's path on this machine: the prefix must
    /// reach the same binary there.
    ///
    /// # Panics
    ///
    /// If `prefix` is empty.
    pub fn command<I, S>(prefix: I) -> Launcher
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let prefix: Vec<OsString> = prefix.into_iter().map(Into::into).collect();
        assert!(!prefix.is_empty(), "a command launcher needs a program");
        Launcher {
            launch: Arc::new(command::Prefixed { prefix }),
        }
    }

    pub(crate) fn launch(&self) -> Arc<dyn Launch> {
        Arc::clone(&self.launch)
    }

    /// The launcher one pool uses: a copy of its own if it keeps anything
    /// per pool (see [`Launch::for_pool`]).
    pub(crate) fn for_pool(&self) -> Launcher {
        match self.launch.for_pool() {
            Some(launch) => Launcher { launch },
            None => self.clone(),
        }
    }

    pub(crate) fn from_launch(launch: impl Launch + 'static) -> Launcher {
        Launcher {
            launch: Arc::new(launch),
        }
    }
}

impl std::fmt::Debug for Launcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.launch.fmt(f)
    }
}

/// Kills the process group that the local process `leader` leads (every
/// launcher starts its command as a group leader). The leader is not yet
/// reaped, so the group's id cannot have been reused. ESRCH: nothing left.
pub(crate) fn kill_group(leader: u32) {
    if let Some(group) = i32::try_from(leader).ok().and_then(Pid::from_raw) {
        let _ = rustix::process::kill_process_group(group, Signal::KILL);
    }
}

/// What a worker said of itself in its handshake: where to find it when
/// the local process only relays to it.
#[derive(Debug, Clone)]
pub(crate) struct Reported {
    /// Its pid where it runs.
    pub pid: u32,
    /// The Slurm job step it runs as, if it does.
    pub step: Option<String>,
}

/// A way to start workers.
pub(crate) trait Launch: Send + Sync + std::fmt::Debug {
    /// The command that starts one worker with `handoff` in its
    /// environment (all of it: the worker variable and the user's). The
    /// caller pipes its stdin, stdout and stderr.
    fn command(&self, handoff: &Handoff<'_>) -> Command;

    /// Whether the worker is a child of this process, so that it can check
    /// that its parent is still the pool's process when it starts.
    fn worker_is_child(&self) -> bool;

    /// Kills what of a worker can outlive the SIGKILL of its local process
    /// (`local_pid`): its subprocesses, or the worker itself when the local
    /// process only relays to it (`reported_pid` is the pid it announced in
    /// its handshake, if it got that far). Called before the local process
    /// is reaped, so that its pid cannot have been reused.
    fn kill_rest(&self, local_pid: u32, reported: Option<&Reported>);

    /// Gets ready to start workers, before the first (ships the binary to
    /// a host, say); why not, if it cannot. Runs on the thread building
    /// the pool, and returns within a bound.
    fn prepare(&self) -> Result<(), String> {
        Ok(())
    }

    /// A fresh copy of it for one pool, if it keeps anything per pool
    /// (helper commands, which end with their pool: [`Launch::finish`]);
    /// `None` if one value serves any number of pools.
    fn for_pool(&self) -> Option<Arc<dyn Launch>> {
        None
    }

    /// The pool has shut down and killed its workers: what it still runs
    /// for them (a remote kill) gets a moment to finish, then is killed.
    /// Blocks for that moment at most.
    fn finish(&self) {}

    /// How many of its workers may be starting at once: sshd drops
    /// connections that come faster than it takes them (`MaxStartups`).
    fn max_starting(&self) -> usize {
        usize::MAX
    }

    /// Where its workers run, for messages; `None` for this machine.
    fn describe(&self) -> Option<String> {
        None
    }

    /// Whether a worker of its may serve, given what it said in its
    /// handshake; why not, if it may not (a rule of its sandbox is not in
    /// force there). Any may, by default.
    fn accepts(&self, _hello: &Hello) -> Result<(), String> {
        Ok(())
    }

    /// The CPU time each task of its workers may take (the sandbox's
    /// `cpu_time`, in whole seconds), if limited.
    fn cpu_limit(&self) -> Option<u64> {
        None
    }

    /// Whether its worker `local_pid` reached the hard CPU limit that the
    /// launcher set ([`Launch::cpu_limit`]), where the kernel kills it: what
    /// to say of it, if it did. Asked once the worker has exited, before it
    /// is reaped, while its `/proc` entry is there.
    fn cpu_limit_reached(&self, _local_pid: u32) -> Option<String> {
        None
    }
}
