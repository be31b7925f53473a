//! The pool's handle on one worker process: its pipes, its pidfd, and how it
//! is killed and reaped. It is given a [`Command`] (see [`crate::launch`])
//! and does not care where the worker runs.
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
use rustix::process::{PidfdFlags, Signal, WaitIdOptions};

use crate::flow::PIPE_BYTES;
use crate::stderr::StderrPipe;

/// How long reaping a killed worker may take before we give up on it: a
/// process in uninterruptible sleep is released only when the kernel lets
/// it go.
pub(crate) const REAP_BOUND: Duration = Duration::from_secs(5);

/// One worker process, seen from the pool.
#[derive(Debug)]
pub(crate) struct Process {
    child: Child,
    pidfd: OwnedFd,
    /// Requests. `None` once closed (to retire the worker gracefully).
    requests: Option<OwnedFd>,
    /// Replies. `None` after end of stream.
    replies: Option<OwnedFd>,
    stderr: StderrPipe,
    killed: bool,
}

fn nonblocking(fd: impl Into<OwnedFd>) -> io::Result<OwnedFd> {
    let fd = fd.into();
    rustix::fs::fcntl_setfl(&fd, OFlags::NONBLOCK)?;
    Ok(fd)
}

impl Process {
    /// Spawns `command` with its stdin, stdout and stderr piped to us.
    /// `forward_stderr`: whether what it writes to stderr is copied to ours.
    pub(crate) fn spawn(mut command: Command, forward_stderr: bool) -> io::Result<Process> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let pid = rustix::process::Pid::from_child(&child);
        let pidfd = match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e.into());
            }
        };
        // Taken out of `Child` so that nothing in std closes or waits on them
        // behind our back.
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let mut process = Process {
            child,
            pidfd,
            requests: None,
            replies: None,
            stderr: StderrPipe::new(nonblocking(stderr)?, forward_stderr),
            killed: false,
        };
        process.requests = Some(nonblocking(stdin)?);
        process.replies = Some(nonblocking(stdout)?);
        for pipe in [&process.requests, &process.replies].into_iter().flatten() {
            // Fewer round trips for large frames. Best effort: the system
            // limit may be lower.
            let _ = rustix::pipe::fcntl_setpipe_size(pipe, PIPE_BYTES);
        }
        Ok(process)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn requests(&self) -> Option<BorrowedFd<'_>> {
        self.requests.as_ref().map(AsFd::as_fd)
    }

    pub(crate) fn replies(&self) -> Option<BorrowedFd<'_>> {
        self.replies.as_ref().map(AsFd::as_fd)
    }

    pub(crate) fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    pub(crate) fn stderr(&mut self) -> &mut StderrPipe {
        &mut self.stderr
    }

    pub(crate) fn stderr_fd(&self) -> Option<BorrowedFd<'_>> {
        self.stderr.fd()
    }

    /// Closes the request pipe: the worker finishes what it has and exits.
    pub(crate) fn close_requests(&mut self) {
        self.requests = None;
    }

    /// The reply stream ended.
    pub(crate) fn close_replies(&mut self) {
        self.replies = None;
    }

    /// Bytes written to the request pipe that the worker has not read, if
    /// the pipe is still open on our side.
    pub(crate) fn unread_requests(&self) -> Option<u64> {
        rustix::io::ioctl_fionread(self.requests.as_ref()?).ok()
    }

    /// Sends SIGKILL (once) and stops talking to it. The process stays a
    /// zombie until reaped.
    pub(crate) fn kill(&mut self) {
        if !self.killed {
            self.killed = true;
            // Through the pidfd: it names this process even if it was reaped
            // behind our back (SIGCHLD set to SIG_IGN) and its pid reused.
            let _ = rustix::process::pidfd_send_signal(&self.pidfd, Signal::KILL);
        }
        self.requests = None;
        self.replies = None;
    }

    /// Whether the process has exited and waits to be reaped (never
    /// blocks). `false` also when it was reaped behind our back.
    pub(crate) fn is_zombie(&self) -> bool {
        let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
        matches!(
            rustix::process::waitid(rustix::process::WaitId::PidFd(self.pidfd.as_fd()), options),
            Ok(Some(_))
        )
    }

    /// Reaps the process if it has exited (never blocks). `Some(None)`: it
    /// exited, but somebody else reaped it (a SIGCHLD set to SIG_IGN makes
    /// the kernel do that), so there is no status to report.
    pub(crate) fn try_reap(&mut self) -> Option<Option<ExitStatus>> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(Some(status)),
            Ok(None) => None,
            Err(_) => Some(None),
        }
    }

    /// Kills and reaps, waiting at most `bound` for the exit. `false` if it
    /// would not go.
    pub(crate) fn kill_and_reap(&mut self, bound: Duration) -> bool {
        self.kill();
        if self.try_reap().is_some() {
            return true;
        }
        let mut fds = [PollFd::new(&self.pidfd, PollFlags::IN)];
        let timeout = rustix::event::Timespec::try_from(bound).expect("small duration");
        let _ = rustix::event::poll(&mut fds, Some(&timeout));
        self.try_reap().is_some()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if !self.kill_and_reap(REAP_BOUND) {
            let _ = writeln!(
                io::stderr(),
                "buckshot: worker {} did not exit after SIGKILL",
                self.pid()
            );
        }
    }
}
