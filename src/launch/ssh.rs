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
//! One connection serves them all: a login (TCP, key exchange and
//! authentication) took 0.5-0.7 s on a loaded 2-core machine, a session
//! through an open connection 0.3 s, most of it the remote shell's start.
//! So `build()` opens one `ssh` master per pool and host ([`Master`]),
//! whose own session checks for the cached binary; the upload, every
//! worker and the remote kills are sessions of its (`ControlPath`). Its
//! control socket lives in a private directory of ours (mode 0700, under
//! `$XDG_RUNTIME_DIR` or `/tmp`: a socket's path must be short), removed
//! with it. It ends with the pool: killed when the pool shuts down, and if
//! the pool's process dies first, its session reads the end of its input
//! (a pipe only we hold) and ends, and the master exits once the workers'
//! sessions have ended too (each worker ends with its request stream);
//! its directory is then removed by the next pool of this user that opens
//! one. A host allows 10 sessions per connection by default (sshd's
//! `MaxSessions`; the master's own is one of them): `ssh` opens a
//! connection of its own for a worker past that, and says so on its
//! stderr. If the user set `ControlMaster`, `ControlPath` or
//! `ControlPersist` (with [`Ssh::ssh_option`] or in a configuration file),
//! their multiplexing is used as they set it, and the pool opens no master
//! of its own.
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
//! commands run besides the workers (the master until it is ready, the
//! check for a cached binary, the upload, remote kills) have deadlines of
//! their own and end with the pool ([`super::helpers`]).

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;

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
/// A pool logs in to the host once: its workers, the upload of the
/// binary and the remote kills are sessions of one `ssh` master
/// connection, which ends with the pool (unless `ControlMaster`,
/// `ControlPath` or `ControlPersist` is set, with
/// [`ssh_option`](Ssh::ssh_option) or in an ssh configuration file: then
/// `ssh` multiplexes as they say). Past sshd's `MaxSessions` (10 by
/// default, the master's own session among them), a worker logs in on
/// its own.
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
    /// but cannot tell apart two builds with the same tasks.
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

/// The options that make the user's own multiplexing, with ssh's default
/// as `ssh -G` prints it (`ControlPath` is not printed unless set).
const MULTIPLEXING: [(&str, Option<&str>); 3] = [
    ("ControlMaster", Some("false")),
    ("ControlPath", None),
    ("ControlPersist", Some("no")),
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
    /// The connection the pool's `ssh` commands share, unless the user
    /// multiplexes their own way; set by `prepare`, ended with the pool.
    master: OnceLock<Master>,
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
            master: OnceLock::new(),
            helpers: Helpers::default(),
        }
    }

    /// `ssh` with every option, up to and including the destination:
    /// through the master, if there is one.
    fn ssh(&self) -> Command {
        let mut options = self.defaults.get().cloned().unwrap_or_default();
        let path;
        if let Some(master) = self.master.get() {
            path = master.socket().to_string_lossy().into_owned();
            options.extend([("ControlMaster", "no"), ("ControlPath", path.as_str())]);
        }
        let mut command = Command::new("ssh");
        command.args(self.ssh.args("yes", &options));
        command
    }

    /// The options in force for the host, as `ssh -G` prints them; empty
    /// if it fails.
    fn in_force(&self) -> InForce {
        let mut resolve = Command::new("ssh");
        resolve
            .arg("-G")
            .args(self.ssh.args("no", &[]))
            .stdin(Stdio::null());
        InForce(
            run_bounded(&mut resolve, HELPER_BOUND)
                .ok()
                .filter(|output| output.status.success())
                .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
                .unwrap_or_default(),
        )
    }

    /// Which of [`DEFAULTS`] apply: those the user set neither with
    /// `ssh_option` nor in a configuration file (where `ssh -G`, which
    /// prints the options in force for the host, shows ssh's own value).
    /// If `ssh -G` fails, all that the user did not set with `ssh_option`.
    #[cfg(test)]
    fn defaults(&self) -> Vec<(&'static str, &'static str)> {
        self.defaults_in(&self.in_force())
    }

    fn defaults_in(&self, in_force: &InForce) -> Vec<(&'static str, &'static str)> {
        DEFAULTS
            .iter()
            .filter(|(key, _, _)| !self.ssh.sets(key))
            .filter(|(key, _, ssh_default)| {
                in_force.value_of(key).is_none_or(|v| v == *ssh_default)
            })
            .map(|&(key, ours, _)| (key, ours))
            .collect()
    }

    /// Whether the user multiplexes connections their own way: set one of
    /// [`MULTIPLEXING`] with `ssh_option` or in a configuration file.
    fn users_multiplexing(&self, in_force: &InForce) -> bool {
        MULTIPLEXING.iter().any(|&(key, ssh_default)| {
            self.ssh.sets(key)
                || in_force
                    .value_of(key)
                    .is_some_and(|v| Some(v) != ssh_default)
        })
    }

    /// Opens the master connection, whose session runs `script` (which
    /// prints one line, then waits for the end of its input); the master
    /// and that line, or why not. Bounded by [`HELPER_BOUND`].
    fn open_master(&self, script: &str) -> Result<(Master, String), String> {
        let dir = private_dir()
            .map_err(|e| format!("could not create a directory for ssh's control socket: {e}"))?;
        let socket = dir.join(SOCKET);
        let socket = socket.to_string_lossy();
        let log = std::fs::File::create(dir.join(MASTER_LOG)).map_err(|e| {
            let _ = std::fs::remove_dir_all(&dir);
            format!("could not create ssh's log: {e}")
        })?;
        let mut options = self.defaults.get().cloned().unwrap_or_default();
        options.extend([
            ("ControlMaster", "yes"),
            ("ControlPath", &*socket),
            ("ControlPersist", "no"),
        ]);
        let mut command = Command::new("ssh");
        command.args(self.ssh.args("yes", &options)).arg(script);
        // Its program is not ours: it would keep the descriptors of this
        // process open as long as it runs.
        let mut command = crate::inherit::through_this_binary(command).map_err(|e| {
            let _ = std::fs::remove_dir_all(&dir);
            format!("ssh {}: could not run ssh: {e}", self.ssh.destination)
        })?;
        let spawned = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .process_group(0)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(format!(
                    "ssh {}: could not run ssh: {e}",
                    self.ssh.destination
                ));
            }
        };
        // Kept open with it: a line the login scripts print first must not
        // make what follows fail with a broken pipe.
        let mut stdout = child.stdout.take().expect("piped");
        let line = first_line(&mut stdout, Instant::now() + HELPER_BOUND);
        child.stdout = Some(stdout);
        let master = Master {
            dir,
            child: Mutex::new(Some(child)),
        };
        match line {
            Ok(Some(line)) => Ok((master, line)),
            Ok(None) => {
                let status = master.stop();
                let log = std::fs::read(master.dir.join(MASTER_LOG)).unwrap_or_default();
                Err(self.failure(&std::process::Output {
                    status: status.unwrap_or_default(),
                    stdout: Vec::new(),
                    stderr: log,
                }))
            }
            Err(e) => Err(format!("ssh {}: {e}", self.ssh.destination)),
        }
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
    /// there; returns the remote program. `present`: whether it is, if
    /// known (the master's session checked).
    fn ship(&self, present: Option<bool>) -> Result<String, String> {
        let (hash, size) = binary_hash().map_err(|e| format!("could not read this binary: {e}"))?;
        let program = format!("{REMOTE_CACHE}/{hash}");
        let present = match present {
            Some(present) => present,
            None => {
                let present = self.run(
                    &sh(&format!("test -x {program}")),
                    Stdio::null(),
                    HELPER_BOUND,
                )?;
                match present.status.code() {
                    Some(0) => true,
                    Some(1) => false,
                    _ => return Err(self.failure(&present)),
                }
            }
        };
        if present {
            return Ok(program);
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

/// The options in force for a host, as `ssh -G` prints them: one
/// `key value` a line, keys in lower case.
struct InForce(String);

impl InForce {
    fn value_of(&self, key: &str) -> Option<&str> {
        self.0.lines().find_map(|line| {
            let (k, v) = line.split_once(' ')?;
            k.eq_ignore_ascii_case(key).then(|| v.trim())
        })
    }
}

/// The control socket's name in the master's directory.
const SOCKET: &str = "s";
/// Where the master writes its stderr, in its directory: read for the
/// reason it failed, if it does.
const MASTER_LOG: &str = "log";
/// What the master's session prints when the cached binary is there, or
/// not, or when nothing was checked.
const PRESENT: &str = "present";
const ABSENT: &str = "absent";
const READY: &str = "ready";

/// One pool's connection to its host, shared by its `ssh` commands: an
/// `ssh` master, our child, leading its own process group, and the
/// private directory of its control socket. See the module's note.
#[derive(Debug)]
struct Master {
    dir: PathBuf,
    /// Until ended. Holds its stdin: its session ends when that closes.
    child: Mutex<Option<Child>>,
}

impl Master {
    fn socket(&self) -> PathBuf {
        self.dir.join(SOCKET)
    }

    /// Kills it (a connection has nothing to finish once the pool's
    /// workers are killed) and reaps it; how it exited, if it still ran.
    fn stop(&self) -> Option<std::process::ExitStatus> {
        let child = self
            .child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        child.and_then(|mut child| {
            // Not reaped yet: the group's id is still ours.
            super::kill_group(child.id());
            child.wait().ok()
        })
    }

    /// Stops it and removes its directory.
    fn end(&self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Reaps it if it has exited (its connection failed): sessions
    /// started since connect on their own.
    fn reap_if_exited(&self) {
        let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        if child
            .as_mut()
            .is_some_and(|c| !matches!(c.try_wait(), Ok(None)))
        {
            *child = None;
        }
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        self.end();
    }
}

/// A new directory that only this user can enter, with a short path (a
/// socket's path must fit in 108 bytes): under `$XDG_RUNTIME_DIR` if that
/// is set and short, else under `/tmp`.
fn private_dir() -> std::io::Result<PathBuf> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute() && dir.as_os_str().len() <= 64 && dir.is_dir())
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    sweep(&base);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("buckshot-ssh-{}-{n}", std::process::id()));
        // Created by us, 0700 (a umask only takes bits away): nobody else
        // can reach the socket in it. A name taken (a stale directory of
        // a process that had this pid) is skipped.
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Removes the directories that processes of this user left in `base`
/// when they were killed (their masters have exited since: see the
/// module's note): those named for a pid that no process has.
fn sweep(base: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let uid = rustix::process::getuid().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix("buckshot-ssh-"))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<i32>().ok())
        else {
            continue;
        };
        let gone = rustix::process::Pid::from_raw(pid)
            .is_some_and(|pid| rustix::process::test_kill_process(pid) == Err(Errno::SRCH));
        let ours = entry.metadata().is_ok_and(|m| m.is_dir() && m.uid() == uid);
        if gone && ours {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The first line `stdout` gives before `deadline`, without its newline;
/// `None` if it ends first. Fails with [`std::io::ErrorKind::TimedOut`]
/// at the deadline.
fn first_line(stdout: &mut ChildStdout, deadline: Instant) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {HELPER_BOUND:?}"),
            ));
        }
        let mut fds = [PollFd::new(&*stdout, PollFlags::IN)];
        let timeout = Timespec::try_from(left).expect("a bound that fits");
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(0) | Err(Errno::INTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        let n = match stdout.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(None);
        }
        line.extend_from_slice(&buf[..n]);
        if let Some(end) = line.iter().position(|&b| b == b'\n') {
            line.truncate(end);
            return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
        }
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
        let in_force = self.in_force();
        let _ = self.defaults.set(self.defaults_in(&in_force));
        let mut present = None;
        if !self.users_multiplexing(&in_force) {
            // The master's own session checks for the cached binary, then
            // holds the connection until its input ends.
            let check = match &self.ssh.remote_program {
                Some(_) => format!("echo {READY}"),
                None => {
                    let (hash, _) =
                        binary_hash().map_err(|e| format!("could not read this binary: {e}"))?;
                    format!(
                        "if test -x {REMOTE_CACHE}/{hash}; then echo {PRESENT}; else echo {ABSENT}; fi"
                    )
                }
            };
            let (master, line) = self.open_master(&sh(&format!("{check}; exec cat >/dev/null")))?;
            present = match line.as_str() {
                PRESENT => Some(true),
                ABSENT => Some(false),
                // Nothing checked, or a login script that printed a line
                // first: then `ship` asks again.
                _ => None,
            };
            let _ = self.master.set(master);
        }
        let program = match &self.ssh.remote_program {
            Some(path) => shell_quote(path),
            None => self.ship(present)?,
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
        if let Some(master) = self.master.get() {
            master.reap_if_exited();
        }
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
        // The remote kills have gone through it, or been killed.
        if let Some(master) = self.master.get() {
            master.end();
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
    fn the_users_own_multiplexing_is_left_as_they_set_it() {
        let config =
            std::env::temp_dir().join(format!("buckshot-ssh-mux-config-{}", std::process::id()));
        std::fs::write(&config, "Host node1\n  ControlMaster auto\n").unwrap();
        let theirs = |ssh: Ssh| {
            let launch = SshLaunch::new(ssh.ssh_config(&config));
            launch.users_multiplexing(&launch.in_force())
        };
        assert!(!theirs(Launcher::ssh("me@elsewhere")));
        assert!(theirs(Launcher::ssh("me@node1")));
        for key in ["ControlPath", "controlmaster", "ControlPersist"] {
            assert!(
                theirs(Launcher::ssh("me@elsewhere").ssh_option(key, "no")),
                "{key}"
            );
        }
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
