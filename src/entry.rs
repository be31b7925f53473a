//! The hidden modes a pool starts this binary in, chosen before `main` by
//! the crate's constructor, in one place:
//!
//! - exec: close the descriptors it inherited and exec a launcher's
//!   program ([`crate::inherit`]);
//! - probe: apply a sandbox and say which rules came up
//!   ([`crate::sandbox::probe`]);
//! - worker: serve tasks until the pool is done ([`crate::worker`]);
//! - replay: run one kept input in the foreground ([`crate::replay`]).
//!
//! Each is marked by a variable of the environment, which a pool (or a
//! user, for a replay) sets. A privileged process (setuid, setgid or file
//! capabilities: the kernel then sets `AT_SECURE`) refuses them all, here,
//! before anything else reads them: whoever set the variable would run the
//! program's code with privileges they do not have.

use std::ffi::OsString;

use crate::handoff::WORKER_ENV;
use crate::replay::REPLAY_ENV;

enum Mode {
    Exec(OsString),
    Probe,
    Worker(OsString),
    Replay(OsString),
}

impl Mode {
    /// The mode the environment asks for, if any. Exec first: it is asked
    /// for together with nothing else; a probe's and a worker's variables
    /// come before a replay's, which a user may have left exported.
    fn from_env() -> Option<Mode> {
        let var = std::env::var_os;
        if let Some(words) = var(crate::inherit::EXEC_ENV) {
            return Some(Mode::Exec(words));
        }
        if var(crate::sandbox::probe::PROBE_ENV).is_some() {
            return Some(Mode::Probe);
        }
        if let Some(config) = var(WORKER_ENV) {
            return Some(Mode::Worker(config));
        }
        var(REPLAY_ENV).map(Mode::Replay)
    }

    /// What it says when it refuses to run in a privileged process, and its
    /// exit code then (that of the mode's other refusals).
    fn refusal(&self) -> (String, i32) {
        const PRIVILEGED: &str = "in a privileged process (setuid, setgid or file capabilities)";
        match self {
            Mode::Exec(_) => (
                format!("refusing to run {} {PRIVILEGED}", crate::inherit::EXEC_ENV),
                crate::inherit::EXIT_FAILED,
            ),
            Mode::Probe => (
                format!("refusing to probe a sandbox {PRIVILEGED}"),
                crate::sandbox::probe::EXIT_FAILED,
            ),
            Mode::Worker(_) => (
                format!(
                    "refusing to serve as a worker {PRIVILEGED}; {WORKER_ENV} is set by pools only"
                ),
                crate::worker::EXIT_FATAL,
            ),
            Mode::Replay(_) => (
                format!("refusing to replay {PRIVILEGED}; unset {REPLAY_ENV}"),
                crate::replay::run::EXIT_REFUSED,
            ),
        }
    }
}

/// Runs the mode this process was started in, which never returns;
/// returns at once in a process started in none.
pub(crate) fn run() {
    let Some(mode) = Mode::from_env() else {
        return;
    };
    if crate::sys::is_privileged() {
        let (why, code) = mode.refusal();
        eprintln!("buckshot: {why}");
        std::process::exit(code);
    }
    match mode {
        Mode::Exec(words) => crate::inherit::exec(words),
        Mode::Probe => crate::sandbox::probe::answer(),
        Mode::Worker(config) => crate::worker::serve_from(config),
        Mode::Replay(path) => crate::replay::run::replay(path),
    }
}
