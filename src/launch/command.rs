//! Workers started through any command prefix: `docker exec -i box`,
//! `nsenter ...`, a wrapper script. The prefix must run what follows it
//! with its stdin and stdout connected to ours; what follows is
//! `env [NAME=VALUE...] __BUCKSHOT_WORKER=... /path/of/this/binary`, the
//! variables the pool sets in workers' environment first, the path as this
//! machine knows it.
//!
//! The worker's parent is whatever the prefix makes it, so it does not
//! check that its parent is the pool's process; it ends with its request
//! stream instead. The prefix runs in a process group of its own, killed
//! with the worker: what it started on this machine goes too.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::Command;

use super::{Launch, Reported, kill_group};
use crate::handoff::Handoff;

#[derive(Debug)]
pub(crate) struct Prefixed {
    /// The prefix, at least one word.
    pub(crate) prefix: Vec<OsString>,
}

/// This binary's path, for a command that runs it by name.
pub(crate) fn this_binary() -> OsString {
    std::env::current_exe()
        .map(OsString::from)
        .unwrap_or_else(|_| crate::sys::exe_path().into())
}

/// Ends a command that runs what follows it with `env [NAME=VALUE...]
/// __BUCKSHOT_WORKER=... BINARY`, and makes it a process group leader.
/// (No name starts with `-`, which `env` would take for an option: the
/// builder refuses those.)
pub(crate) fn run_worker_after(command: &mut Command, handoff: &Handoff<'_>) {
    command
        .arg("env")
        .args(handoff.assignments())
        .arg(this_binary())
        .process_group(0);
}

impl Launch for Prefixed {
    fn command(&self, handoff: &Handoff<'_>) -> Command {
        let mut command = Command::new(&self.prefix[0]);
        command.args(&self.prefix[1..]);
        run_worker_after(&mut command, handoff);
        command
    }

    fn worker_is_child(&self) -> bool {
        false
    }

    fn describe(&self) -> Option<String> {
        let words: Vec<_> = self.prefix.iter().map(|w| w.to_string_lossy()).collect();
        Some(words.join(" "))
    }

    fn kill_rest(&self, local_pid: u32, _reported: Option<&Reported>) {
        kill_group(local_pid);
    }
}
