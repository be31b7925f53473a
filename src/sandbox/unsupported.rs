//! The worker's side where sandbox rules cannot come up: they are Linux
//! only (Landlock, seccomp, namespaces), and the portable backend has
//! none. Every rule asked is a problem that names the platform, so that
//! [`PoolBuilder::build`](crate::PoolBuilder::build) refuses the sandbox
//! (or, with `best_effort`, drops it with a warning), as it refuses any
//! rule that cannot come up.

use super::Sandbox;
pub(crate) use super::applied::{Applied, report};

/// Applies none of `sandbox`: says why for each rule.
pub(crate) fn apply(sandbox: &Sandbox) -> Applied {
    let why = format!(
        "sandbox rules are Linux only, with the native backend (this is {}{})",
        crate::sys::platform(),
        if cfg!(target_os = "linux") {
            ", built with --cfg buckshot_portable"
        } else {
            ""
        }
    );
    Applied {
        problems: sandbox
            .rules()
            .list()
            .into_iter()
            .map(|rule| (rule, why.clone()))
            .collect(),
        ..Applied::default()
    }
}
