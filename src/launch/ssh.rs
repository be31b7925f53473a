//! Workers on other machines, through `ssh`.
//!
//! Before the first worker starts, the running binary is shipped to the
//! host once per content hash, into `~/.cache/buckshot/<hash>`, unless it
//! is there already or the user named a program installed there
//! ([`Ssh::remote_program`]). Each worker is then one `ssh -T` session
//! running `exec env __BUCKSHOT_WORKER=... PROGRAM`: the worker variable
//! travels on the command line (ssh passes almost no environment), and
//! every word is quoted for the remote shell.
//!
//! Killing the local `ssh` does not end a busy remote process (measured:
//! still running seconds later), so a worker the pool gives up on is also
//! killed on the host, by the pid it announced, with its process group
//! (the remote shell `exec`s it as a session leader). A worker whose
//! session is lost ends by itself: its watchdog sees its request stream
//! close.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use super::{Launch, Launcher, Reported, kill_group, run_detached};
use crate::handoff::{WORKER_ENV, WorkerConfig};

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

    /// `ssh` with every option, up to and including the destination.
    fn ssh(&self) -> Command {
        let mut command = Command::new("ssh");
        if let Some(config) = &self.config {
            command.arg("-F").arg(config);
        }
        command.args(["-T", "-o", "BatchMode=yes"]);
        if let Some(port) = self.port {
            command.arg("-p").arg(port.to_string());
        }
        if let Some(identity) = &self.identity {
            command.arg("-i").arg(identity);
        }
        for (key, value) in &self.options {
            command.arg("-o").arg(format!("{key}={value}"));
        }
        // The destination can never be read as an option.
        command.arg("--").arg(&self.destination);
        command
    }
}

impl From<Ssh> for Launcher {
    fn from(ssh: Ssh) -> Launcher {
        Launcher::from_launch(SshLaunch {
            ssh,
            program: OnceLock::new(),
        })
    }
}

#[derive(Debug)]
struct SshLaunch {
    ssh: Ssh,
    /// The program to run on the host, as a remote shell word; set by
    /// `prepare`.
    program: OnceLock<String>,
}

/// The cache directory on a host, as a remote shell word.
const REMOTE_CACHE: &str = "\"$HOME\"/.cache/buckshot";

impl SshLaunch {
    /// Runs `script` on the host with `stdin`; its output, or why not.
    fn run(&self, script: &str, stdin: Stdio) -> Result<std::process::Output, String> {
        self.ssh
            .ssh()
            .arg(script)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("ssh {}: could not run ssh: {e}", self.ssh.destination))
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
        let present = self.run(&sh(&format!("test -x {program}")), Stdio::null())?;
        match present.status.code() {
            Some(0) => return Ok(program),
            Some(1) => {}
            _ => return Err(self.failure(&present)),
        }
        // The bytes hashed: `/proc/self/exe` is the running binary even if
        // the file at its path was rebuilt since.
        let binary = std::fs::File::open("/proc/self/exe")
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
        let shipped = self.run(&sh(&script), Stdio::from(binary))?;
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
        let mut file = std::fs::File::open("/proc/self/exe").map_err(|e| e.to_string())?;
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

impl Launch for SshLaunch {
    fn prepare(&self) -> Result<(), String> {
        let program = match &self.ssh.remote_program {
            Some(path) => shell_quote(path),
            None => self.ship()?,
        };
        let _ = self.program.set(program);
        Ok(())
    }

    fn command(&self, config: &WorkerConfig) -> Command {
        let program = self
            .program
            .get()
            .cloned()
            .unwrap_or_else(|| shell_quote(&OsString::from("/nonexistent").to_string_lossy()));
        let script = format!(
            "exec env {} {program}",
            shell_quote(&format!("{WORKER_ENV}={}", config.to_env()))
        );
        let mut command = self.ssh.ssh();
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
            let mut kill = self.ssh.ssh();
            kill.arg(sh(&format!("kill -s KILL -- -{pid} 2>/dev/null; true")));
            run_detached("buckshot-ssh-kill", vec![kill]);
        }
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
        }
    }

    #[test]
    fn options_come_before_the_destination_and_cannot_be_injected() {
        let ssh = Launcher::ssh("-oProxyCommand=evil")
            .port(2222)
            .ssh_option("ConnectTimeout", "5")
            .ssh();
        let args: Vec<String> = ssh
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let dashes = args.iter().position(|a| a == "--").unwrap();
        assert_eq!(args[dashes + 1], "-oProxyCommand=evil");
        assert!(args[..dashes].contains(&"ConnectTimeout=5".to_owned()));
    }
}
