//! What the pool's thread waits on, and until when.
//!
//! One epoll set holds the doorbell that callers ring, each live worker's
//! reply and stderr pipes and its pidfd (a child it forked may hold the
//! reply pipe open after it died), its request pipe while frames wait to be
//! written, and the pidfds and stderr of the workers being reaped. Each
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
//! The timeout is the nearest deadline, to the microsecond: epoll's own
//! timeout is in milliseconds, so a sleep with a deadline waits on the
//! epoll descriptor with `ppoll`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::epoll::{self, CreateFlags, Event, EventData, EventFlags};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;

use crate::process::Process;

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

fn token(kind: u64, key: Key) -> EventData {
    assert!(key.slot <= MAX_SLOT, "more than 2^29 workers");
    EventData::new_u64(u64::from(key.serial) << 32 | (key.slot as u64) << 3 | kind)
}

fn source(data: EventData) -> Source {
    let data = data.u64();
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

/// The epoll set of one pool.
pub(crate) struct Watch {
    epoll: OwnedFd,
    events: Vec<Event>,
}

/// Events taken per wait; more stay ready for the next turn.
const EVENTS_PER_WAIT: usize = 1024;

impl Watch {
    pub(crate) fn new(doorbell: BorrowedFd<'_>) -> io::Result<Watch> {
        let epoll = epoll::create(CreateFlags::CLOEXEC)?;
        epoll::add(
            &epoll,
            doorbell,
            EventData::new_u64(DOORBELL),
            EventFlags::IN,
        )?;
        Ok(Watch {
            epoll,
            events: Vec::with_capacity(EVENTS_PER_WAIT),
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
        self.add(process.pidfd(), token(EXITED, key))
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
            epoll::delete(&self.epoll, fd).map_err(io::Error::from)
        };
        // Only fails for want of kernel memory: then the loop would miss a
        // wake-up, so say so loudly rather than hang.
        done.expect("epoll_ctl on a request pipe");
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
            epoll::delete(&self.epoll, fd)?;
        }
        if let (true, Some(fd)) = (writes_watched, process.requests()) {
            epoll::delete(&self.epoll, fd)?;
        }
        if let Some(fd) = process.stderr_fd() {
            self.modify(fd, token(DYING_STDERR, dying))?;
        }
        self.modify(process.pidfd(), token(REAP, dying))
    }

    /// Takes a descriptor out of the set, before it is closed. Its file
    /// may live on in a child being spawned (until it execs), and so
    /// would its registration, firing for a worker that is gone.
    pub(crate) fn unwatch(&self, fd: BorrowedFd<'_>) {
        // Fails only if it was not watched: nothing to undo then.
        let _ = epoll::delete(&self.epoll, fd);
    }

    fn add(&self, fd: BorrowedFd<'_>, data: EventData) -> io::Result<()> {
        Ok(epoll::add(&self.epoll, fd, data, flags_for(data))?)
    }

    fn modify(&self, fd: BorrowedFd<'_>, data: EventData) -> io::Result<()> {
        Ok(epoll::modify(&self.epoll, fd, data, flags_for(data))?)
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
        self.take(Some(&zero))?;
        if self.events.is_empty() && sleep != Some(zero) {
            before_sleep();
            match sleep {
                // No deadline: epoll itself sleeps.
                None => self.take(None)?,
                Some(sleep) => {
                    let mut fds = [PollFd::new(&self.epoll, PollFlags::IN)];
                    retrying(|| rustix::event::poll(&mut fds, Some(&sleep)))?;
                    self.take(Some(&zero))?;
                }
            }
        }
        ready.clear();
        ready.extend(self.events.iter().map(|event| source(event.data)));
        Ok(())
    }

    fn take(&mut self, timeout: Option<&Timespec>) -> io::Result<()> {
        self.events.clear();
        let epoll = self.epoll.as_fd();
        let events = &mut self.events;
        retrying(|| {
            epoll::wait(epoll, rustix::buffer::spare_capacity(events), timeout).map(|_| 0)
        })?;
        Ok(())
    }
}

/// What a registration waits for: room in a request pipe, else input.
fn flags_for(data: EventData) -> EventFlags {
    if data.u64() & 7 == REQUESTS {
        EventFlags::OUT
    } else {
        EventFlags::IN
    }
}

fn retrying(mut call: impl FnMut() -> rustix::io::Result<usize>) -> io::Result<usize> {
    loop {
        match call() {
            Ok(n) => return Ok(n),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(source(EventData::new_u64(DOORBELL)), Source::Doorbell);
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
