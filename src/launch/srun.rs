//! Workers as Slurm job steps, through `srun`.
//!
//! Each worker is one step, `srun -N1 -n1 --quiet --unbuffered`, inside the
//! user's allocation when there is one (`salloc`, `sbatch`), or a job of
//! its own otherwise. The step runs this binary by its path here, so the
//! nodes must see the same file: a shared file system, or a copy made with
//! `sbcast` (or `srun --bcast`) to the same path, given with
//! [`Srun::arg`].
//!
//! Killing the local `srun` does not always end its step's task (measured:
//! once within a second, once not for 10 s, its input held open by
//! slurmstepd), so a worker the pool gives up on is also cancelled with
//! `scancel`, from a helper that is bounded in time and ends with the pool
//! ([`super::helpers`]); the worker's watchdog ends it as soon as its
//! request stream closes.

use std::ffi::OsString;
use std::process::Command;
use std::sync::Arc;

use super::command::run_worker_after;
use super::helpers::Helpers;
use super::{Launch, Launcher, Reported, kill_group};
use crate::flow::{HELPER_BOUND, SCANCEL_GRACE};
use crate::handoff::Handoff;

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
        Launcher::from_launch(SrunLaunch {
            srun,
            helpers: Helpers::default(),
        })
    }
}

/// One pool's srun launcher.
#[derive(Debug)]
struct SrunLaunch {
    srun: Srun,
    /// The `scancel`s under way.
    helpers: Helpers,
}

impl Launch for SrunLaunch {
    fn command(&self, handoff: &Handoff<'_>) -> Command {
        // Named after this process and srun's own pid (`sh` execs srun),
        // so that the pool can cancel the job srun makes even before the
        // worker says which step it is.
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!(
                "exec srun --job-name={}-$$ \"$@\"",
                job_name_prefix()
            ))
            .arg("sh")
            .args(["-N1", "-n1", "--quiet", "--unbuffered"])
            .args(&self.srun.args);
        run_worker_after(&mut command, handoff);
        command
    }

    fn worker_is_child(&self) -> bool {
        false
    }

    fn kill_rest(&self, local_pid: u32, reported: Option<&Reported>) {
        kill_group(local_pid);
        let scancel = |args: &[&str]| {
            let mut cancel = Command::new("scancel");
            cancel.args(args);
            cancel
        };
        // The job srun made for this worker, if it made one: by its name,
        // which no allocation of the user's has.
        let name = format!("--name={}-{local_pid}", job_name_prefix());
        self.helpers
            .run("buckshot-scancel", vec![scancel(&[&name])], HELPER_BOUND);
        // A killed srun does not always end its step (measured here: the
        // task ran on, its input held open by slurmstepd): cancel the step
        // the worker said it runs as, inside an allocation too: its
        // processes at once, then the step itself; never the allocation.
        // Beside the cancel by name, not after it: each takes a round trip
        // to slurmctld, seconds on a loaded machine.
        if let Some(step) = reported
            .and_then(|r| r.step.as_deref())
            .filter(|s| is_step_id(s))
        {
            let commands = vec![scancel(&["--signal=KILL", step]), scancel(&[step])];
            self.helpers.run("buckshot-scancel", commands, HELPER_BOUND);
        }
    }

    fn for_pool(&self) -> Option<Arc<dyn Launch>> {
        Some(Arc::new(SrunLaunch {
            srun: self.srun.clone(),
            helpers: Helpers::default(),
        }))
    }

    fn finish(&self) {
        // Longer than ssh's: a step whose srun was killed may run until it
        // is cancelled.
        self.helpers.finish(SCANCEL_GRACE);
    }

    fn describe(&self) -> Option<String> {
        Some("srun".to_owned())
    }
}

/// The start of the job names of this process's srun workers.
fn job_name_prefix() -> String {
    format!("buckshot-{}", std::process::id())
}

/// Whether `step` is a step id, `JOB.STEP` in digits, and nothing a
/// worker could smuggle into `scancel`'s arguments.
fn is_step_id(step: &str) -> bool {
    match step.split_once('.') {
        Some((job, step)) => {
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            digits(job) && digits(step)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_step_ids_reach_scancel() {
        assert!(is_step_id("42.3"));
        for bad in [
            "42",
            "42.",
            ".3",
            "-1.2",
            "42.3 --all",
            "--user=root",
            "4a.1",
        ] {
            assert!(!is_step_id(bad), "{bad}");
        }
    }
}
