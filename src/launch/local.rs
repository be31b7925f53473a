//! Workers on this machine: this very binary, re-executed.
//!
//! On Linux, `/proc/self/exe` still works if the file on disk was replaced
//! or removed since the program started (elsewhere see `sys::exe_path`).
//! Each worker leads a process group of its own,
//! so that what a task starts (a `sleep`, a compiler, a forked child) is
//! killed with the worker; only a subprocess that leaves the group on
//! purpose (`setsid`, `setpgid`) escapes. A worker outside the terminal's
//! foreground group gets no Ctrl-C of its own: it follows its parent
//! (end of stdin, and the parent-death signal) instead.

use std::os::unix::process::CommandExt;
use std::process::Command;

use super::{Launch, Reported, kill_group};
use crate::handoff::Handoff;

#[derive(Debug, Default)]
pub(crate) struct Local;

impl Launch for Local {
    fn command(&self, handoff: &Handoff<'_>) -> Command {
        let mut command = Command::new(crate::sys::exe_path());
        if let Some(arg0) = std::env::args_os().next() {
            // So that `ps` shows the program's name rather than its path.
            command.arg0(arg0);
        }
        command.envs(handoff.vars()).process_group(0);
        command
    }

    fn worker_is_child(&self) -> bool {
        true
    }

    fn kill_rest(&self, local_pid: u32, _reported: Option<&Reported>) {
        // The worker leads its group.
        kill_group(local_pid);
    }
}
