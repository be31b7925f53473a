//! The native backend, on Linux: see the parent module.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use std::process::Child;
use std::time::Duration;

use rustix::event::epoll::{self, CreateFlags, Event, EventData, EventFlags};
use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};
use rustix::fs::{MemfdFlags, OFlags, SealFlags};
use rustix::io::Errno;
use rustix::pipe::PipeFlags;
use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitIdOptions, WaitIdStatus};

use super::Interest;

/// Descriptors a [`ChildHandle`] holds: its pidfd.
pub(crate) const FDS_PER_CHILD: u64 = 1;

/// A handle on a child process that names it even after somebody else
/// reaped it and its pid was reused: a pidfd (Linux 5.3+).
#[derive(Debug)]
pub(crate) struct ChildHandle {
    pidfd: OwnedFd,
}

impl ChildHandle {
    pub(crate) fn open(child: &Child) -> io::Result<ChildHandle> {
        let pidfd = rustix::process::pidfd_open(Pid::from_child(child), PidfdFlags::empty())?;
        Ok(ChildHandle { pidfd })
    }

    /// Its exit, if it exited, without reaping it; an error if it was
    /// reaped already (by us or behind our back).
    pub(crate) fn peek(&self) -> rustix::io::Result<Option<WaitIdStatus>> {
        let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
        rustix::process::waitid(WaitId::PidFd(self.pidfd.as_fd()), options)
    }

    /// Reaps it if it exited.
    pub(crate) fn reap(&self) -> rustix::io::Result<Option<WaitIdStatus>> {
        let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG;
        rustix::process::waitid(WaitId::PidFd(self.pidfd.as_fd()), options)
    }

    /// Sends it SIGKILL: through the pidfd, which cannot reach a process
    /// that reused its pid.
    pub(crate) fn kill(&self) -> rustix::io::Result<()> {
        rustix::process::pidfd_send_signal(&self.pidfd, Signal::KILL)
    }

    /// A descriptor that polls readable once it exits.
    pub(crate) fn exit_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.pidfd.as_fd())
    }
}

/// The event loop's set: epoll, level-triggered, with a pidfd for each
/// child whose exit is watched.
pub(crate) struct Poller {
    epoll: OwnedFd,
    events: Vec<Event>,
}

/// Events taken per wait; more stay ready for the next turn.
const EVENTS_PER_WAIT: usize = 1024;

fn flags(interest: Interest) -> EventFlags {
    match interest {
        Interest::Read => EventFlags::IN,
        Interest::Write => EventFlags::OUT,
    }
}

impl Poller {
    pub(crate) fn new() -> io::Result<Poller> {
        Ok(Poller {
            epoll: epoll::create(CreateFlags::CLOEXEC)?,
            events: Vec::with_capacity(EVENTS_PER_WAIT),
        })
    }

    pub(crate) fn add(&self, fd: BorrowedFd<'_>, token: u64, interest: Interest) -> io::Result<()> {
        let data = EventData::new_u64(token);
        Ok(epoll::add(&self.epoll, fd, data, flags(interest))?)
    }

    pub(crate) fn modify(
        &self,
        fd: BorrowedFd<'_>,
        token: u64,
        interest: Interest,
    ) -> io::Result<()> {
        let data = EventData::new_u64(token);
        Ok(epoll::modify(&self.epoll, fd, data, flags(interest))?)
    }

    /// Takes a descriptor out of the set: before it is closed.
    pub(crate) fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        Ok(epoll::delete(&self.epoll, fd)?)
    }

    /// Reports `token` once `child`, which runs, has exited
    /// (level-triggered).
    pub(crate) fn watch_exit(&self, child: &ChildHandle, token: u64) -> io::Result<()> {
        self.add(child.pidfd.as_fd(), token, Interest::Read)
    }

    /// Watches the exit of a child already watched, now on its way out,
    /// under another token.
    pub(crate) fn rekey_exit(&self, child: &ChildHandle, token: u64) -> io::Result<()> {
        self.modify(child.pidfd.as_fd(), token, Interest::Read)
    }

    pub(crate) fn unwatch_exit(&self, child: &ChildHandle) {
        // Fails only if it was not watched: nothing to undo then.
        let _ = self.delete(child.pidfd.as_fd());
    }

    /// Waits up to `timeout` (`None`: as long as it takes) and appends the
    /// tokens that are ready to `ready`. A timeout is kept to the
    /// microsecond: epoll's own is in milliseconds, so the wait is a
    /// `ppoll` on the epoll descriptor.
    pub(crate) fn wait(
        &mut self,
        timeout: Option<Duration>,
        ready: &mut Vec<u64>,
    ) -> io::Result<()> {
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        match timeout {
            None => self.take(None)?,
            Some(timeout) if timeout.is_zero() => self.take(Some(&zero))?,
            Some(timeout) => {
                let timeout = Timespec::try_from(timeout).expect("a timeout within range");
                let mut fds = [PollFd::new(&self.epoll, PollFlags::IN)];
                retrying(|| rustix::event::poll(&mut fds, Some(&timeout)))?;
                self.take(Some(&zero))?;
            }
        }
        ready.extend(self.events.iter().map(|event| event.data.u64()));
        Ok(())
    }

    fn take(&mut self, timeout: Option<&Timespec>) -> io::Result<()> {
        self.events.clear();
        let epoll = self.epoll.as_fd();
        let events = &mut self.events;
        retrying(|| epoll::wait(epoll, rustix::buffer::spare_capacity(events), timeout))?;
        Ok(())
    }
}

/// What callers ring to wake the event loop: an eventfd.
#[derive(Debug)]
pub(crate) struct Doorbell(OwnedFd);

impl Doorbell {
    pub(crate) fn new() -> io::Result<Doorbell> {
        let flags = EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK;
        Ok(Doorbell(rustix::event::eventfd(0, flags)?))
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    pub(crate) fn ring(&self) {
        // The counter cannot overflow in practice; EAGAIN would only mean
        // the loop is already due to wake.
        let _ = rustix::io::write(&self.0, &1u64.to_ne_bytes());
    }

    pub(crate) fn clear(&self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.0, &mut buf);
    }
}

/// A pipe, both ends close-on-exec: `(read, write)`.
pub(crate) fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?)
}

/// Makes a pipe hold `bytes`: fewer round trips for large frames. Best
/// effort: the system limit may be lower.
pub(crate) fn grow_pipe(fd: BorrowedFd<'_>, bytes: usize) {
    let _ = rustix::pipe::fcntl_setpipe_size(fd, bytes);
}

/// Opens the pipe that `reader` reads from anew, through `/proc`: a file
/// description of its own, non-blocking and close-on-exec.
pub(crate) fn reopen_nonblocking(reader: &OwnedFd) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", reader.as_raw_fd());
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC;
    Ok(rustix::fs::open(path, flags, rustix::fs::Mode::empty())?)
}

/// Whether process `pid` (ours, not reaped) has begun to exit: its
/// threads are past the point of no return (`PF_EXITING`), or it is a
/// zombie. A worker killed from outside closes its pipes before it becomes
/// a zombie, so the pool may see its stream end, and kill it, in between.
/// If `/proc` cannot tell, it is taken as running.
pub(crate) fn is_exiting(pid: u32) -> bool {
    /// `PF_EXITING` in the kernel's `include/linux/sched.h`.
    const PF_EXITING: u64 = 0x4;
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // After the command name, which may hold anything: the state (field
    // 3), ..., the flags (field 9).
    let Some(fields) = stat.rfind(')').map(|i| stat[i + 1..].split_whitespace()) else {
        return false;
    };
    let fields: Vec<&str> = fields.take(7).collect();
    let zombie = matches!(fields.first(), Some(&("Z" | "X" | "x")));
    let flags = fields.get(6).and_then(|f| f.parse::<u64>().ok());
    zombie || flags.is_some_and(|flags| flags & PF_EXITING != 0)
}

/// This very binary: `/proc/self/exe` still names it if the file on disk
/// was replaced or removed since the program started.
pub(crate) fn exe_path() -> &'static Path {
    Path::new("/proc/self/exe")
}

/// Signals the end of the worker's parent (the pool's thread): a signal of
/// the real-time range, whose handler `kill_group` kills the worker's
/// whole process group with SIGKILL, when the worker leads one (local
/// workers do), so that what its tasks started goes too when the program
/// dies or is interrupted; otherwise SIGKILL for the worker alone. (A task
/// that handles that signal, or blocks it in every thread, keeps its
/// worker alive until that task ends; none should.) Returns
/// whether it armed one: here it always does, so a local worker needs no
/// watchdog on its request stream.
pub(crate) fn arm_parent_death(kill_group: extern "C" fn(libc::c_int)) -> io::Result<bool> {
    let leads_its_group = rustix::process::getpgrp() == rustix::process::getpid();
    let signal = if leads_its_group {
        let signal = libc::SIGRTMAX();
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask"
        // value; the handler only calls `kill`, which is async-signal-safe.
        // The signal is unblocked too: a mask is inherited through exec,
        // and threads that tasks start inherit this thread's.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = kill_group as usize;
            if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, signal);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        }
        signal
    } else {
        libc::SIGKILL
    };
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and touches no memory.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(true)
}

/// Closes descriptors `first..=last`: `close_range(2)` (Linux 5.9), or
/// before it those `/proc/self/fd` lists.
pub(crate) fn close_range(first: u32, last: u32) -> io::Result<()> {
    // SAFETY: close_range takes plain integers and touches no memory; the
    // caller owns every descriptor in the range (nothing else of this
    // process uses them).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
    if rc == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::ENOSYS) => super::close_listed(Path::new("/proc/self/fd"), first, last),
        _ => Err(error),
    }
}

/// Descriptors open in this process now.
pub(crate) fn open_fds() -> u64 {
    super::count_listed(Path::new("/proc/self/fd")).unwrap_or(0)
}

/// Whether long strings may go beside frames, through memfds that workers
/// open through `/proc`.
pub(crate) const SHARED_MEMORY: bool = true;

/// A new memfd of `size` bytes (sparse: pages exist once written), sealed
/// against shrinking, so that a mapping never outlives its file's end.
pub(crate) fn memfd(size: u64) -> io::Result<File> {
    let fd = rustix::fs::memfd_create(
        "buckshot-bulk",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    let file = File::from(fd);
    file.set_len(size)?;
    rustix::fs::fcntl_add_seals(&file, SealFlags::SHRINK | SealFlags::SEAL)?;
    Ok(file)
}

/// Whether this process is dumpable: its workers may open its memfds
/// through `/proc/<pid>/fd` only then (the kernel checks ptrace read
/// access).
pub(crate) fn dumpable() -> bool {
    // SAFETY: PR_GET_DUMPABLE takes no pointer and only returns a flag.
    unsafe { libc::prctl(libc::PR_GET_DUMPABLE) == 1 }
}

/// Opens descriptor `fd` of process `pid` (a memfd of the pool).
pub(crate) fn open_peer_fd(pid: u32, fd: u32, write: bool) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .open(format!("/proc/{pid}/fd/{fd}"))
}

/// Reads this process's resident memory: `/proc/self/statm`, opened
/// while it can be (before a sandbox that may hide `/proc`).
#[derive(Debug)]
pub(crate) struct Resident {
    statm: File,
    page: u64,
}

impl Resident {
    pub(crate) fn open() -> io::Result<Resident> {
        // SAFETY: sysconf reads a constant of the system and has no
        // precondition.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Ok(Resident {
            statm: File::open("/proc/self/statm")?,
            page: u64::try_from(page).unwrap_or(4096),
        })
    }

    /// The resident memory now: `statm`'s second number, in pages.
    pub(crate) fn bytes(&self) -> Option<u64> {
        let mut buf = [0; 256];
        let n = rustix::io::pread(&self.statm, &mut buf, 0).ok()?;
        let text = std::str::from_utf8(&buf[..n]).ok()?;
        let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages.saturating_mul(self.page))
    }
}

/// Calls `call` again while a signal interrupts it.
pub(crate) fn retrying<T>(mut call: impl FnMut() -> rustix::io::Result<T>) -> std::io::Result<T> {
    loop {
        match call() {
            Ok(value) => return Ok(value),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Renames `from` to `to`, unless `to` exists (`RENAME_NOREPLACE`).
pub(crate) fn rename_new(from: &Path, to: &Path) -> io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        // A file system that cannot refuse to replace: check first, and
        // say that the name is taken, as `NOREPLACE` would.
        Err(Errno::INVAL) if to.exists() => Err(Errno::EXIST.into()),
        Err(Errno::INVAL) => std::fs::rename(from, to),
        Err(e) => Err(e.into()),
    }
}
