//! The worker's side: applying the rules to itself, before `main`, while
//! it is still single-threaded (unsharing a user namespace needs that),
//! and before its handshake.
//!
//! Order, and why:
//! - `no_new_privs` first: seccomp and Landlock need it, and nothing the
//!   worker runs gains privileges after it;
//! - `cpu_time`: no core dumps (the kill is expected), a `SIGXCPU` handler
//!   that says on stderr which limit ended the worker, and the limits,
//!   set once ([`cpu`]);
//! - `no_network`: a user namespace (as uid and gid of our own: files the
//!   worker creates keep their owner) with a network namespace, or a bare
//!   network namespace where user namespaces are disabled and we are root.
//!   Either way every capability goes, bounding and ambient sets included:
//!   root without them cannot `setns` back to the program's network;
//! - Landlock ([`landlock`]): the file rules, named UNIX sockets under
//!   `no_network` where the kernel can, and for every sandbox a scope that
//!   keeps signals and abstract sockets (and `ptrace`) inside the worker.
//!   It leaves open fds alone (the pipes, `/dev/null`, already set up);
//! - seccomp, last, so that nothing above is filtered: what each rule
//!   denies ([`seccomp`]).
//!
//! Each rule that fails is reported, not fatal here: a probe wants to know
//! all of them, and a worker says them in its handshake. A rule in force
//! with less than it promises ([`Sandbox::best_effort`] only) is reported
//! as a warning.

use rustix::thread::{CapabilitySet, CapabilitySets, UnshareFlags};

pub(crate) use super::applied::{Applied, report};
use super::{Sandbox, SandboxRule, cpu, landlock, seccomp};

/// Applies `sandbox` to this process. Call it while the process has one
/// thread.
pub(crate) fn apply(sandbox: &Sandbox) -> Applied {
    let mut applied = Applied::default();
    let asked = sandbox.rules();
    if let Err(e) = rustix::thread::set_no_new_privs(true) {
        for rule in asked.list() {
            applied
                .problems
                .push((rule, format!("could not set no_new_privs: {e}")));
        }
        return applied;
    }
    // Rules that hold once the filter is installed.
    let mut denials = seccomp::Denials::default();
    let mut filtered = Vec::new();
    if let Some(seconds) = sandbox.cpu_seconds() {
        match cpu::limit(seconds).and_then(|tasks| denials.cpu_limit().map(|()| tasks)) {
            Ok(tasks) => {
                applied.tasks = Some(tasks);
                filtered.push(SandboxRule::CpuTime);
            }
            Err(why) => applied.problems.push((SandboxRule::CpuTime, why)),
        }
    }
    let network = sandbox.no_network && {
        let left = leave_network();
        if let Err(why) = &left {
            applied.problems.push((SandboxRule::NoNetwork, why.clone()));
        }
        left.is_ok()
    };
    let files = asked.contains(SandboxRule::Files);
    let domain = landlock::restrict(sandbox, files, network);
    if files {
        match domain.as_ref().map(|domain| domain.files_shortfall()) {
            Err(why) => applied.problems.push((SandboxRule::Files, why.clone())),
            Ok(Some(why)) if !sandbox.best_effort => {
                applied.problems.push((SandboxRule::Files, why));
            }
            Ok(shortfall) => {
                applied
                    .warnings
                    .extend(shortfall.map(|why| (SandboxRule::Files, why)));
                denials.file_metadata();
                filtered.push(SandboxRule::Files);
            }
        }
    }
    if network {
        let landlock_denies = domain.is_ok_and(landlock::Domain::denies_unix_sockets);
        if landlock_denies {
            applied.in_force.insert(SandboxRule::NoNetwork);
        } else {
            match denials.unix_sockets() {
                Ok(()) => filtered.push(SandboxRule::NoNetwork),
                Err(why) => applied.problems.push((SandboxRule::NoNetwork, why)),
            }
        }
    }
    if sandbox.no_subprocesses {
        match denials.subprocesses() {
            Ok(()) => filtered.push(SandboxRule::NoSubprocesses),
            Err(why) => applied.problems.push((SandboxRule::NoSubprocesses, why)),
        }
    }
    if !denials.is_empty() {
        if let Err(why) = denials.install() {
            for rule in filtered.drain(..) {
                applied.problems.push((rule, why.clone()));
            }
        }
    }
    for rule in filtered {
        applied.in_force.insert(rule);
    }
    applied
}

fn leave_network() -> Result<(), String> {
    let (uid, gid) = (rustix::process::getuid(), rustix::process::getgid());
    // SAFETY: the process has one thread (the caller's contract), so no
    // other thread sees its namespaces or credentials change under it.
    let with_user =
        unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWUSER | UnshareFlags::NEWNET) };
    match with_user {
        Ok(()) => {
            let map = |file: &str, text: String| {
                std::fs::write(format!("/proc/self/{file}"), text)
                    .map_err(|e| format!("could not write /proc/self/{file}: {e}"))
            };
            map("setgroups", "deny".to_owned())?;
            map("uid_map", format!("{0} {0} 1", uid.as_raw()))?;
            map("gid_map", format!("{0} {0} 1", gid.as_raw()))?;
        }
        Err(user_error) => {
            // SAFETY: as above.
            unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNET) }.map_err(|_| {
                format!("could not unshare a user and network namespace: {user_error}")
            })?;
        }
    }
    // A new user namespace gave us every capability in it; root keeps
    // its own without one. Keep none.
    drop_capabilities().map_err(|e| format!("could not drop capabilities: {e}"))
}

/// Empties every capability set of this thread: bounding (while it still
/// has `CAP_SETPCAP` to do it), ambient, inheritable, permitted, effective.
fn drop_capabilities() -> rustix::io::Result<()> {
    for capability in 0..64 {
        let one = CapabilitySet::from_bits_retain(1 << capability);
        match rustix::thread::remove_capability_from_bounding_set(one) {
            Ok(()) => {}
            // Past the last capability this kernel knows.
            Err(rustix::io::Errno::INVAL) => break,
            Err(e) => return Err(e),
        }
    }
    rustix::thread::clear_ambient_capability_set()?;
    let none = CapabilitySets {
        effective: CapabilitySet::empty(),
        permitted: CapabilitySet::empty(),
        inheritable: CapabilitySet::empty(),
    };
    rustix::thread::set_capabilities(None, none)
}
