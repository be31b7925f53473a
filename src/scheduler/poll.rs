//! What the pool's thread waits on, and until when.
//!
//! One `poll` over the doorbell that callers ring, each live worker's
//! reply, request (while frames wait to be written) and stderr pipes and its
//! pidfd (a child it forked may hold the reply pipe open after it died),
//! and the pidfds and stderr of the workers being reaped. The timeout is
//! the nearest deadline: a start-up or task deadline, or a spawn retry.
//! With nothing to wait for, the thread sleeps until something happens.

use std::io;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;

use super::faults::Dying;
use super::handle::WorkerHandle;

/// Whom a ready poll entry belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Doorbell,
    Replies(usize),
    Requests(usize),
    Stderr(usize),
    Exited(usize),
    Reap,
    DyingStderr(usize),
}

/// The nearest time the loop must wake up at, if any: now if a worker
/// awaits burial, else the earliest deadline of a worker, of a retired
/// worker's exit, or of a spawn retry.
pub(crate) fn nearest_deadline(
    workers: &[WorkerHandle],
    dying: &[Dying],
    timeout: Option<Duration>,
    retry_at: Option<Instant>,
) -> Option<Instant> {
    if workers.iter().any(|worker| worker.fate().is_some()) {
        // A worker to bury (cancelled, say): just look at what else is
        // ready, then come back.
        return Some(Instant::now());
    }
    workers
        .iter()
        .filter_map(|worker| worker.deadline(timeout))
        .chain(dying.iter().filter_map(Dying::kill_at))
        .chain(retry_at)
        .min()
}

/// Waits until something is ready or `deadline` passes, and fills `ready`
/// with what is. Looks first without sleeping, and calls `before_sleep`
/// only if it has to sleep.
pub(crate) fn wait(
    doorbell: rustix::fd::BorrowedFd<'_>,
    workers: &[WorkerHandle],
    dying: &[Dying],
    deadline: Option<Instant>,
    before_sleep: impl FnOnce(),
    ready: &mut Vec<Source>,
) -> io::Result<()> {
    let mut fds = Vec::with_capacity(1 + 4 * workers.len() + 2 * dying.len());
    let mut owners = Vec::with_capacity(fds.capacity());
    let mut watch = |fd, flags, source| {
        fds.push(PollFd::from_borrowed_fd(fd, flags));
        owners.push(source);
    };
    watch(doorbell, PollFlags::IN, Source::Doorbell);
    for (i, worker) in workers.iter().enumerate() {
        let process = worker.process();
        if let Some(fd) = process.replies() {
            watch(fd, PollFlags::IN, Source::Replies(i));
        }
        if worker.wants_to_write() {
            if let Some(fd) = process.requests() {
                watch(fd, PollFlags::OUT, Source::Requests(i));
            }
        }
        if let Some(fd) = process.stderr_fd() {
            watch(fd, PollFlags::IN, Source::Stderr(i));
        }
        watch(process.pidfd(), PollFlags::IN, Source::Exited(i));
    }
    for (i, dying) in dying.iter().enumerate() {
        let process = dying.process();
        watch(process.pidfd(), PollFlags::IN, Source::Reap);
        if let Some(fd) = process.stderr_fd() {
            watch(fd, PollFlags::IN, Source::DyingStderr(i));
        }
    }
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let sleep = deadline.map(|d| match d.checked_duration_since(Instant::now()) {
        // Round up so that we wake after the deadline, not just before.
        Some(wait) if !wait.is_zero() => {
            Timespec::try_from(wait + Duration::from_micros(50)).expect("deadline within range")
        }
        _ => zero,
    });
    if poll_retrying(&mut fds, Some(&zero))? == 0 && sleep != Some(zero) {
        before_sleep();
        poll_retrying(&mut fds, sleep.as_ref())?;
    }
    ready.clear();
    ready.extend(
        fds.iter()
            .zip(&owners)
            .filter(|(fd, _)| !fd.revents().is_empty())
            .map(|(_, &owner)| owner),
    );
    Ok(())
}

fn poll_retrying(fds: &mut [PollFd<'_>], timeout: Option<&Timespec>) -> io::Result<usize> {
    loop {
        match rustix::event::poll(fds, timeout) {
            Ok(n) => return Ok(n),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}
