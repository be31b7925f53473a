//! The pool's handle on one worker process: its pipes, its pidfd, and how it
//! is killed and reaped.
//!
//! Reaping goes through a pidfd (Linux 5.3+) polled by the pool's thread,
//! never through a blocking `wait` or a SIGCHLD handler: buckshot lives inside
//! other people's programs, so it installs no process-wide signal handler
//! (`wait-timeout` would), and a worker that dies while idle is reaped as soon
//! as it dies.

use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};
use rustix::fs::OFlags;

use crate::worker::{WORKER_ENV, WorkerConfig};

/// Capacity asked for the request and reply pipes (Linux's default is 64 KiB).
const PIPE_BYTES: usize = 1 << 20;

/// How much of a worker's stderr is kept for error messages.
const STDERR_TAIL: usize = 4096;

/// One live worker process, seen from the pool.
#[derive(Debug)]
pub(crate) struct Process {
    child: Child,
    pidfd: OwnedFd,
    /// Requests. `None` once closed (to retire the worker gracefully).
    stdin: Option<OwnedFd>,
    /// Replies. `None` after end of stream.
    stdout: Option<OwnedFd>,
    /// Forwarded to our stderr; `None` after end of stream.
    stderr: Option<OwnedFd>,
    stderr_tail: Vec<u8>,
    killed: bool,
}

/// The command that starts a worker: this very binary, re-executed, with the
/// worker variable set. `/proc/self/exe` still works if the file on disk was
/// replaced or removed since we started.
fn worker_command(config: &WorkerConfig) -> Command {
    let mut command = Command::new("/proc/self/exe");
    if let Some(arg0) = std::env::args_os().next() {
        // So that `ps` shows the program's name rather than /proc/self/exe.
        std::os::unix::process::CommandExt::arg0(&mut command, arg0);
    }
    command
        .env(WORKER_ENV, config.to_env())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn nonblocking(fd: impl Into<OwnedFd>) -> io::Result<OwnedFd> {
    let fd = fd.into();
    rustix::fs::fcntl_setfl(&fd, OFlags::NONBLOCK)?;
    Ok(fd)
}

impl Process {
    pub(crate) fn spawn(config: &WorkerConfig) -> io::Result<Process> {
        let mut child = worker_command(config).spawn()?;
        let pid = rustix::process::Pid::from_child(&child);
        let pidfd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e.into());
            }
        };
        let mut process = Process {
            stdin: None,
            stdout: None,
            stderr: None,
            stderr_tail: Vec::new(),
            killed: false,
            pidfd,
            child,
        };
        // Taken out of `Child` so that nothing in std closes or waits on them
        // behind our back.
        let stdin = process.child.stdin.take().expect("piped stdin");
        let stdout = process.child.stdout.take().expect("piped stdout");
        let stderr = process.child.stderr.take().expect("piped stderr");
        process.stdin = Some(nonblocking(stdin)?);
        process.stdout = Some(nonblocking(stdout)?);
        for pipe in [&process.stdin, &process.stdout].into_iter().flatten() {
            // Fewer round trips for large frames. Best effort: the system
            // limit may be lower.
            let _ = rustix::pipe::fcntl_setpipe_size(pipe, PIPE_BYTES);
        }
        process.stderr = Some(nonblocking(stderr)?);
        Ok(process)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn stdin(&self) -> Option<BorrowedFd<'_>> {
        self.stdin.as_ref().map(AsFd::as_fd)
    }

    pub(crate) fn stdout(&self) -> Option<BorrowedFd<'_>> {
        self.stdout.as_ref().map(AsFd::as_fd)
    }

    pub(crate) fn stderr(&self) -> Option<BorrowedFd<'_>> {
        self.stderr.as_ref().map(AsFd::as_fd)
    }

    pub(crate) fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// Closes the request pipe: the worker finishes what it has and exits.
    pub(crate) fn close_stdin(&mut self) {
        self.stdin = None;
    }

    pub(crate) fn close_stdout(&mut self) {
        self.stdout = None;
    }

    /// Sends SIGKILL (once). The process stays a zombie until reaped.
    pub(crate) fn kill(&mut self) {
        if !self.killed {
            self.killed = true;
            // Through the pidfd: it names this process even if it was reaped
            // behind our back (SIGCHLD set to SIG_IGN) and its pid reused.
            let _ = rustix::process::pidfd_send_signal(&self.pidfd, rustix::process::Signal::KILL);
        }
        self.stdin = None;
        self.stdout = None;
    }

    /// Reads what the worker wrote to stderr, keeps the tail and, if
    /// `forward`, copies it to our stderr. Returns `false` once the stream
    /// has ended.
    pub(crate) fn pump_stderr(&mut self, forward: bool) -> bool {
        let Some(fd) = &self.stderr else {
            return false;
        };
        let mut buf = [0u8; 8192];
        loop {
            match rustix::io::read(fd, &mut buf) {
                Ok(0) => {
                    self.stderr = None;
                    return false;
                }
                Ok(n) => {
                    if forward {
                        let _ = io::stderr().write_all(&buf[..n]);
                    }
                    self.stderr_tail.extend_from_slice(&buf[..n]);
                    if self.stderr_tail.len() > 2 * STDERR_TAIL {
                        let cut = self.stderr_tail.len() - STDERR_TAIL;
                        self.stderr_tail.drain(..cut);
                    }
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => return true,
            }
        }
    }

    /// The last few KiB of the worker's stderr.
    pub(crate) fn stderr_tail(&self) -> String {
        let start = self.stderr_tail.len().saturating_sub(STDERR_TAIL);
        String::from_utf8_lossy(&self.stderr_tail[start..]).into_owned()
    }

    /// Reaps the process if it has exited (never blocks).
    pub(crate) fn try_reap(&mut self) -> Option<ExitStatus> {
        match self.child.try_wait() {
            Ok(status) => status,
            // ECHILD: somebody else reaped it (a SIGCHLD set to SIG_IGN does
            // that); there is no status to report.
            Err(_) => Some(std::os::unix::process::ExitStatusExt::from_raw(0)),
        }
    }

    /// Kills and reaps, waiting at most `bound` for the exit.
    pub(crate) fn kill_and_reap(&mut self, bound: Duration) -> Option<ExitStatus> {
        self.kill();
        if let Some(status) = self.try_reap() {
            return Some(status);
        }
        let mut fds = [PollFd::new(&self.pidfd, PollFlags::IN)];
        let timeout = rustix::event::Timespec::try_from(bound).expect("small duration");
        let _ = rustix::event::poll(&mut fds, Some(&timeout));
        self.try_reap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.kill_and_reap(Duration::from_secs(5)).is_none() {
            let _ = writeln!(
                io::stderr(),
                "buckshot: worker {} did not exit after SIGKILL",
                self.pid()
            );
        }
    }
}
