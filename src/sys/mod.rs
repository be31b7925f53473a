//! Everything that differs between platforms, and nothing else: the rest
//! of the crate calls these, never the system's Linux-only parts.
//!
//! - [`linux`](self) (the native backend, on Linux): pidfds name workers
//!   and wake the event loop (epoll) when they exit, an eventfd is the
//!   doorbell, the parent-death signal ends workers with the pool,
//!   `/proc/self/exe` is the binary, memfds carry long strings.
//! - [`unix`](self) (the portable backend, on macOS and FreeBSD, and on
//!   Linux with `--cfg buckshot_portable`, which runs the test suite
//!   against it): only what POSIX and those systems have. A worker's death
//!   shows as its pipes closing, and an exit sweep (`waitid` without
//!   reaping, no SIGCHLD handler) finds the rest; the loop is the
//!   `polling` crate (kqueue, or epoll), the doorbell a pipe, the binary
//!   `std::env::current_exe()`; the worker's watchdog on its request
//!   stream is its only parent-death signal; long strings go inline.
//! - `os`: what follows the operating system whichever backend runs it
//!   (how a privileged process is told, which resource limit is a memory
//!   limit, how resident memory is read).
//!
//! The build script sets `cfg(buckshot_native)` for the native backend.

#[cfg(buckshot_native)]
#[path = "linux.rs"]
mod imp;
#[cfg(not(buckshot_native))]
#[path = "unix.rs"]
mod imp;
mod os;

pub(crate) use imp::*;
pub(crate) use os::*;

impl ChildHandle {
    /// Whether it exited (reaped or not).
    pub(crate) fn has_exited(&self) -> bool {
        !matches!(self.peek(), Ok(None))
    }

    /// Waits until it exits (reaped or not), or `deadline`; whether it did.
    /// Without a descriptor that polls readable at its exit, it looks again
    /// after 1 ms, then twice as long each time, up to 10 ms.
    pub(crate) fn wait_exit(&self, deadline: std::time::Instant) -> bool {
        use rustix::event::{PollFd, PollFlags, Timespec};
        let mut pause = std::time::Duration::from_millis(1);
        loop {
            if self.has_exited() {
                return true;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            let Some(fd) = self.exit_fd() else {
                std::thread::sleep(pause.min(left));
                pause = (pause * 2).min(std::time::Duration::from_millis(10));
                continue;
            };
            let mut fds = [PollFd::new(&fd, PollFlags::IN)];
            let timeout = Timespec::try_from(left).expect("a bound that fits");
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(_) => return false,
            }
        }
    }
}

/// What a registration in a [`Poller`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interest {
    /// Input, or the end of it.
    Read,
    /// Room to write.
    Write,
}

#[cfg(not(target_os = "freebsd"))]
/// Closes the descriptors `first..=last` that `dir` (`/proc/self/fd`,
/// `/dev/fd`) lists.
fn close_listed(dir: &std::path::Path, first: u32, last: u32) -> std::io::Result<()> {
    let open: Vec<u32> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| (first..=last).contains(fd))
        .collect();
    for fd in open {
        // SAFETY: close takes a plain integer; the caller owns every
        // descriptor in the range. The listing's own descriptor is closed
        // already and fails with EBADF, which is ignored.
        unsafe { libc::close(fd as std::os::fd::RawFd) };
    }
    Ok(())
}

#[cfg(not(target_os = "freebsd"))]
/// How many descriptors `dir` (`/proc/self/fd`, `/dev/fd`) lists; its own
/// is counted too, a little headroom.
fn count_listed(dir: &std::path::Path) -> Option<u64> {
    Some(std::fs::read_dir(dir).ok()?.count() as u64)
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, AsRawFd, RawFd};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use super::*;

    /// Whether descriptor `fd` is open in this process.
    fn is_open(fd: RawFd) -> bool {
        // SAFETY: F_GETFD on any number touches no memory.
        unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
    }

    /// Four copies of one file at `base`, `base + 10`, ..., numbers that
    /// nothing else of the test process uses.
    fn copies(base: RawFd) -> Vec<RawFd> {
        let file = std::fs::File::open("/dev/null").unwrap();
        (0..4)
            .map(|k| {
                // SAFETY: duplicates a descriptor the test owns.
                unsafe { libc::fcntl(file.as_raw_fd(), libc::F_DUPFD, base + k * 10) }
            })
            .collect()
    }

    #[test]
    fn descriptors_in_the_range_are_closed_and_no_others() {
        let fds = copies(700);
        assert_eq!(fds, [700, 710, 720, 730]);
        close_range(705, 720).unwrap();
        let open: Vec<bool> = fds.iter().map(|&fd| is_open(fd)).collect();
        assert_eq!(open, [true, false, false, true]);
        close_range(700, 730).unwrap();
        assert!(!is_open(700) && !is_open(730));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn listed_descriptors_in_the_range_are_closed_and_no_others() {
        for (dir, base) in [("/proc/self/fd", 800), ("/dev/fd", 900)] {
            let fds = copies(base);
            close_listed(std::path::Path::new(dir), base as u32 + 5, base as u32 + 20).unwrap();
            let open: Vec<bool> = fds.iter().map(|&fd| is_open(fd)).collect();
            assert_eq!(open, [true, false, false, true], "{dir}");
            close_listed(std::path::Path::new(dir), base as u32, base as u32 + 30).unwrap();
            assert!(!is_open(base) && !is_open(base + 30), "{dir}");
        }
    }

    #[test]
    fn open_descriptors_are_counted() {
        // Other tests open and close descriptors meanwhile: only what this
        // one holds (and stdio) is sure to be open.
        let files: Vec<_> = (0..100)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let counted = open_fds();
        assert!(counted >= 103, "{counted}");
        drop(files);
    }

    fn readable(fd: std::os::fd::BorrowedFd<'_>) -> bool {
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        rustix::event::poll(&mut fds, Some(&zero)).unwrap() == 1
    }

    #[test]
    fn a_doorbell_rings_until_cleared() {
        let bell = Doorbell::new().unwrap();
        assert!(!readable(bell.fd()));
        bell.ring();
        bell.ring();
        assert!(readable(bell.fd()));
        bell.clear();
        assert!(!readable(bell.fd()), "one clear takes every ring");
    }

    /// A child that runs until killed (or for 30 s).
    fn sleeper() -> std::process::Child {
        Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .unwrap()
    }

    #[test]
    fn a_child_is_seen_exiting_killed_and_reaped_once() {
        let mut child = sleeper();
        let handle = ChildHandle::open(&child).unwrap();
        assert!(matches!(handle.peek(), Ok(None)));
        assert!(!handle.wait_exit(Instant::now() + Duration::from_millis(30)));
        handle.kill().unwrap();
        assert!(handle.wait_exit(Instant::now() + Duration::from_secs(10)));
        // Seen, not reaped: the zombie keeps its pid.
        assert!(handle.has_exited());
        assert!(handle.peek().unwrap().is_some());
        let status = handle.reap().unwrap().expect("exited");
        assert_eq!(status.terminating_signal(), Some(libc::SIGKILL));
        assert!(handle.peek().is_err(), "reaped");
        assert!(handle.kill().is_err(), "nothing is signalled once reaped");
        assert!(child.try_wait().is_err(), "reaped, by us");
    }

    #[test]
    fn a_watched_exit_is_reported_until_unwatched() {
        let mut poller = Poller::new().unwrap();
        let (read, write) = pipe_cloexec().unwrap();
        poller.add(read.as_fd(), 7, Interest::Read).unwrap();
        let mut child = sleeper();
        let handle = ChildHandle::open(&child).unwrap();
        poller.watch_exit(&handle, 42).unwrap();
        let mut ready = Vec::new();
        poller
            .wait(Some(Duration::from_millis(20)), &mut ready)
            .unwrap();
        assert_eq!(ready, [], "a running child");
        child.kill().unwrap();
        // Long enough for any backend; it returns as soon as it is seen.
        let start = Instant::now();
        poller
            .wait(Some(Duration::from_secs(10)), &mut ready)
            .unwrap();
        assert_eq!(ready, [42], "seen exiting");
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        ready.clear();
        poller.rekey_exit(&handle, 43).unwrap();
        poller.wait(Some(Duration::ZERO), &mut ready).unwrap();
        poller
            .wait(Some(Duration::from_secs(10)), &mut ready)
            .unwrap();
        assert!(ready.contains(&43), "level-triggered, under its new token");
        ready.clear();
        poller.unwatch_exit(&handle);
        rustix::io::write(&write, b"x").unwrap();
        poller
            .wait(Some(Duration::from_secs(10)), &mut ready)
            .unwrap();
        assert_eq!(ready, [7], "gone once unwatched; a pipe still reported");
        poller.delete(read.as_fd()).unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn a_new_name_is_taken_and_a_taken_one_refused() {
        let dir = std::env::temp_dir().join(format!("buckshot-rename-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (from, to) = (dir.join("from"), dir.join("to"));
        std::fs::write(&from, "new").unwrap();
        std::fs::write(&to, "old").unwrap();
        let refused = rename_new(&from, &to).unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&to).unwrap(), "old");
        std::fs::remove_file(&to).unwrap();
        rename_new(&from, &to).unwrap();
        assert_eq!(std::fs::read_to_string(&to).unwrap(), "new");
        assert!(!from.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
