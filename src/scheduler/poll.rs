//! What the pool's thread waits on, and until when.
//!
//! One set (a [`Poller`]: epoll natively) holds the doorbell that callers
//! ring, each live worker's reply and stderr pipes and its exit (a child
//! it forked may hold the reply pipe open after it died), its request pipe
//! while frames wait to be written, and the exits and stderr of the
//! workers being reaped. Each
//! registration carries a stable token naming its worker and what it is,
//! so a wake-up costs what is ready, not what is watched: nothing is
//! rebuilt per turn, and a worker is registered once when it joins and
//! when it starts or stops waiting to write.
//!
//! Everything is level-triggered, as `poll` was: a reader that stops
//! early (a chatty worker gets a few reads per turn) is told again.
//!
//! A descriptor leaves the set before it is closed: a file closed while a
//! spawn is under way lives on in the child until it execs, and so would
//! its registration, firing (level-triggered) for a worker that is gone.
//! A token also carries its worker's serial number, so that an event for a
//! worker that is gone is dropped, whatever its cause.
//!
//! The timeout is the nearest deadline, to the microsecond.

use std::io;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use crate::process::Process;
use crate::sys::{Interest, Poller};

/// A worker's place in the pool's tables and its serial number, unique
/// for the pool's life (modulo 2^32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Key {
    pub slot: usize,
    pub serial: u32,
}

/// Whom a ready event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Doorbell,
    Replies(Key),
    Requests(Key),
    Stderr(Key),
    Exited(Key),
    /// A dying worker exited.
    Reap(Key),
    DyingStderr(Key),
}

const DOORBELL: u64 = 0;
const REPLIES: u64 = 1;
const REQUESTS: u64 = 2;
const STDERR: u64 = 3;
const EXITED: u64 = 4;
const REAP: u64 = 5;
const DYING_STDERR: u64 = 6;

/// Slots fit in the 29 bits between the kind and the serial.
const MAX_SLOT: usize = (1 << 29) - 1;

fn token(kind: u64, key: Key) -> u64 {
    assert!(key.slot <= MAX_SLOT, "more than 2^29 workers");
    u64::from(key.serial) << 32 | (key.slot as u64) << 3 | kind
}

fn source(data: u64) -> Source {
    let key = Key {
        slot: ((data >> 3) as usize) & MAX_SLOT,
        serial: (data >> 32) as u32,
    };
    match data & 7 {
        REPLIES => Source::Replies(key),
        REQUESTS => Source::Requests(key),
        STDERR => Source::Stderr(key),
        EXITED => Source::Exited(key),
        REAP => Source::Reap(key),
        DYING_STDERR => Source::DyingStderr(key),
        _ => Source::Doorbell,
    }
}

/// The set of one pool.
pub(crate) struct Watch {
    poller: Poller,
    tokens: Vec<u64>,
}

impl Watch {
    pub(crate) fn new(doorbell: BorrowedFd<'_>) -> io::Result<Watch> {
        let poller = Poller::new()?;
        poller.add(doorbell, DOORBELL, Interest::Read)?;
        Ok(Watch {
            poller,
            tokens: Vec::new(),
        })
    }

    /// Watches a worker that joins: its replies, stderr and exit (its
    /// requests only while it waits to write: [`Watch::writes`]).
    pub(crate) fn join(&self, key: Key, process: &Process) -> io::Result<()> {
        if let Some(fd) = process.replies() {
            self.add(fd, token(REPLIES, key))?;
        }
        if let Some(fd) = process.stderr_fd() {
            self.add(fd, token(STDERR, key))?;
        }
        self.poller.watch_exit(process.handle(), token(EXITED, key))
    }

    /// Starts or stops watching a worker's request pipe for room. `watched`
    /// is whether it is watched now, and is updated. A pipe that was closed
    /// left the set by itself.
    pub(crate) fn writes(&self, key: Key, process: &Process, want: bool, watched: &mut bool) {
        let Some(fd) = process.requests() else {
            *watched = false;
            return;
        };
        if want == *watched {
            return;
        }
        let done = if want {
            self.add(fd, token(REQUESTS, key))
        } else {
            self.poller.delete(fd)
        };
        // Only fails for want of kernel memory: then the loop would miss a
        // wake-up, so say so loudly rather than hang.
        done.expect("a request pipe in the poller's set");
        *watched = want;
    }

    /// A worker leaves service: its pipes leave the set, and its exit and
    /// stderr are watched under `dying`, its key among the dying.
    pub(crate) fn leave(
        &self,
        process: &Process,
        writes_watched: bool,
        dying: Key,
    ) -> io::Result<()> {
        if let Some(fd) = process.replies() {
            self.poller.delete(fd)?;
        }
        if let (true, Some(fd)) = (writes_watched, process.requests()) {
            self.poller.delete(fd)?;
        }
        if let Some(fd) = process.stderr_fd() {
            self.modify(fd, token(DYING_STDERR, dying))?;
        }
        self.poller.rekey_exit(process.handle(), token(REAP, dying))
    }

    /// Takes a descriptor out of the set, before it is closed. Its file
    /// may live on in a child being spawned (until it execs), and so
    /// would its registration, firing for a worker that is gone.
    pub(crate) fn unwatch(&self, fd: BorrowedFd<'_>) {
        // Fails only if it was not watched: nothing to undo then.
        let _ = self.poller.delete(fd);
    }

    /// Stops watching a worker's exit, once it is reaped.
    pub(crate) fn unwatch_exit(&self, process: &Process) {
        self.poller.unwatch_exit(process.handle());
    }

    fn add(&self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        self.poller.add(fd, token, interest(token))
    }

    fn modify(&self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        self.poller.modify(fd, token, interest(token))
    }

    /// Waits until something is ready or `deadline` passes, and fills `ready`
    /// with what is. Looks first without sleeping, and calls `before_sleep`
    /// only if it has to sleep.
    pub(crate) fn wait(
        &mut self,
        deadline: Option<Instant>,
        before_sleep: impl FnOnce(),
        ready: &mut Vec<Source>,
    ) -> io::Result<()> {
        let sleep = deadline.map(|d| match d.checked_duration_since(Instant::now()) {
            // Round up so that we wake after the deadline, not just before.
            Some(wait) if !wait.is_zero() => wait + Duration::from_micros(50),
            _ => Duration::ZERO,
        });
        self.tokens.clear();
        self.poller.wait(Some(Duration::ZERO), &mut self.tokens)?;
        if self.tokens.is_empty() && sleep != Some(Duration::ZERO) {
            before_sleep();
            self.poller.wait(sleep, &mut self.tokens)?;
        }
        ready.clear();
        ready.extend(self.tokens.iter().map(|&token| source(token)));
        Ok(())
    }
}

/// What a registration waits for: room in a request pipe, else input.
fn interest(token: u64) -> Interest {
    if token & 7 == REQUESTS {
        Interest::Write
    } else {
        Interest::Read
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn tokens_name_their_worker_and_what_is_ready() {
        let key = Key {
            slot: MAX_SLOT,
            serial: u32::MAX,
        };
        assert_eq!(source(token(REPLIES, key)), Source::Replies(key));
        let key = Key { slot: 7, serial: 3 };
        assert_eq!(source(token(REQUESTS, key)), Source::Requests(key));
        assert_eq!(source(token(DYING_STDERR, key)), Source::DyingStderr(key));
        assert_eq!(source(DOORBELL), Source::Doorbell);
    }

    /// What is ready now, without sleeping.
    fn ready_now(watch: &mut Watch) -> Vec<Source> {
        let mut ready = Vec::new();
        watch.wait(Some(Instant::now()), || {}, &mut ready).unwrap();
        ready
    }

    #[test]
    fn a_descriptor_unwatched_before_it_closes_is_quiet_while_a_copy_lives() {
        let (doorbell, _ring) = rustix::pipe::pipe().unwrap();
        let mut watch = Watch::new(doorbell.as_fd()).unwrap();
        let key = Key { slot: 1, serial: 1 };
        for unwatched in [false, true] {
            let (replies, writer) = rustix::pipe::pipe().unwrap();
            watch.add(replies.as_fd(), token(REPLIES, key)).unwrap();
            // A child being spawned holds a copy of every descriptor.
            let copy = rustix::io::dup(&replies).unwrap();
            drop(writer);
            assert_eq!(ready_now(&mut watch), [Source::Replies(key)]);
            if unwatched {
                watch.unwatch(replies.as_fd());
            }
            drop(replies);
            let ready = ready_now(&mut watch);
            if unwatched {
                assert_eq!(ready, [], "gone with its descriptor");
            } else {
                // The hazard: a closed descriptor's registration lives on
                // with its file, and keeps firing.
                assert_eq!(ready, [Source::Replies(key)]);
            }
            drop(copy);
            assert_eq!(ready_now(&mut watch), [], "gone with its file");
        }
    }
}
