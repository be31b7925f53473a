//! The portable backend, for macOS and FreeBSD (and Linux with `--cfg
//! buckshot_portable`): see the parent module.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use polling::{Event, Events, PollMode};
use rustix::fs::OFlags;
use rustix::process::{Pid, Signal, WaitId, WaitIdOptions, WaitIdStatus};

use super::Interest;

// A token is a `polling` key.
const _: () = assert!(
    usize::BITS >= 64,
    "the portable backend needs 64-bit pointers"
);

/// Descriptors a [`ChildHandle`] holds: none.
pub(crate) const FDS_PER_CHILD: u64 = 0;

/// A handle on a child process: its pid, which is ours until the child is
/// reaped (a zombie holds it). Nothing here reaps it but [`ChildHandle::reap`],
/// and nothing signals it once it is gone; a program that reaps our
/// children behind our back (SIGCHLD ignored, `waitpid(-1)`) makes them
/// look reaped, and nothing of ours is signalled then.
#[derive(Debug)]
pub(crate) struct ChildHandle {
    pid: Pid,
}

impl ChildHandle {
    pub(crate) fn open(child: &Child) -> io::Result<ChildHandle> {
        Ok(ChildHandle {
            pid: Pid::from_child(child),
        })
    }

    fn pid(&self) -> u32 {
        self.pid.as_raw_nonzero().get() as u32
    }

    /// Its exit, if it exited, without reaping it; an error if it was
    /// reaped already (by us or behind our back).
    pub(crate) fn peek(&self) -> rustix::io::Result<Option<WaitIdStatus>> {
        let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
        rustix::process::waitid(WaitId::Pid(self.pid), options)
    }

    /// Reaps it if it exited.
    pub(crate) fn reap(&self) -> rustix::io::Result<Option<WaitIdStatus>> {
        let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG;
        rustix::process::waitid(WaitId::Pid(self.pid), options)
    }

    /// Sends it SIGKILL, only while it is not reaped: until then its pid
    /// cannot name another process.
    pub(crate) fn kill(&self) -> rustix::io::Result<()> {
        self.peek()?;
        rustix::process::kill_process(self.pid, Signal::KILL)
    }

    /// None: nothing polls readable when it exits.
    pub(crate) fn exit_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}

/// The event loop's set: `polling` (kqueue on macOS and FreeBSD, epoll on
/// Linux), level-triggered, and an exit sweep for the children whose exit
/// is watched.
///
/// A child's death mostly shows as its pipes closing. The sweep finds the
/// rest (a forked grandchild holds the pipes open; a killed worker whose
/// pipes the pool closed already): `waitid` without reaping, every
/// [`SWEEP_MAX`] for a child that runs, and for one on its way out 1 ms
/// after it was told so, then twice as long each time. Children due soon
/// are looked at with those due now, so that an idle pool wakes about once
/// a second, however many workers it has. A busy pool (a wait that found
/// descriptors ready) looks at every child every [`BUSY_SWEEP`] (more,
/// with many): a worker that died while a child it forked floods its reply
/// pipe is not read from for a second. No SIGCHLD handler: buckshot lives
/// inside other people's programs.
pub(crate) struct Poller {
    poller: polling::Poller,
    events: Events,
    exits: RefCell<HashMap<u32, Sweep>>,
    /// When the next child is due to be looked at.
    next_sweep: Cell<Option<Instant>>,
    /// When every child was last looked at.
    swept_all: Cell<Instant>,
}

/// A child whose exit is watched.
struct Sweep {
    child: Pid,
    token: u64,
    next: Instant,
    interval: Duration,
}

/// The longest a watched child's exit goes unseen.
const SWEEP_MAX: Duration = Duration::from_secs(1);
const SWEEP_FIRST: Duration = Duration::from_millis(1);
/// How often a busy pool looks at every child: 10 ms, or 50 us per child
/// if longer (each look is a system call).
const BUSY_SWEEP: Duration = Duration::from_millis(10);
const BUSY_SWEEP_PER_CHILD: Duration = Duration::from_micros(50);

fn event(token: u64, interest: Interest) -> Event {
    let key = token as usize;
    match interest {
        Interest::Read => Event::readable(key),
        Interest::Write => Event::writable(key),
    }
}

impl Poller {
    pub(crate) fn new() -> io::Result<Poller> {
        let poller = polling::Poller::new()?;
        if !poller.supports_level() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the system's poller has no level-triggered mode",
            ));
        }
        Ok(Poller {
            poller,
            events: Events::new(),
            exits: RefCell::new(HashMap::new()),
            next_sweep: Cell::new(None),
            swept_all: Cell::new(Instant::now()),
        })
    }

    pub(crate) fn add(&self, fd: BorrowedFd<'_>, token: u64, interest: Interest) -> io::Result<()> {
        // SAFETY: `polling` needs the descriptor to leave the set before it
        // is closed; every caller deletes it first (see `scheduler::poll`).
        unsafe {
            self.poller
                .add_with_mode(fd.as_raw_fd(), event(token, interest), PollMode::Level)
        }
    }

    pub(crate) fn modify(
        &self,
        fd: BorrowedFd<'_>,
        token: u64,
        interest: Interest,
    ) -> io::Result<()> {
        self.poller
            .modify_with_mode(fd, event(token, interest), PollMode::Level)
    }

    /// Takes a descriptor out of the set: before it is closed.
    pub(crate) fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.poller.delete(fd)
    }

    /// Reports `token` once `child`, which runs, has exited
    /// (level-triggered).
    pub(crate) fn watch_exit(&self, child: &ChildHandle, token: u64) -> io::Result<()> {
        self.sweep_for(child, token, SWEEP_MAX)
    }

    /// Watches the exit of a child already watched, now on its way out,
    /// under another token.
    pub(crate) fn rekey_exit(&self, child: &ChildHandle, token: u64) -> io::Result<()> {
        self.sweep_for(child, token, SWEEP_FIRST)
    }

    fn sweep_for(&self, child: &ChildHandle, token: u64, first: Duration) -> io::Result<()> {
        let next = Instant::now() + first;
        let sweep = Sweep {
            child: child.pid,
            token,
            next,
            interval: first,
        };
        self.exits.borrow_mut().insert(child.pid(), sweep);
        let due = self.next_sweep.get().map_or(next, |at| at.min(next));
        self.next_sweep.set(Some(due));
        Ok(())
    }

    pub(crate) fn unwatch_exit(&self, child: &ChildHandle) {
        self.exits.borrow_mut().remove(&child.pid());
    }

    /// Waits up to `timeout` (`None`: as long as it takes) and appends the
    /// tokens that are ready to `ready`.
    pub(crate) fn wait(
        &mut self,
        timeout: Option<Duration>,
        ready: &mut Vec<u64>,
    ) -> io::Result<()> {
        let start = ready.len();
        let deadline = timeout.map(|timeout| Instant::now() + timeout);
        loop {
            let now = Instant::now();
            let until = match (deadline, self.next_sweep.get()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            self.events.clear();
            let sleep = until.map(|until| until.saturating_duration_since(now));
            self.poller.wait(&mut self.events, sleep)?;
            ready.extend(self.events.iter().map(|event| event.key as u64));
            let now = Instant::now();
            let busy = !self.events.is_empty() && {
                let children = self.exits.borrow().len() as u32;
                let every = BUSY_SWEEP.max(BUSY_SWEEP_PER_CHILD * children);
                now >= self.swept_all.get() + every
            };
            self.sweep(now, busy, ready);
            let expired = deadline.is_some_and(|deadline| Instant::now() >= deadline);
            if ready.len() > start || expired {
                return Ok(());
            }
        }
    }

    /// Looks at the watched children that are due (`all`: at every one),
    /// and reports those that exited (every time, until they are
    /// unwatched).
    fn sweep(&self, now: Instant, all: bool, ready: &mut Vec<u64>) {
        if !all && self.next_sweep.get().is_none_or(|at| at > now) {
            return;
        }
        if all {
            self.swept_all.set(now);
        }
        let mut exits = self.exits.borrow_mut();
        let mut next_sweep = None::<Instant>;
        for sweep in exits.values_mut() {
            // Due within a quarter of its interval: looked at now too.
            let due = sweep.next <= now + sweep.interval / 4;
            if due || all {
                let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
                match rustix::process::waitid(WaitId::Pid(sweep.child), options) {
                    Ok(None) if !due => {}
                    Ok(None) => {
                        sweep.next = now + sweep.interval;
                        sweep.interval = (sweep.interval * 2).min(SWEEP_MAX);
                    }
                    // Exited, or reaped behind our back: gone either way.
                    _ => ready.push(sweep.token),
                }
            }
            next_sweep = Some(next_sweep.map_or(sweep.next, |at| at.min(sweep.next)));
        }
        self.next_sweep.set(next_sweep);
    }
}

/// What callers ring to wake the event loop: a pipe.
#[derive(Debug)]
pub(crate) struct Doorbell {
    read: OwnedFd,
    write: OwnedFd,
}

impl Doorbell {
    pub(crate) fn new() -> io::Result<Doorbell> {
        let (read, write) = pipe_cloexec()?;
        for end in [&read, &write] {
            rustix::fs::fcntl_setfl(end, OFlags::NONBLOCK)?;
        }
        Ok(Doorbell { read, write })
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    pub(crate) fn ring(&self) {
        // EAGAIN: the pipe is full, and the loop due to wake.
        let _ = rustix::io::write(&self.write, &[1]);
    }

    pub(crate) fn clear(&self) {
        let mut buf = [0u8; 64];
        while let Ok(1..) = rustix::io::read(&self.read, &mut buf) {}
    }
}

/// A pipe, both ends close-on-exec: `(read, write)`.
#[cfg(not(target_vendor = "apple"))]
pub(crate) fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

/// A pipe, both ends close-on-exec: `(read, write)`. macOS has no `pipe2`:
/// the flag is set after, as std does there (a process forked meanwhile
/// by another thread inherits the ends; a worker closes what it inherits).
#[cfg(target_vendor = "apple")]
pub(crate) fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = rustix::pipe::pipe()?;
    for end in [&read, &write] {
        rustix::io::fcntl_setfd(end, rustix::io::FdFlags::CLOEXEC)?;
    }
    Ok((read, write))
}

/// Pipes keep the system's size (64 KiB on macOS and FreeBSD).
pub(crate) fn grow_pipe(_fd: BorrowedFd<'_>, _bytes: usize) {}

/// A read end of a pipe of its own cannot be opened without `/proc`: the
/// pool then takes back only the frames it has not written.
pub(crate) fn reopen_nonblocking(_reader: &OwnedFd) -> io::Result<OwnedFd> {
    Err(io::ErrorKind::Unsupported.into())
}

/// Whether process `pid` has begun to exit cannot be told: a SIGKILL from
/// outside that races the pool's own counts as the pool's.
pub(crate) fn is_exiting(_pid: u32) -> bool {
    false
}

/// This very binary, as `std::env::current_exe` names it when first asked.
/// A file put in its place later is what new workers run; one removed
/// makes their spawns fail.
pub(crate) fn exe_path() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        std::env::current_exe()
            .or_else(|_| std::env::args_os().next().map(PathBuf::from).ok_or(()))
            .unwrap_or_default()
    })
}

/// There is no parent-death signal: a worker's watchdog on its request
/// stream ends it (and its group) once the pool's process is gone. Returns
/// that none was armed.
pub(crate) fn arm_parent_death(_kill_group: extern "C" fn(libc::c_int)) -> io::Result<bool> {
    Ok(false)
}

/// Closes descriptors `first..=last`.
#[cfg(target_os = "freebsd")]
pub(crate) fn close_range(first: u32, last: u32) -> io::Result<()> {
    // SAFETY: close_range takes plain integers and touches no memory; the
    // caller owns every descriptor in the range.
    if unsafe { libc::close_range(first, last, 0) } == 0 {
        return Ok(());
    }
    Err(io::Error::last_os_error())
}

/// Closes descriptors `first..=last`: those `/dev/fd` lists (macOS; Linux),
/// else each one up to the limit on open files.
#[cfg(not(target_os = "freebsd"))]
pub(crate) fn close_range(first: u32, last: u32) -> io::Result<()> {
    if super::close_listed(Path::new("/dev/fd"), first, last).is_ok() {
        return Ok(());
    }
    for fd in first..=last.min(fd_ceiling()) {
        // SAFETY: as above; EBADF for a descriptor not open is ignored.
        unsafe { libc::close(fd as RawFd) };
    }
    Ok(())
}

/// Descriptors open in this process now: those `/dev/fd` lists (macOS;
/// Linux), else (FreeBSD, whose `/dev/fd` shows only stdio without
/// fdescfs) each one up to the limit on open files.
pub(crate) fn open_fds() -> u64 {
    #[cfg(not(target_os = "freebsd"))]
    if let Some(count) = super::count_listed(Path::new("/dev/fd")) {
        return count;
    }
    (0..=fd_ceiling())
        .filter(|&fd| {
            // SAFETY: F_GETFD only reads the descriptor's flags.
            unsafe { libc::fcntl(fd as RawFd, libc::F_GETFD) >= 0 }
        })
        .count() as u64
}

/// The highest descriptor looked at one by one.
fn fd_ceiling() -> u32 {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    soft.map_or(u32::MAX, |soft| u32::try_from(soft).unwrap_or(u32::MAX))
        .min(1 << 16)
}

/// Long strings go inline: there are no memfds a worker could open.
pub(crate) const SHARED_MEMORY: bool = false;

pub(crate) fn memfd(_size: u64) -> io::Result<File> {
    Err(io::ErrorKind::Unsupported.into())
}

pub(crate) fn dumpable() -> bool {
    false
}

pub(crate) fn open_peer_fd(_pid: u32, _fd: u32, _write: bool) -> io::Result<File> {
    Err(io::ErrorKind::Unsupported.into())
}

/// Reads this process's resident memory, as far as POSIX tells it: its
/// peak (`getrusage`), which is at least what it holds now. A worker over
/// a bound stays over it until it is replaced.
#[derive(Debug)]
pub(crate) struct Resident;

impl Resident {
    pub(crate) fn open() -> io::Result<Resident> {
        Ok(Resident)
    }

    /// The peak resident memory so far.
    pub(crate) fn bytes(&self) -> Option<u64> {
        // SAFETY: a zeroed rusage is a valid value for getrusage to fill.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `usage` is a valid, writable rusage.
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
            return None;
        }
        let peak = u64::try_from(usage.ru_maxrss).ok()?;
        // Bytes on macOS, KiB elsewhere.
        Some(if cfg!(target_vendor = "apple") {
            peak
        } else {
            peak * 1024
        })
    }
}

/// Renames `from` to `to`, unless `to` exists: a hard link, which fails
/// if the name is taken, then the old name removed. A file system without
/// hard links is checked first instead.
pub(crate) fn rename_new(from: &Path, to: &Path) -> io::Result<()> {
    match std::fs::hard_link(from, to) {
        Ok(()) => std::fs::remove_file(from),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
        Err(_) if to.exists() => Err(io::ErrorKind::AlreadyExists.into()),
        Err(_) => std::fs::rename(from, to),
    }
}
