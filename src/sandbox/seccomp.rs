//! The system calls the rules deny, as one seccomp filter installed last,
//! when everything the worker does to itself is done. Each rule adds what
//! it needs; a denied call fails with `EPERM`.
//!
//! - `no_subprocesses`: `execve`, `execveat`, `fork`, `vfork`, and `clone`
//!   without `CLONE_THREAD`. `clone3` keeps its flags in memory, which
//!   seccomp cannot read: it fails with `ENOSYS`, and the C library falls
//!   back to `clone`, whose flags can be checked;
//! - `cpu_time`: setting `RLIMIT_CPU` (`setrlimit`, `prlimit64` with a new
//!   limit), which the worker set once and never moves (see `cpu`);
//! - files: changing the mode, owner, times or extended attributes of any
//!   file, by path or by descriptor, which Landlock has no right for: a
//!   read-only path would let a task `chmod` (as root: set the setuid bit
//!   on) whatever it may read;
//! - `no_network` where Landlock cannot deny named UNIX sockets (before
//!   ABI 9): creating a UNIX socket, and a datagram pair (which can send to
//!   a named socket). Stream pairs stay allowed: they reach nothing.
//!
//! On x86-64, calls of the x32 ABI (numbers with bit 30 set) would name
//! the same calls by other numbers: they fail with `ENOSYS`. A call of
//! another architecture's ABI (`int 0x80`) kills the worker.

use std::collections::BTreeMap;

use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    sock_filter,
};

/// `fchmodat2` (Linux 6.6), `setxattrat` and `removexattrat` (Linux
/// 6.13): numbered alike on every architecture.
const SYS_FCHMODAT2: i64 = 452;
const SYS_SETXATTRAT: i64 = 463;
const SYS_REMOVEXATTRAT: i64 = 466;

/// The calls the rules deny so far.
#[derive(Debug, Default)]
pub(crate) struct Denials {
    /// Each call, and the conditions under which it is denied (any of
    /// them); `None`: always.
    calls: BTreeMap<i64, Option<Vec<SeccompRule>>>,
    /// `clone3` fails with `ENOSYS`.
    no_clone3: bool,
}

fn fail(e: impl std::fmt::Display) -> String {
    format!("seccomp: {e}")
}

/// A condition on argument `arg`, compared as `len`.
fn arg(
    arg: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, len, op, value).map_err(fail)
}

impl Denials {
    fn always(&mut self, call: i64) {
        self.calls.insert(call, None);
    }

    fn when(&mut self, call: i64, conditions: Vec<SeccompCondition>) -> Result<(), String> {
        let rule = SeccompRule::new(conditions).map_err(fail)?;
        // A call denied always stays so.
        if let Some(rules) = self.calls.entry(call).or_insert_with(|| Some(Vec::new())) {
            rules.push(rule);
        }
        Ok(())
    }

    /// `no_subprocesses`.
    pub(crate) fn subprocesses(&mut self) -> Result<(), String> {
        self.always(libc::SYS_execve);
        self.always(libc::SYS_execveat);
        #[cfg(target_arch = "x86_64")]
        {
            self.always(libc::SYS_fork);
            self.always(libc::SYS_vfork);
        }
        // A clone that makes no thread makes a process.
        let not_a_thread = arg(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
            0,
        )?;
        self.when(libc::SYS_clone, vec![not_a_thread])?;
        self.no_clone3 = true;
        Ok(())
    }

    /// `cpu_time`: no change of `RLIMIT_CPU`, reading it still works.
    pub(crate) fn cpu_limit(&mut self) -> Result<(), String> {
        let cpu = libc::RLIMIT_CPU as u64;
        let resource = |at| arg(at, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, cpu);
        self.when(libc::SYS_setrlimit, vec![resource(0)?])?;
        let setting = arg(2, SeccompCmpArgLen::Qword, SeccompCmpOp::Ne, 0)?;
        self.when(libc::SYS_prlimit64, vec![resource(1)?, setting])
    }

    /// The file rules: no change of any file's metadata.
    pub(crate) fn file_metadata(&mut self) {
        let calls = [
            libc::SYS_fchmod,
            libc::SYS_fchmodat,
            SYS_FCHMODAT2,
            libc::SYS_fchown,
            libc::SYS_fchownat,
            libc::SYS_utimensat,
            libc::SYS_setxattr,
            libc::SYS_lsetxattr,
            libc::SYS_fsetxattr,
            SYS_SETXATTRAT,
            libc::SYS_removexattr,
            libc::SYS_lremovexattr,
            libc::SYS_fremovexattr,
            SYS_REMOVEXATTRAT,
        ];
        for call in calls {
            self.always(call);
        }
        #[cfg(target_arch = "x86_64")]
        for call in [
            libc::SYS_chmod,
            libc::SYS_chown,
            libc::SYS_lchown,
            libc::SYS_utime,
            libc::SYS_utimes,
            libc::SYS_futimesat,
        ] {
            self.always(call);
        }
    }

    /// `no_network` without Landlock's `resolve_unix`: no UNIX socket
    /// that could name a path.
    pub(crate) fn unix_sockets(&mut self) -> Result<(), String> {
        let unix = |at| {
            arg(
                at,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                libc::AF_UNIX as u64,
            )
        };
        self.when(libc::SYS_socket, vec![unix(0)?])?;
        // The type may carry SOCK_CLOEXEC and SOCK_NONBLOCK.
        let datagram = arg(
            1,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(0xf),
            libc::SOCK_DGRAM as u64,
        )?;
        self.when(libc::SYS_socketpair, vec![unix(0)?, datagram])
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.calls.is_empty() && !self.no_clone3
    }

    /// Installs the filters on this thread (and the threads it starts).
    pub(crate) fn install(self) -> Result<(), String> {
        let arch = std::env::consts::ARCH.try_into().map_err(fail)?;
        let calls: BTreeMap<i64, Vec<SeccompRule>> = self
            .calls
            .into_iter()
            .map(|(call, rules)| (call, rules.unwrap_or_default()))
            .collect();
        let eperm = SeccompAction::Errno(libc::EPERM as u32);
        let filter = SeccompFilter::new(calls, SeccompAction::Allow, eperm, arch).map_err(fail)?;
        let denied: seccompiler::BpfProgram = filter.try_into().map_err(fail)?;
        let unknown = unknown_calls(self.no_clone3);
        for program in [unknown, denied] {
            seccompiler::apply_filter(&program).map_err(fail)?;
        }
        Ok(())
    }
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

/// The filter of calls that fail with `ENOSYS`: x32 calls on x86-64, and
/// `clone3` if `clone3`. Another architecture's calls kill the process.
fn unknown_calls(clone3: bool) -> Vec<sock_filter> {
    let statement = |code: u32, k: u32| sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let ret = |k: u32| statement(libc::BPF_RET | libc::BPF_K, k);
    let mut checks: Vec<(u32, u32)> = Vec::new();
    if cfg!(target_arch = "x86_64") {
        checks.push((libc::BPF_JGE, 0x4000_0000));
    }
    if clone3 {
        checks.push((libc::BPF_JEQ, libc::SYS_clone3 as u32));
    }
    let mut program = vec![
        statement(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 4),
        sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 1,
            jf: 0,
            k: AUDIT_ARCH,
        },
        ret(libc::SECCOMP_RET_KILL_PROCESS),
        statement(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
    ];
    let n = checks.len();
    for (k, (jump, value)) in checks.into_iter().enumerate() {
        // Past the checks left and the ALLOW, to the ENOSYS.
        let to_enosys = u8::try_from(n - k).expect("a few checks");
        program.push(sock_filter {
            code: (libc::BPF_JMP | jump | libc::BPF_K) as u16,
            jt: to_enosys,
            jf: 0,
            k: value,
        });
    }
    program.push(ret(libc::SECCOMP_RET_ALLOW));
    program.push(ret(libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32));
    program
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_denied_always_stays_denied_always() {
        let mut denials = Denials::default();
        assert!(denials.is_empty());
        denials.file_metadata();
        let before = denials.calls.len();
        assert_eq!(denials.calls[&libc::SYS_fchmod], None);
        denials
            .when(
                libc::SYS_fchmod,
                vec![arg(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, 1).unwrap()],
            )
            .unwrap();
        assert_eq!(denials.calls[&libc::SYS_fchmod], None);
        denials.unix_sockets().unwrap();
        assert_eq!(denials.calls.len(), before + 2);
        assert_eq!(
            denials.calls[&libc::SYS_socketpair].as_ref().unwrap().len(),
            1
        );
        assert!(!denials.no_clone3);
        denials.subprocesses().unwrap();
        assert!(denials.no_clone3);
    }

    #[test]
    fn unknown_calls_jump_to_enosys() {
        for clone3 in [false, true] {
            let program = unknown_calls(clone3);
            let enosys = program.len() - 1;
            assert_eq!(
                program[enosys].k,
                libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32
            );
            assert_eq!(program[enosys - 1].k, libc::SECCOMP_RET_ALLOW);
            let checks = &program[4..enosys - 1];
            assert_eq!(
                checks.len(),
                usize::from(cfg!(target_arch = "x86_64")) + usize::from(clone3)
            );
            for (k, check) in checks.iter().enumerate() {
                assert_eq!(4 + k + 1 + usize::from(check.jt), enosys, "check {k}");
            }
        }
    }
}
