//! [`Sandbox`]: what a worker may not do, for tasks fed untrusted inputs.
//!
//! Each rule is a kernel feature that a worker applies to itself in the
//! hook before `main`, while it is still single-threaded, before its
//! handshake: the pool's spawn path stays as it is, and the handshake says
//! which rules are in force ([`apply`]). A pool refuses a worker whose
//! sandbox is short of what it asked.
//!
//! Whether the kernel and the environment allow each rule is found out
//! once, when the pool is built, by a copy of the program that applies the
//! rules and says which came up ([`probe`]): a rule that cannot come up
//! fails [`PoolBuilder::build`](crate::PoolBuilder::build), or with
//! [`Sandbox::best_effort`] is dropped with a warning.
//!
//! The rules travel to the worker in a second hidden variable, next to the
//! worker variable: paths as hex, so that commas and bytes that are not
//! UTF-8 survive. Only local workers take a sandbox ([`launcher`]).

mod applied;
#[cfg(buckshot_native)]
pub(crate) mod apply;
#[cfg(not(buckshot_native))]
#[path = "unsupported.rs"]
pub(crate) mod apply;
pub(crate) mod cpu;
#[cfg(buckshot_native)]
mod landlock;
pub(crate) mod launcher;
pub(crate) mod probe;
#[cfg(buckshot_native)]
mod seccomp;

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::protocol::Hello;

/// Marks a sandboxed worker (or a probe); its value is a [`Sandbox`],
/// encoded.
pub(crate) const SANDBOX_ENV: &str = "__BUCKSHOT_SANDBOX";

/// What a pool's workers may not do: for tasks that read untrusted inputs
/// (a C parser fed files from the internet, a plugin, a converter).
///
/// ```
/// use std::time::Duration;
/// use buckshot::{Pool, Sandbox};
///
/// fn line_count(text: String) -> usize {
///     text.lines().count()
/// }
/// buckshot::register!(line_count);
///
/// # fn main() -> Result<(), buckshot::Error> {
/// let pool = Pool::builder()
///     .processes(2)
///     .sandbox(
///         Sandbox::new()
///             .no_network()
///             .cpu_time(Duration::from_secs(10))
///             .no_subprocesses()
///             .best_effort(),
///     )
///     .build()?;
/// assert_eq!(pool.call(line_count, "a\nb".to_owned())?, 2);
/// # Ok(())
/// # }
/// ```
///
/// Every sandboxed worker also sets `no_new_privs`: nothing it runs gains
/// privileges (setuid programs do not). A task that breaks a rule gets an
/// ordinary OS error it may handle (`EACCES`, `ENETUNREACH`, `EPERM`);
/// only the CPU limit ends its worker. It is not a virtual machine: see
/// the README's "Running untrusted inputs" for what it does not stop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sandbox {
    no_network: bool,
    read_only: Vec<PathBuf>,
    read_write: Vec<PathBuf>,
    cpu_time: Option<Duration>,
    no_subprocesses: bool,
    best_effort: bool,
}

/// One rule of a [`Sandbox`], named after the method that asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SandboxRule {
    /// [`Sandbox::no_network`]: a network namespace of the worker's own.
    NoNetwork,
    /// [`Sandbox::read_only`] and [`Sandbox::read_write`]: Landlock.
    Files,
    /// [`Sandbox::cpu_time`]: `RLIMIT_CPU`.
    CpuTime,
    /// [`Sandbox::no_subprocesses`]: a seccomp filter.
    NoSubprocesses,
}

impl SandboxRule {
    const ALL: [SandboxRule; 4] = [
        SandboxRule::NoNetwork,
        SandboxRule::Files,
        SandboxRule::CpuTime,
        SandboxRule::NoSubprocesses,
    ];

    fn bit(self) -> u8 {
        match self {
            SandboxRule::NoNetwork => 1,
            SandboxRule::Files => 2,
            SandboxRule::CpuTime => 4,
            SandboxRule::NoSubprocesses => 8,
        }
    }
}

impl std::fmt::Display for SandboxRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SandboxRule::NoNetwork => "no_network",
            SandboxRule::Files => "files",
            SandboxRule::CpuTime => "cpu_time",
            SandboxRule::NoSubprocesses => "no_subprocesses",
        })
    }
}

/// A set of rules, as the handshake carries it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Rules(pub(crate) u8);

impl Rules {
    pub(crate) fn contains(self, rule: SandboxRule) -> bool {
        self.0 & rule.bit() != 0
    }

    pub(crate) fn insert(&mut self, rule: SandboxRule) {
        self.0 |= rule.bit();
    }

    pub(crate) fn list(self) -> Vec<SandboxRule> {
        SandboxRule::ALL
            .into_iter()
            .filter(|rule| self.contains(*rule))
            .collect()
    }

    /// The first of `self` that `other` lacks.
    pub(crate) fn first_missing_from(self, other: Rules) -> Option<SandboxRule> {
        self.list().into_iter().find(|rule| !other.contains(*rule))
    }
}

impl Sandbox {
    /// A sandbox with no rules yet.
    pub fn new() -> Sandbox {
        Sandbox::default()
    }

    /// No network: each worker gets a network namespace of its own, with no
    /// interface up, so it has no route anywhere, loopback included. A
    /// task's `connect` fails with `ENETUNREACH`. Named UNIX sockets (a
    /// namespace does not separate them) are out of reach too: Landlock
    /// denies them from Linux 7.1 (`EACCES`); before it, creating a UNIX
    /// socket fails with `EPERM` (stream pairs, which reach nothing, still
    /// work). The worker keeps no capability. Needs user namespaces unless
    /// the program runs as root.
    pub fn no_network(mut self) -> Self {
        self.no_network = true;
        self
    }

    /// Lets tasks read (and run) files under `path`. Once either this or
    /// [`read_write`](Sandbox::read_write) is given, Landlock denies every
    /// other file with `EACCES`, `/dev/null` and `/proc` included (the
    /// worker's own pipes, and its binary for backtraces, keep working),
    /// and a seccomp filter denies changing the mode, owner, times or
    /// extended attributes of any file, these paths included, with
    /// `EPERM` (`std::fs::copy`, which sets the copy's mode, too).
    /// Reading metadata (`stat`) works anywhere. Needs Landlock
    /// ABI 5 (Linux 6.10), unless [`best_effort`](Sandbox::best_effort).
    /// Call it as often as needed. The path must exist when workers start.
    pub fn read_only(mut self, path: impl AsRef<Path>) -> Self {
        self.read_only.push(path.as_ref().to_owned());
        self
    }

    /// Lets tasks read, write, create and remove files under `path`; see
    /// [`read_only`](Sandbox::read_only).
    pub fn read_write(mut self, path: impl AsRef<Path>) -> Self {
        self.read_write.push(path.as_ref().to_owned());
        self
    }

    /// Limit on the CPU time of each task, rounded up to whole seconds (a
    /// batch of tiny inputs counts as one task). A task past it is killed
    /// with its worker by `SIGXCPU` (or `SIGKILL` a second later, if it
    /// ignores that), which yields [`Error::WorkerDied`] naming the limit;
    /// a fresh worker takes its place. No task can lift it: the worker sets
    /// `RLIMIT_CPU` once and a seccomp filter denies changing it. A worker
    /// retires instead of running a task that could get less than the
    /// limit (about every second of CPU time it used), and after a task
    /// that left a thread running. Unlike the pool's timeout, time spent
    /// waiting (sleep, I/O) does not count.
    ///
    /// [`Error::WorkerDied`]: crate::Error::WorkerDied
    pub fn cpu_time(mut self, limit: Duration) -> Self {
        self.cpu_time = Some(limit);
        self
    }

    /// No subprocesses: a seccomp filter makes `execve` and `fork` (any
    /// `clone` that does not make a thread) fail with `EPERM`. Threads
    /// still work. A task cannot start programs or a pool of its own.
    pub fn no_subprocesses(mut self) -> Self {
        self.no_subprocesses = true;
        self
    }

    /// Builds the pool with the rules that the kernel and the environment
    /// allow, and a `tracing` warning for each one that cannot come up,
    /// instead of failing. [`Pool::sandbox_rules`](crate::Pool::sandbox_rules)
    /// says which are in force. The file rules then also come up on a
    /// Landlock that lacks some of their rights (Linux 5.13 to 6.9: by
    /// path, `truncate` works on any file before 6.2), with a warning that
    /// names them.
    pub fn best_effort(mut self) -> Self {
        self.best_effort = true;
        self
    }

    pub(crate) fn is_best_effort(&self) -> bool {
        self.best_effort
    }

    /// The rules asked for.
    pub(crate) fn rules(&self) -> Rules {
        let mut rules = Rules::default();
        if self.no_network {
            rules.insert(SandboxRule::NoNetwork);
        }
        if !self.read_only.is_empty() || !self.read_write.is_empty() {
            rules.insert(SandboxRule::Files);
        }
        if self.cpu_time.is_some() {
            rules.insert(SandboxRule::CpuTime);
        }
        if self.no_subprocesses {
            rules.insert(SandboxRule::NoSubprocesses);
        }
        rules
    }

    /// Only the rules in `keep`.
    pub(crate) fn restricted_to(&self, keep: Rules) -> Sandbox {
        let files = keep.contains(SandboxRule::Files);
        Sandbox {
            no_network: self.no_network && keep.contains(SandboxRule::NoNetwork),
            read_only: if files {
                self.read_only.clone()
            } else {
                Vec::new()
            },
            read_write: if files {
                self.read_write.clone()
            } else {
                Vec::new()
            },
            cpu_time: self
                .cpu_time
                .filter(|_| keep.contains(SandboxRule::CpuTime)),
            no_subprocesses: self.no_subprocesses && keep.contains(SandboxRule::NoSubprocesses),
            best_effort: self.best_effort,
        }
    }

    /// The CPU limit in whole seconds, rounded up, at least one.
    pub(crate) fn cpu_seconds(&self) -> Option<u64> {
        self.cpu_time
            .map(|limit| (limit.as_secs() + u64::from(limit.subsec_nanos() > 0)).max(1))
    }

    /// `rules,cpu_seconds`, then `,b` if best effort, then `,r` or `,w`
    /// and a path in hex for each path.
    pub(crate) fn to_env(&self) -> String {
        let mut text = format!(
            "{},{}",
            self.rules().0,
            self.cpu_seconds().map_or(String::new(), |s| s.to_string())
        );
        if self.best_effort {
            text.push_str(",b");
        }
        for (kind, paths) in [('r', &self.read_only), ('w', &self.read_write)] {
            for path in paths {
                text.push(',');
                text.push(kind);
                for byte in path.as_os_str().as_bytes() {
                    text.push_str(&format!("{byte:02x}"));
                }
            }
        }
        text
    }

    pub(crate) fn from_env(value: &str) -> Option<Sandbox> {
        let mut parts = value.split(',');
        let rules = Rules(parts.next()?.parse().ok()?);
        let cpu_time = match parts.next()? {
            "" => None,
            s => Some(Duration::from_secs(s.parse().ok()?)),
        };
        let mut parts = parts.peekable();
        let mut sandbox = Sandbox {
            no_network: rules.contains(SandboxRule::NoNetwork),
            cpu_time,
            no_subprocesses: rules.contains(SandboxRule::NoSubprocesses),
            best_effort: parts.next_if_eq(&"b").is_some(),
            ..Sandbox::default()
        };
        for part in parts {
            let (kind, hex) = part.split_at_checked(1)?;
            if hex.len() % 2 != 0 {
                return None;
            }
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()?;
            let path = PathBuf::from(OsString::from_vec(bytes));
            match kind {
                "r" => sandbox.read_only.push(path),
                "w" => sandbox.read_write.push(path),
                _ => return None,
            }
        }
        (sandbox.rules() == rules).then_some(sandbox)
    }
}

/// Why a worker's handshake shows less of a sandbox than `required`, if
/// it does: the pool must not run tasks there.
pub(crate) fn shortfall(required: Rules, hello: &Hello) -> Option<String> {
    let rule = required.first_missing_from(Rules(hello.sandbox))?;
    Some(match &hello.sandbox_problem {
        Some(why) => format!("sandbox rule {rule} did not come up in a worker: {why}"),
        None => format!("sandbox rule {rule} is not in force in a worker"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_short_of_a_rule_is_refused() {
        let mut hello = Hello {
            version: crate::protocol::VERSION,
            pid: 1,
            tasks: 0,
            digest: 0,
            step: None,
            sandbox: 0,
            sandbox_problem: None,
            refused: None,
        };
        let required = Sandbox::new().no_network().no_subprocesses().rules();
        assert_eq!(
            shortfall(required, &hello).unwrap(),
            "sandbox rule no_network is not in force in a worker"
        );
        hello.sandbox = SandboxRule::NoNetwork.bit();
        hello.sandbox_problem = Some("seccomp: EINVAL".into());
        assert_eq!(
            shortfall(required, &hello).unwrap(),
            "sandbox rule no_subprocesses did not come up in a worker: seccomp: EINVAL"
        );
        hello.sandbox |= SandboxRule::NoSubprocesses.bit() | SandboxRule::Files.bit();
        assert_eq!(shortfall(required, &hello), None);
        assert_eq!(shortfall(Rules::default(), &hello), None);
    }

    #[test]
    fn env_round_trip_keeps_odd_paths() {
        let odd = PathBuf::from(OsString::from_vec(b"/tmp/a,b\xff c".to_vec()));
        let sandboxes = [
            Sandbox::new(),
            Sandbox::new().no_network().no_subprocesses(),
            Sandbox::new()
                .read_only("/usr")
                .read_write(&odd)
                .read_only(&odd),
            Sandbox::new().cpu_time(Duration::from_secs(3)),
            Sandbox::new().read_write("/tmp").best_effort(),
        ];
        for sandbox in sandboxes {
            assert_eq!(Sandbox::from_env(&sandbox.to_env()), Some(sandbox));
        }
        for bad in [
            "", "1", "x,", "2,", "1,,r2", "1,,rzz", "0,,q00", "4,", "0,,b,b", "2,,w2f,b",
        ] {
            assert_eq!(Sandbox::from_env(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn cpu_time_rounds_up_to_whole_seconds() {
        let seconds = |d| Sandbox::new().cpu_time(d).cpu_seconds();
        assert_eq!(seconds(Duration::from_millis(1)), Some(1));
        assert_eq!(seconds(Duration::ZERO), Some(1));
        assert_eq!(seconds(Duration::from_millis(2001)), Some(3));
        assert_eq!(seconds(Duration::from_secs(2)), Some(2));
    }

    #[test]
    fn rules_and_restriction() {
        let sandbox = Sandbox::new()
            .no_network()
            .read_only("/usr")
            .no_subprocesses();
        let rules = sandbox.rules();
        assert_eq!(
            rules.list(),
            [
                SandboxRule::NoNetwork,
                SandboxRule::Files,
                SandboxRule::NoSubprocesses
            ]
        );
        let mut keep = Rules::default();
        keep.insert(SandboxRule::Files);
        let kept = sandbox.restricted_to(keep);
        assert_eq!(kept.rules(), keep);
        assert_eq!(rules.first_missing_from(keep), Some(SandboxRule::NoNetwork));
        assert_eq!(keep.first_missing_from(rules), None);
    }
}
