//! Sandboxed workers: local workers, told their rules in a second hidden
//! variable. Only local ones: a launcher that starts workers elsewhere
//! (`ssh`, `srun`, a command prefix) passes a command line whose program
//! may not be this binary's copy, on a host whose kernel the probe did not
//! ask, so a pool refuses a sandbox with them rather than half-apply it.

use std::process::Command;

use super::{Rules, SANDBOX_ENV, Sandbox, cpu, shortfall};
use crate::handoff::Handoff;
use crate::launch::{Launch, Local, Reported};
use crate::protocol::Hello;

#[derive(Debug)]
pub(crate) struct Sandboxed {
    /// The rules, as the variable carries them.
    env: String,
    rules: Rules,
    cpu_seconds: Option<u64>,
}

impl Sandboxed {
    pub(crate) fn new(sandbox: &Sandbox) -> Sandboxed {
        Sandboxed {
            env: sandbox.to_env(),
            rules: sandbox.rules(),
            cpu_seconds: sandbox.cpu_seconds(),
        }
    }
}

impl Launch for Sandboxed {
    fn command(&self, handoff: &Handoff<'_>) -> Command {
        let mut command = Local.command(handoff);
        command.env(SANDBOX_ENV, &self.env);
        command
    }

    fn worker_is_child(&self) -> bool {
        Local.worker_is_child()
    }

    fn kill_rest(&self, local_pid: u32, reported: Option<&Reported>) {
        Local.kill_rest(local_pid, reported);
    }

    /// A worker whose handshake says a rule is not in force is refused.
    fn accepts(&self, hello: &Hello) -> Result<(), String> {
        match shortfall(self.rules, hello) {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }

    fn cpu_limit(&self) -> Option<u64> {
        self.cpu_seconds
    }

    fn cpu_limit_reached(&self, local_pid: u32) -> Option<String> {
        let seconds = self.cpu_seconds?;
        cpu::limit_reached(local_pid).then(|| cpu::limit_message(seconds))
    }
}
