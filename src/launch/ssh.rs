//! Workers on other machines, through `ssh`.
//!
//! Before the first worker starts, the running binary is shipped to the
//! host once per content hash, into `~/.cache/buckshot/<hash>`, unless it
//! is there already or the user named a program installed there
//! ([`Ssh::remote_program`]). Each worker is then one `ssh -T` session
//! running `exec env [NAME=VALUE...] __BUCKSHOT_WORKER=... PROGRAM`: the
//! worker variable and those the pool sets in workers' environment travel
//! on the command line (ssh passes almost no environment), and every word
//! is quoted for the remote shell.
//!
//! Killing the local `ssh` does not end a busy remote process (measured:
//! still running seconds later), so a worker the pool gives up on is also
//! killed on the host, by the pid it announced, with its process group
//! (the remote shell `exec`s it as a session leader). A worker whose
//! session is lost ends by itself: its watchdog sees its request stream
//! close.
//!
//! Nothing waits on a host for ever. Unless the user set them (with
//! [`Ssh::ssh_option`], or in an ssh configuration file, which `ssh -G`
//! reads for us), `ConnectTimeout` bounds the wait for a host that does
//! not answer (it covers the banner too: a host that accepts a connection
//! and never speaks), and `ServerAliveInterval` with
//! `ServerAliveCountMax` ends a session whose connection went silent, so
//! that its worker's input fails with `WorkerDied` instead of hanging. The
//! commands run besides the workers (the check for a cached binary, the
//! upload, remote kills) have deadlines of their own and end with the
//! pool ([`super::helpers`]).

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::helpers::{Helpers, run_bounded};
use super::{Launch, Launcher, Reported, kill_group};
use crate::flow::{HELPER_BOUND, HELPERS_GRACE, SHIP_BYTES_PER_SEC};
use crate::handoff::Handoff;

/// Workers on a host reached with `ssh`: made by [`Launcher::ssh`], set
/// up with its builder methods, and given to
/// [`PoolBuilder::workers`](crate::PoolBuilder::workers).
///
/// ```no_run
/// use buckshot::{Launcher, Pool};
///
/// # fn main() -> Result<(), buckshot::Error> {
/// let pool = Pool::builder()
///     .workers(Launcher::local(), 2)
///     .workers(
///         Launcher::ssh("me@node1")
///             .port(2222)
///             .identity_file("/home/me/.ssh/id_ed25519")
///             .ssh_option("ConnectTimeout", "5"),
///         8,
///     )
///     .build()?;
/// # Ok(())
/// # }
/// ```
///
/// The host must run the same architecture and C library as this machine
/// (the binary is copied as it is). Host keys are checked as `ssh` checks
/// them; `BatchMode=yes` is set, so a host that would ask for a password
/// fails at start-up instead.
///
/// Unless set with [`ssh_option`](Ssh::ssh_option) or in an ssh
/// configuration file, these are set: `ConnectTimeout=10` (a host that
/// does not answer within 10 s fails to start), `ServerAliveInterval=5`
/// and `ServerAliveCountMax=3` (a connection silent for about 15 s is
/// dropped: its worker's input fails with
/// [`Error::WorkerDied`](crate::Error::WorkerDied)).
#[derive(Debug, Clone)]
pub struct Ssh {
    destination: String,
    port: Option<u16>,
    identity: Option<PathBuf>,
    options: Vec<(String, String)>,
    config: Option<PathBuf>,
    remote_program: Option<String>,
}

impl Launcher {
    /// Workers on the host `destination` (`host` or `user@host`), through
    /// the `ssh` client of this machine. See [`Ssh`] for its settings.
    pub fn ssh(destination: impl Into<String>) -> Ssh {
        Ssh {
            destination: destination.into(),
            port: None,
            identity: None,
            options: Vec::new(),
            config: None,
            remote_program: None,
        }
    }
}

impl Ssh {
    /// The port sshd listens on (`-p`).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// The private key to log in with (`-i`).
    pub fn identity_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.identity = Some(path.into());
        self
    }

    /// Any `ssh` option, passed as `-o KEY=VALUE`.
    pub fn ssh_option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.push((key.into(), value.into()));
        self
    }

    /// The `ssh` configuration file to read (`-F`).
    pub fn ssh_config(mut self, path: impl Into<PathBuf>) -> Self {
        self.config = Some(path.into());
        self
    }

    /// Runs the program at `path` on the host instead of shipping this one
    /// (a shared file system, or a copy installed there). It must be the
    /// same build: the handshake refuses another protocol or task table,
    /// but cannot tell apart two builds with the same tasks. The host is
    /// then first contacted by the workers, not by `build()`.
    pub fn remote_program(mut self, path: impl Into<String>) -> Self {
        self.remote_program = Some(path.into());
        self
    }

    /// `ssh`'s arguments: every option, the user's before `defaults`, up
    /// to and including the destination. `batch_mode`: `yes`, except to
    /// ask `ssh -G` for the options in force (it sets
    /// `ServerAliveInterval=300` in batch mode unless configured, which
    /// would hide whether it was).
    fn args(&self, batch_mode: &str, defaults: &[(&str, &str)]) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        if let Some(config) = &self.config {
            args.extend(["-F".into(), config.into()]);
        }
        args.extend([
            "-T".into(),
            "-o".into(),
            format!("BatchMode={batch_mode}").into(),
        ]);
        if let Some(port) = self.port {
            args.extend(["-p".into(), port.to_string().into()]);
        }
        if let Some(identity) = &self.identity {
            args.extend(["-i".into(), identity.into()]);
        }
        let options = self.options.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        for (key, value) in options.chain(defaults.iter().copied()) {
            args.extend(["-o".into(), format!("{key}={value}").into()]);
        }
        // The destination can never be read as an option.
        args.extend(["--".into(), (&self.destination).into()]);
        args
    }

    /// Whether the user set option `key` with [`Ssh::ssh_option`].
    fn sets(&self, key: &str) -> bool {
        self.options
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(key))
    }
}

/// The options the pool sets unless the user did: each with its value,
/// and ssh's own default as `ssh -G` prints it (a value the user did not
/// change).
const DEFAULTS: [(&str, &str, &str); 3] = [
    ("ConnectTimeout", "10", "none"),
    ("ServerAliveInterval", "5", "0"),
    ("ServerAliveCountMax", "3", "3"),
];

impl From<Ssh> for Launcher {
    fn from(ssh: Ssh) -> Launcher {
        Launcher::from_launch(SshLaunch::new(ssh))
    }
}

/// One pool's ssh launcher.
#[derive(Debug)]
struct SshLaunch {
    ssh: Ssh,
    /// The program to run on the host, as a remote shell word; set by
    /// `prepare`.
    program: OnceLock<String>,
    /// Which of [`DEFAULTS`] apply to this host; set by `prepare`.
    defaults: OnceLock<Vec<(&'static str, &'static str)>>,
    /// The remote kills under way.
    helpers: Helpers,
}

/// The cache directory on a host, as a remote shell word.
const REMOTE_CACHE: &str = "\"$HOME\"/.cache/buckshot";

impl SshLaunch {
    fn new(ssh: Ssh) -> SshLaunch {
        SshLaunch {
            ssh,
            program: OnceLock::new(),
            defaults: OnceLock::new(),
            helpers: Helpers::default(),
        }
    }

    /// `ssh` with every option, up to and including the destination.
    fn ssh(&self) -> Command {
        let defaults = self.defaults.get().map_or(&[][..], Vec::as_slice);
        let mut command = Command::new("ssh");
        command.args(self.ssh.args("yes", defaults));
        command
    }

    /// Which of [`DEFAULTS`] apply: those the user set neither with
    /// `ssh_option` nor in a configuration file (where `ssh -G`, which
    /// prints the options in force for the host, shows ssh's own value).
    /// If `ssh -G` fails, all that the user did not set with `ssh_option`.
    fn defaults(&self) -> Vec<(&'static str, &'static str)> {
        let mut resolve = Command::new("ssh");
        resolve
            .arg("-G")
            .args(self.ssh.args("no", &[]))
            .stdin(Stdio::null());
        let in_force = run_bounded(&mut resolve, HELPER_BOUND)
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
            .unwrap_or_default();
        let value_of = |key: &str| {
            in_force.lines().find_map(|line| {
                let (k, v) = line.split_once(' ')?;
                k.eq_ignore_ascii_case(key).then(|| v.trim())
            })
        };
        DEFAULTS
            .iter()
            .filter(|(key, _, _)| !self.ssh.sets(key))
            .filter(|(key, _, ssh_default)| value_of(key).is_none_or(|v| v == *ssh_default))
            .map(|&(key, ours, _)| (key, ours))
            .collect()
    }

    /// Runs `script` on the host with `stdin`, for at most `bound`; its
    /// output, or why not.
    fn run(
        &self,
        script: &str,
        stdin: Stdio,
        bound: Duration,
    ) -> Result<std::process::Output, String> {
        let mut command = self.ssh();
        command.arg(script).stdin(stdin);
        run_bounded(&mut command, bound).map_err(|e| match e.kind() {
            std::io::ErrorKind::TimedOut => format!("ssh {}: {e}", self.ssh.destination),
            _ => format!("ssh {}: could not run ssh: {e}", self.ssh.destination),
        })
    }

    fn failure(&self, output: &std::process::Output) -> String {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let line = stderr.lines().rev().find(|l| !l.trim().is_empty());
        format!(
            "ssh {}: {}{}",
            self.ssh.destination,
            output.status,
            line.map_or_else(String::new, |l| format!(": {}", l.trim()))
        )
    }

    /// Ships this binary to the host unless a copy of the same content is
    /// there; returns the remote program.
    fn ship(&self) -> Result<String, String> {
        let (hash, size) = binary_hash().map_err(|e| format!("could not read this binary: {e}"))?;
        let program = format!("{REMOTE_CACHE}/{hash}");
        let present = self.run(
            &sh(&format!("test -x {program}")),
            Stdio::null(),
            HELPER_BOUND,
        )?;
        match present.status.code() {
            Some(0) => return Ok(program),
            Some(1) => {}
            _ => return Err(self.failure(&present)),
        }
        // The bytes hashed: on Linux `/proc/self/exe` is the running binary
        // even if the file at its path was rebuilt since.
        let binary = std::fs::File::open(crate::sys::exe_path())
            .map_err(|e| format!("could not read this binary: {e}"))?;
        // Written under a temporary name, checked (a cut connection ends
        // `cat` as well as a finished upload), then renamed: a pool starting
        // at the same time never runs half a binary.
        let script = format!(
            "mkdir -p {REMOTE_CACHE} && t={program}.tmp.$$ && cat > \"$t\" \
             && [ \"$(wc -c < \"$t\")\" -eq {size} ] \
             && {{ ! command -v sha256sum >/dev/null || [ \"$(sha256sum < \"$t\" | cut -c1-32)\" = {hash} ]; }} \
             && chmod 755 \"$t\" && mv -f \"$t\" {program} || {{ rm -f \"$t\"; exit 1; }}"
        );
        let upload = HELPER_BOUND + Duration::from_secs(size / SHIP_BYTES_PER_SEC);
        let shipped = self.run(&sh(&script), Stdio::from(binary), upload)?;
        if !shipped.status.success() {
            return Err(self.failure(&shipped));
        }
        tracing::debug!(host = %self.ssh.destination, %hash, "binary shipped");
        Ok(program)
    }
}

/// The hash of the running binary's content, and its size: read once.
fn binary_hash() -> std::io::Result<(String, u64)> {
    static HASH: OnceLock<Result<(String, u64), String>> = OnceLock::new();
    HASH.get_or_init(|| {
        let mut file = std::fs::File::open(crate::sys::exe_path()).map_err(|e| e.to_string())?;
        let mut size = 0u64;
        let mut hasher = Sha256::new();
        let mut buf = vec![0; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        let digest = hasher.finalize();
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        Ok((hex, size))
    })
    .clone()
    .map_err(std::io::Error::other)
}

/// A command line that runs `script` with `sh`, whatever the login shell
/// of the remote user (csh, fish).
fn sh(script: &str) -> String {
    format!("sh -c {}", shell_quote(script))
}

/// `word`, quoted for a POSIX shell: nothing in it is interpreted.
pub(crate) fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// [`shell_quote`] for any bytes (a variable's value need not be UTF-8).
fn shell_quote_os(word: &OsStr) -> OsString {
    let mut quoted = Vec::with_capacity(word.len() + 2);
    quoted.push(b'\'');
    for &byte in word.as_bytes() {
        match byte {
            b'\'' => quoted.extend_from_slice(b"'\\''"),
            byte => quoted.push(byte),
        }
    }
    quoted.push(b'\'');
    OsString::from_vec(quoted)
}

impl Launch for SshLaunch {
    fn prepare(&self) -> Result<(), String> {
        let _ = self.defaults.set(self.defaults());
        let program = match &self.ssh.remote_program {
            Some(path) => shell_quote(path),
            None => self.ship()?,
        };
        let _ = self.program.set(program);
        Ok(())
    }

    fn command(&self, handoff: &Handoff<'_>) -> Command {
        let program = self
            .program
            .get()
            .cloned()
            .unwrap_or_else(|| shell_quote(&OsString::from("/nonexistent").to_string_lossy()));
        let mut script = OsString::from("exec env");
        for word in handoff.assignments() {
            script.push(" ");
            script.push(shell_quote_os(&word));
        }
        script.push(" ");
        script.push(program);
        let mut command = self.ssh();
        command.arg(script).process_group(0);
        command
    }

    fn worker_is_child(&self) -> bool {
        false
    }

    fn kill_rest(&self, local_pid: u32, reported: Option<&Reported>) {
        kill_group(local_pid);
        // The remote worker, and what its task started: killed on the host,
        // from a thread of its own, so that the pool never waits on the
        // network. Its group only (the remote shell made it a group
        // leader): a plain pid could be reused by then. `kill -s KILL --`
        // works in dash too.
        if let Some(pid) = reported.map(|r| r.pid).filter(|&pid| pid > 1) {
            let mut kill = self.ssh();
            kill.arg(sh(&format!("kill -s KILL -- -{pid} 2>/dev/null; true")));
            self.helpers
                .run("buckshot-ssh-kill", vec![kill], HELPER_BOUND);
        }
    }

    fn for_pool(&self) -> Option<Arc<dyn Launch>> {
        Some(Arc::new(SshLaunch::new(self.ssh.clone())))
    }

    fn finish(&self) {
        self.helpers.finish(HELPERS_GRACE);
    }

    fn describe(&self) -> Option<String> {
        Some(format!("ssh {}", self.ssh.destination))
    }

    fn max_starting(&self) -> usize {
        // Under sshd's default MaxStartups (10 unauthenticated).
        8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_words_are_taken_literally_by_a_shell() {
        for word in [
            "plain",
            "it's",
            "$(rm -rf /)",
            "a b\nc",
            "'",
            "\\'\"",
            "`id`;",
        ] {
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", shell_quote(word)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), word);
            assert_eq!(
                shell_quote_os(OsStr::new(word)),
                OsString::from(shell_quote(word))
            );
        }
        // Bytes that are not UTF-8 come through as they are.
        let word = OsStr::from_bytes(b"A=\xff'\x80 b");
        let mut script = OsString::from("printf %s ");
        script.push(shell_quote_os(word));
        let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
        assert_eq!(out.stdout, word.as_bytes());
    }

    #[test]
    fn defaults_apply_where_neither_an_option_nor_the_configuration_sets_them() {
        let config =
            std::env::temp_dir().join(format!("buckshot-ssh-config-{}", std::process::id()));
        std::fs::write(&config, "Host node1\n  ConnectTimeout 3\n").unwrap();
        let defaults = |ssh: Ssh| SshLaunch::new(ssh.ssh_config(&config)).defaults();
        assert_eq!(
            defaults(Launcher::ssh("me@elsewhere")),
            [
                ("ConnectTimeout", "10"),
                ("ServerAliveInterval", "5"),
                ("ServerAliveCountMax", "3")
            ]
        );
        // The configuration's value holds for its host; an option holds
        // whatever its case.
        assert_eq!(
            defaults(Launcher::ssh("me@node1").ssh_option("serveraliveinterval", "60")),
            [("ServerAliveCountMax", "3")]
        );
        // A value other than ssh's own is the user's; the 300 s that ssh
        // gives ServerAliveInterval in batch mode is not.
        assert_eq!(
            defaults(
                Launcher::ssh("me@elsewhere")
                    .ssh_option("BatchMode", "yes")
                    .ssh_option("ServerAliveCountMax", "7")
            ),
            [("ConnectTimeout", "10"), ("ServerAliveInterval", "5")]
        );
        let _ = std::fs::remove_file(&config);
    }

    #[test]
    fn options_come_before_the_destination_and_cannot_be_injected() {
        let args: Vec<String> = Launcher::ssh("-oProxyCommand=evil")
            .port(2222)
            .ssh_option("ConnectTimeout", "5")
            .args("yes", &[("ServerAliveInterval", "5")])
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let dashes = args.iter().position(|a| a == "--").unwrap();
        assert_eq!(args[dashes + 1..], ["-oProxyCommand=evil"]);
        let ours = args.iter().position(|a| a == "ServerAliveInterval=5");
        let users = args.iter().position(|a| a == "ConnectTimeout=5");
        // ssh takes the first value of an option: the user's come first.
        assert!(users < ours && ours < Some(dashes), "{args:?}");
    }
}
