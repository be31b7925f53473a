//! Workers as Slurm job steps, through `srun`.
//!
//! Each worker is one step, `srun -N1 -n1 --quiet --unbuffered`, inside the
//! user's allocation when there is one (`salloc`, `sbatch`), or a job of
//! its own otherwise. The step runs this binary by its path here, so the
//! nodes must see the same file: a shared file system, or a copy made with
//! `sbcast` (or `srun --bcast`) to the same path, given with
//! [`Srun::arg`].
//!
//! Killing the local `srun` ends its step's task within a second
//! (measured: slurmstepd notices the lost connection), and the worker's
//! watchdog ends it as soon as its request stream closes.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use rustix::process::{Pid, Signal};

use super::command::this_binary;
use super::{Launch, Launcher, Reported};
use crate::handoff::{WORKER_ENV, WorkerConfig};

/// Workers as Slurm job steps: made by [`Launcher::srun`], given to
/// [`PoolBuilder::workers`](crate::PoolBuilder::workers).
///
/// ```no_run
/// use buckshot::{Launcher, Pool};
///
/// # fn main() -> Result<(), buckshot::Error> {
/// // Inside `salloc -N4`: 32 workers on the allocation's nodes.
/// let pool = Pool::builder()
///     .workers(Launcher::srun().arg("--cpus-per-task=1"), 32)
///     .build()?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Srun {
    args: Vec<OsString>,
}

impl Launcher {
    /// Workers as job steps started with `srun`. See [`Srun`].
    pub fn srun() -> Srun {
        Srun::default()
    }
}

impl Srun {
    /// An extra argument for `srun`, before the program: a partition, an
    /// account, a time limit (`--partition=debug`, `--time=10`).
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }
}

impl From<Srun> for Launcher {
    fn from(srun: Srun) -> Launcher {
        Launcher::from_launch(srun)
    }
}

impl Launch for Srun {
    fn command(&self, config: &WorkerConfig) -> Command {
        let mut command = Command::new("srun");
        command
            .args(["-N1", "-n1", "--quiet", "--unbuffered"])
            .args(&self.args)
            .arg("env")
            .arg(format!("{WORKER_ENV}={}", config.to_env()))
            .arg(this_binary())
            .process_group(0);
        command
    }

    fn worker_is_child(&self) -> bool {
        false
    }

    fn kill_rest(&self, local_pid: u32, reported: Option<&Reported>) {
        if let Some(group) = i32::try_from(local_pid).ok().and_then(Pid::from_raw) {
            let _ = rustix::process::kill_process_group(group, Signal::KILL);
        }
        // A killed srun does not always end its step (measured here: the
        // task ran on, its input held open by slurmstepd): cancel the step
        // the worker said it runs as, from a thread of its own.
        if let Some(step) = reported.and_then(|r| r.step.as_deref()) {
            let target = cancel_target(step, std::env::var("SLURM_JOB_ID").ok().as_deref());
            let _ = std::thread::Builder::new()
                .name("buckshot-scancel".into())
                .spawn(move || {
                    // Its processes at once, then the step or job itself.
                    for signal in [Some("--signal=KILL"), None] {
                        let _ = Command::new("scancel")
                            .args(signal)
                            .arg(&target)
                            .stdin(Stdio::null())
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status();
                    }
                });
        }
    }

    fn describe(&self) -> Option<String> {
        Some("srun".to_owned())
    }
}

/// What to cancel for a worker that ran as `step` (`JOB.STEP`): the step,
/// inside the pool's own allocation (`ours`); otherwise the whole job,
/// which its `srun` made for it alone and which would outlive the step.
fn cancel_target(step: &str, ours: Option<&str>) -> String {
    let job = step.split('.').next().unwrap_or(step);
    match ours {
        Some(ours) if ours == job => step.to_owned(),
        _ => job.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_of_our_allocation_is_cancelled_alone() {
        assert_eq!(cancel_target("42.3", Some("42")), "42.3");
        assert_eq!(cancel_target("42.0", None), "42");
        assert_eq!(cancel_target("42.0", Some("7")), "42");
    }
}
