//! The pool's handle on one worker process: its pipes, its handle (a
//! pidfd, natively), and how it is killed and reaped. Given a command, it does not build one: a launcher
//! ([`crate::launch`]) does, and says what to kill besides it; this does
//! the rest, wherever it runs.
//!
//! Reaping goes through [`ChildHandle`] (natively a pidfd, Linux 5.3+),
//! polled by the pool's thread,
//! never through a blocking `wait` or a SIGCHLD handler: buckshot lives inside
//! other people's programs, so it installs no process-wide signal handler
//! (`wait-timeout` would), and a worker that dies while idle is reaped as soon
//! as it dies. Waiting on the pidfd rather than the pid also means that a
//! worker reaped behind our back (SIGCHLD set to `SIG_IGN`, a `waitpid(-1)`
//! elsewhere in the program) is never confused with a process that reused
//! its pid. (The portable backend has only the pid, and signals it only
//! while it is not reaped: see `sys`.)
//!
//! The pool keeps a read end of each worker's request pipe besides the
//! worker's: it counts the bytes the worker has not read yet, takes back
//! frames the worker has not read (see `scheduler::books`), and a write to
//! a worker that died fills the pipe instead of raising SIGPIPE, which a
//! program that restored its default action would die of. Natively it is
//! opened anew through `/proc`, so that it has a file description of its
//! own, non-blocking without making the worker's so: a read back must
//! never wait for bytes the worker took meanwhile; and only the first time
//! frames are read back, as few workers ever have any read back, and every
//! spawn would pay the walk through `/proc`. Until then (and where it
//! cannot be opened, for good) the pool's read end shares the worker's file
//! description, which counts what is unread as well. Where it cannot be,
//! nothing is read back.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::fs::OFlags;
use rustix::io::Errno;
use rustix::process::WaitIdStatus;

use crate::bulk::ReplySlots;
use crate::flow::{PIPE_BYTES, REAP_BOUND};
use crate::launch::{Launch, Reported};
use crate::stderr::{self, StderrPipe};
use crate::sys::{self, ChildHandle};

/// Descriptors a live worker holds in the pool's process: both ends of its
/// request pipe (the read end to count what it has not read), its reply
/// and stderr pipes, its handle's (a pidfd, natively), and the memfd of
/// its reply slots (see `scheduler::spawner`).
pub(crate) const FDS_PER_WORKER: u64 = 5 + sys::FDS_PER_CHILD;

/// One worker process, seen from the pool.
#[derive(Debug)]
pub(crate) struct Process {
    child: Child,
    handle: ChildHandle,
    launch: Arc<dyn Launch>,
    /// The pid the worker announced in its handshake (where it runs).
    reported: Option<Reported>,
    /// Requests. `None` once closed (to retire the worker gracefully).
    requests: Option<OwnedFd>,
    /// Our own read end of the request pipe: the worker's file description
    /// until frames are first read back, then one of our own.
    requests_reader: OwnedFd,
    /// Whether it is one of our own, non-blocking, that may be read from:
    /// `None` until frames are first read back.
    reads_back: Option<bool>,
    /// Replies. `None` after end of stream.
    replies: Option<OwnedFd>,
    stderr: StderrPipe,
    /// Where its outputs' long strings come, if it has one.
    reply_slot: Option<Arc<ReplySlots>>,
    killed: bool,
    /// Our SIGKILL found it running: if it ends by SIGKILL, that was ours,
    /// not an outside kill's (see [`Process::killed_by_pool`]).
    killed_running: bool,
    /// Reaped, or given up on.
    ended: bool,
    /// What its launcher says of the hard CPU limit it reached, as found
    /// out before it was reaped (see [`Launch::cpu_limit_reached`]).
    cpu_limit_reached: Option<String>,
}

fn nonblocking(fd: impl Into<OwnedFd>) -> io::Result<OwnedFd> {
    let fd = fd.into();
    rustix::fs::fcntl_setfl(&fd, OFlags::NONBLOCK)?;
    Ok(fd)
}

impl Process {
    /// Starts a worker by `command`, which `launch` built, with its stdin,
    /// stdout and stderr piped to us. `forward_stderr`: where what it
    /// writes to stderr goes. `reply_slot`: the reply slots it
    /// was told of, if any, kept as long as it is.
    pub(crate) fn spawn(
        mut command: Command,
        launch: Arc<dyn Launch>,
        forward_stderr: stderr::Route,
        reply_slot: Option<Arc<ReplySlots>>,
    ) -> io::Result<Process> {
        let (requests_reader, requests) = sys::pipe_cloexec()?;
        command
            .stdin(Stdio::from(requests_reader.try_clone()?))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn()?;
        // The command holds the worker's copy of the read end until dropped.
        drop(command);
        let handle = match ChildHandle::open(&child) {
            Ok(handle) => handle,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        // Taken out of `Child` so that nothing in std closes or waits on them
        // behind our back.
        let replies = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        // From here on, dropping the process kills and reaps it.
        let mut process = Process {
            child,
            handle,
            launch,
            reported: None,
            requests: None,
            requests_reader,
            reads_back: None,
            replies: None,
            stderr: StderrPipe::new(stderr.into(), forward_stderr),
            reply_slot,
            killed: false,
            killed_running: false,
            ended: false,
            cpu_limit_reached: None,
        };
        process.stderr.set_nonblocking()?;
        process.requests = Some(nonblocking(requests)?);
        process.replies = Some(nonblocking(replies)?);
        for pipe in [&process.requests, &process.replies].into_iter().flatten() {
            sys::grow_pipe(pipe.as_fd(), PIPE_BYTES);
        }
        Ok(process)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn reply_slot(&self) -> Option<&Arc<ReplySlots>> {
        self.reply_slot.as_ref()
    }

    /// The worker's pid as it knows it: what its handshake said, else the
    /// pid of the process the pool started.
    pub(crate) fn worker_pid(&self) -> u32 {
        self.reported.as_ref().map_or_else(|| self.pid(), |r| r.pid)
    }

    /// Records the pid the worker announced in its handshake.
    pub(crate) fn set_reported(&mut self, reported: Reported) {
        self.reported = Some(reported);
    }

    pub(crate) fn requests(&self) -> Option<BorrowedFd<'_>> {
        self.requests.as_ref().map(AsFd::as_fd)
    }

    pub(crate) fn replies(&self) -> Option<BorrowedFd<'_>> {
        self.replies.as_ref().map(AsFd::as_fd)
    }

    /// What its exit is watched and waited through.
    pub(crate) fn handle(&self) -> &ChildHandle {
        &self.handle
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

    /// Bytes written to the request pipe that the worker has not read.
    pub(crate) fn unread_requests(&self) -> Option<u64> {
        rustix::io::ioctl_fionread(&self.requests_reader).ok()
    }

    /// Reads back what the worker has not read of its requests, into
    /// `buf`, which must hold at least [`Process::unread_requests`]: one
    /// read takes all of it, atomically against the worker's reads, and
    /// never waits. Returns how many bytes it took (0 if it cannot read
    /// back here).
    pub(crate) fn take_unread(&mut self, buf: &mut [u8]) -> usize {
        if self.reads_back.is_none() {
            // Replaces the worker's description, so that a worker holds
            // no more descriptors here than `FDS_PER_WORKER`.
            let reopened = sys::reopen_nonblocking(&self.requests_reader);
            self.reads_back = Some(reopened.is_ok());
            if let Ok(reader) = reopened {
                self.requests_reader = reader;
            }
        }
        if self.reads_back != Some(true) {
            return 0;
        }
        loop {
            match rustix::io::read(&self.requests_reader, &mut *buf) {
                Ok(n) => return n,
                Err(Errno::INTR) => {}
                // Empty (the worker took everything meanwhile), or broken.
                Err(_) => return 0,
            }
        }
    }

    /// Whether the process is still ours: running, or exited and not
    /// reaped, so that its pid (and its process group's id) cannot have
    /// been reused.
    fn is_ours(&self) -> bool {
        !self.ended && self.peek().is_ok()
    }

    /// Its exit, if it exited, without reaping it; an error if it was
    /// reaped already (by us or behind our back).
    fn peek(&self) -> rustix::io::Result<Option<WaitIdStatus>> {
        self.handle.peek()
    }

    /// What the pool says if the kernel killed it at its launcher's hard
    /// CPU limit: its task ignored `SIGXCPU`, and the worker could not say
    /// it.
    pub(crate) fn cpu_limit_note(&self, status: Option<ExitStatus>) -> Option<String> {
        let killed = status.is_some_and(|status| status.signal() == Some(libc::SIGKILL));
        let reached = self.cpu_limit_reached.as_ref().filter(|_| killed)?;
        Some(format!("buckshot: {reached}"))
    }

    /// The launcher that started it.
    pub(crate) fn launch(&self) -> &dyn Launch {
        &*self.launch
    }

    /// Sends SIGKILL to it and to what its launcher knows of it (once), and
    /// stops talking to it. It stays a zombie until reaped.
    pub(crate) fn kill(&mut self) {
        if !self.killed {
            self.killed = true;
            // Asked first: once signalled, it is on its way out either way.
            let running = self.is_ours() && !sys::is_exiting(self.pid());
            // Through the handle: it names this process even if it was
            // reaped behind our back and its pid reused.
            let sent = self.handle.kill();
            self.killed_running = running && sent.is_ok();
            if self.is_ours() {
                self.launch.kill_rest(self.pid(), self.reported.as_ref());
            }
        }
        self.requests = None;
        self.replies = None;
    }

    /// Whether the pool's SIGKILL is what ended it: it was running, not
    /// already on its way out, when the pool sent it. Otherwise a SIGKILL
    /// in its exit status came from elsewhere (or it ended by itself).
    /// What counts is who sent the kill, not the signal: a launcher's
    /// process (`ssh`) that the pool kills as its worker's stream ends,
    /// while it is about to exit by itself, ends by the pool's SIGKILL.
    pub(crate) fn killed_by_pool(&self) -> bool {
        self.killed_running
    }

    /// Reaps the process if it has exited (never blocks), after killing what
    /// its launcher knows of it (a worker that exited by itself may leave
    /// subprocesses). `Some(None)`: it exited, but somebody else reaped it,
    /// so there is no status to report.
    pub(crate) fn try_reap(&mut self) -> Option<Option<ExitStatus>> {
        if self.ended {
            return Some(None);
        }
        let exited = self.peek();
        if let Ok(Some(_)) = exited {
            // Read before it is reaped, which removes its /proc entry. The
            // pool may have killed it too, after the kernel did.
            self.cpu_limit_reached = self.launch.cpu_limit_reached(self.pid());
        }
        match exited {
            Ok(None) => return None,
            // What a worker that exited by itself left here; on its host it
            // killed its own group. (A killed one had this done already.)
            Ok(Some(_)) if !self.killed => self.launch.kill_rest(self.pid(), None),
            Ok(Some(_)) => {}
            Err(_) => {
                self.ended = true;
                return Some(None);
            }
        }
        let reaped = self.handle.reap();
        self.ended = true;
        Some(reaped.ok().flatten().map(|status| exit_status(&status)))
    }

    /// Kills and reaps, waiting at most `bound` for the exit. Returns
    /// `false` if it would not go; it is not waited for again.
    pub(crate) fn kill_and_reap(&mut self, bound: Duration) -> bool {
        self.kill();
        if self.handle.wait_exit(Instant::now() + bound) && self.try_reap().is_some() {
            return true;
        }
        self.ended = true;
        false
    }
}

/// The status `wait` would have given.
fn exit_status(status: &WaitIdStatus) -> ExitStatus {
    if let Some(code) = status.exit_status() {
        return ExitStatus::from_raw((code & 0xff) << 8);
    }
    let signal = status.terminating_signal().unwrap_or(0);
    let core = if status.dumped() { 0x80 } else { 0 };
    ExitStatus::from_raw(signal | core)
}

impl Drop for Process {
    fn drop(&mut self) {
        if !self.ended && !self.kill_and_reap(REAP_BOUND) {
            stderr::report(&format!(
                "buckshot: worker {} did not exit after SIGKILL",
                self.pid()
            ));
        }
    }
}
