//! The worker's side: applying the rules to itself, before `main`, while
//! it is still single-threaded (unsharing a user namespace needs that),
//! and before its handshake.
//!
//! Order, and why:
//! - `no_new_privs` first: seccomp and Landlock need it, and nothing the
//!   worker runs gains privileges after it;
//! - `cpu_time`: no core dumps (the kill is expected), and a `SIGXCPU`
//!   handler that says on stderr which limit ended the worker;
//! - `no_network`: a user namespace (as uid and gid of our own: files the
//!   worker creates keep their owner) with a network namespace, or a bare
//!   network namespace where user namespaces are disabled and we are root.
//!   The capabilities that come with a new user namespace are dropped;
//! - `files`: Landlock. It leaves open fds alone (the pipes, `/dev/null`,
//!   already set up); the binary itself stays readable, for backtraces.
//!   Every sandbox gets a Landlock domain where the kernel has one, which
//!   scopes signals and abstract sockets (and `ptrace`) to the worker;
//! - `no_subprocesses`: seccomp, last, so that nothing above is filtered.
//!   `clone3` keeps its flags in memory, which seccomp cannot read: it
//!   fails with `ENOSYS`, and the C library falls back to `clone`, whose
//!   flags can be checked.
//!
//! Each rule that fails is reported, not fatal here: a probe wants to know
//! all of them, and a worker says them in its handshake.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::OnceLock;
use std::time::Instant;

use landlock::{
    ABI, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
    path_beneath_rules,
};
use rustix::process::{Resource, Rlimit};
use rustix::thread::UnshareFlags;
use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
};

use super::{Rules, Sandbox, SandboxRule};
use crate::flow::CPU_READ_INTERVAL;

/// The file-system rights Landlock handles: all those of the newest ABI
/// we know; an older kernel handles fewer.
const FILES_ABI: ABI = ABI::V5;

/// What came of applying a sandbox.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    pub in_force: Rules,
    /// The rules that did not come up, and why.
    pub problems: Vec<(SandboxRule, String)>,
}

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
    let mut outcome = |rule: SandboxRule, result: Result<(), String>| match result {
        Ok(()) => applied.in_force.insert(rule),
        Err(why) => applied.problems.push((rule, why)),
    };
    if let Some(seconds) = sandbox.cpu_seconds() {
        outcome(SandboxRule::CpuTime, limit_cpu(seconds));
    }
    if sandbox.no_network {
        outcome(SandboxRule::NoNetwork, leave_network());
    }
    let files = asked.contains(SandboxRule::Files);
    let domain = landlock(sandbox, files);
    if files {
        outcome(SandboxRule::Files, domain);
    }
    if sandbox.no_subprocesses {
        outcome(SandboxRule::NoSubprocesses, forbid_subprocesses());
    }
    applied
}

/// What the `SIGXCPU` handler writes: set once, before the handler.
static CPU_MESSAGE: OnceLock<String> = OnceLock::new();

fn limit_cpu(seconds: u64) -> Result<(), String> {
    let no_core = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    rustix::process::setrlimit(Resource::Core, no_core)
        .map_err(|e| format!("could not turn core dumps off: {e}"))?;
    let _ = CPU_MESSAGE.set(format!(
        "buckshot worker: killed by its CPU time limit of {seconds}s (sandbox cpu_time)\n"
    ));
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value;
    // the handler only calls `write` and `raise`, which are
    // async-signal-safe, and reads a string set before it was installed.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = report_cpu_limit as extern "C" fn(libc::c_int) as usize;
        action.sa_flags = libc::SA_RESETHAND;
        if libc::sigaction(libc::SIGXCPU, &action, std::ptr::null_mut()) != 0 {
            return Err(format!(
                "could not handle SIGXCPU: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    CpuBudget::new(seconds)
        .before_task(Instant::now())
        .map_err(|e| format!("could not set RLIMIT_CPU: {e}"))
}

/// Writes which limit ended the worker, then dies of the same signal (the
/// handler was reset to the default, and the signal is blocked until the
/// handler returns), so that the pool sees `SIGXCPU` as the cause.
extern "C" fn report_cpu_limit(signal: libc::c_int) {
    if let Some(message) = CPU_MESSAGE.get() {
        // SAFETY: write(2) is async-signal-safe; the buffer lives for the
        // whole program.
        unsafe { libc::write(2, message.as_ptr().cast(), message.len()) };
    }
    // SAFETY: raise is async-signal-safe.
    unsafe { libc::raise(signal) };
}

/// Gives each task `seconds` of CPU time: `RLIMIT_CPU` counts the worker's
/// whole life, in whole seconds, so its soft limit moves before each
/// message, to `seconds` past the worker's use rounded up. A task gets
/// up to one second more (and see [`CPU_READ_INTERVAL`]).
#[derive(Debug)]
pub(crate) struct CpuBudget {
    seconds: u64,
    /// The use (rounded up) the limit was last set from.
    armed_at: Option<u64>,
    /// When the use was last read.
    read_at: Option<Instant>,
}

impl CpuBudget {
    pub(crate) fn new(seconds: u64) -> CpuBudget {
        CpuBudget {
            seconds,
            armed_at: None,
            read_at: None,
        }
    }

    /// Re-arms the limit for the task starting at `now`: only when the
    /// worker's use reached a new whole second, and the use is read only
    /// every [`CPU_READ_INTERVAL`], for both are system calls that would
    /// cost more than a tiny task.
    pub(crate) fn before_task(&mut self, now: Instant) -> rustix::io::Result<()> {
        if self
            .read_at
            .is_some_and(|at| now.duration_since(at) < CPU_READ_INTERVAL)
        {
            return Ok(());
        }
        self.read_at = Some(now);
        let used = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
        let used = u64::try_from(used.tv_sec).unwrap_or(0) + u64::from(used.tv_nsec > 0);
        if self.armed_at == Some(used) {
            return Ok(());
        }
        let maximum = rustix::process::getrlimit(Resource::Cpu).maximum;
        let soft = used.saturating_add(self.seconds);
        let current = Some(maximum.map_or(soft, |max| soft.min(max)));
        rustix::process::setrlimit(Resource::Cpu, Rlimit { current, maximum })?;
        self.armed_at = Some(used);
        Ok(())
    }
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
            // The new namespace gave us every capability in it: keep none.
            let none = rustix::thread::CapabilitySets {
                effective: rustix::thread::CapabilitySet::empty(),
                permitted: rustix::thread::CapabilitySet::empty(),
                inheritable: rustix::thread::CapabilitySet::empty(),
            };
            rustix::thread::set_capabilities(None, none)
                .map_err(|e| format!("could not drop capabilities: {e}"))
        }
        Err(user_error) => {
            // SAFETY: as above.
            unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNET) }.map_err(|_| {
                format!("could not unshare a user and network namespace: {user_error}")
            })
        }
    }
}

/// A Landlock domain: it keeps the worker from signalling or tracing
/// processes outside it, or reaching their abstract sockets, where the
/// kernel can (a hardening that every sandbox gets where the kernel has
/// it, not a rule); with `files`, it also denies the files outside the
/// allowed paths.
fn landlock(sandbox: &Sandbox, files: bool) -> Result<(), String> {
    if files {
        for path in sandbox.read_only.iter().chain(&sandbox.read_write) {
            if let Err(e) = std::fs::metadata(path) {
                return Err(format!("{}: {e}", path.display()));
            }
        }
    }
    let fail = |e: landlock::RulesetError| format!("Landlock: {e}");
    let mut ruleset = Ruleset::default();
    if files {
        ruleset = ruleset
            .handle_access(AccessFs::from_all(FILES_ABI))
            .map_err(fail)?;
    }
    let status = ruleset
        .scope(Scope::from_all(ABI::V6))
        .map_err(fail)?
        .create()
        .map_err(fail)?;
    let status = if files {
        let binary = std::env::current_exe().ok();
        status
            .add_rules(path_beneath_rules(
                sandbox.read_only.iter().chain(&binary),
                AccessFs::from_read(FILES_ABI),
            ))
            .map_err(fail)?
            .add_rules(path_beneath_rules(
                &sandbox.read_write,
                AccessFs::from_all(FILES_ABI),
            ))
            .map_err(fail)?
    } else {
        status
    };
    let status = status.restrict_self().map_err(fail)?;
    match status.ruleset {
        RulesetStatus::NotEnforced => Err("this kernel does not enforce Landlock".to_owned()),
        _ => Ok(()),
    }
}

fn forbid_subprocesses() -> Result<(), String> {
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| format!("seccomp: {e}"))?;
    let fail = |e: seccompiler::BackendError| format!("seccomp: {e}");
    let mut denied: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    denied.insert(libc::SYS_execve, Vec::new());
    denied.insert(libc::SYS_execveat, Vec::new());
    #[cfg(target_arch = "x86_64")]
    {
        denied.insert(libc::SYS_fork, Vec::new());
        denied.insert(libc::SYS_vfork, Vec::new());
    }
    // A clone that makes no thread makes a process.
    let not_a_thread = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
        0,
    )
    .map_err(fail)?;
    denied.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![not_a_thread]).map_err(fail)?],
    );
    let eperm = SeccompAction::Errno(libc::EPERM as u32);
    let processes = SeccompFilter::new(denied, SeccompAction::Allow, eperm, arch).map_err(fail)?;
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(fail)?;
    for filter in [processes, clone3] {
        let program: seccompiler::BpfProgram = filter.try_into().map_err(fail)?;
        seccompiler::apply_filter(&program).map_err(|e| format!("seccomp: {e}"))?;
    }
    Ok(())
}

/// For a probe: prints what came up, one line of the rules in force, then
/// a line per rule that did not, `bit<TAB>why`.
pub(crate) fn report(applied: &Applied, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "{}", applied.in_force.0)?;
    for (rule, why) in &applied.problems {
        writeln!(out, "{}\t{}", rule.bit(), why.replace('\n', " "))?;
    }
    Ok(())
}
