//! When the parent is killed with SIGKILL, its workers exit within a second,
//! idle or busy, and so do the workers of a pool that one of its tasks made
//! (grand-workers). This binary runs twice: as the test, and (with the
//! variable below set) as the parent that the test kills.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags};

const PARENT_ENV: &str = "BUCKSHOT_TEST_PARENT_TO_KILL";

/// Takes a few milliseconds, so that both workers of the parent's pool run
/// some of them.
fn slow_pid_of(_: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(3));
    std::process::id()
}
buckshot::register!(slow_pid_of);

fn announce_and_hang(rendezvous: String) -> u32 {
    common::announce(&rendezvous);
    common::hang()
}
buckshot::register!(announce_and_hang);

/// Makes a pool of two inside a worker, whose tasks announce their
/// grand-workers and hang; never returns.
fn nest(rendezvous: String) -> u32 {
    let pool = buckshot::Pool::new(2).expect("a pool inside a worker");
    let _ = pool
        .map(announce_and_hang, vec![rendezvous; 2])
        .expect("nested map")
        .count();
    common::hang()
}
buckshot::register!(nest);

/// What the parent's workers do once it has printed their pids.
#[derive(Clone, Copy, Debug)]
enum Load {
    /// Nothing.
    Idle,
    /// Both hang in a task.
    Busy,
    /// Both run a task that maps on a pool of its own, whose two workers
    /// hang in a task.
    Nested,
}

impl Load {
    fn name(self) -> &'static str {
        match self {
            Load::Idle => "idle",
            Load::Busy => "busy",
            Load::Nested => "nested",
        }
    }

    fn from_name(name: &str) -> Load {
        match name {
            "idle" => Load::Idle,
            "busy" => Load::Busy,
            "nested" => Load::Nested,
            other => panic!("unknown load {other}"),
        }
    }

    /// Processes that announce themselves at the rendezvous once the load
    /// is in place.
    fn announcements(self) -> usize {
        match self {
            Load::Idle => 0,
            Load::Busy => 2,
            Load::Nested => 4,
        }
    }
}

/// The parent to kill: prints its workers' pids, then puts `load` on them.
fn parent(load: Load, rendezvous: String) {
    let pool = buckshot::Pool::new(2).unwrap();
    let mut pids: Vec<u32> = pool
        .map(slow_pid_of, 0..40)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    pids.sort();
    pids.dedup();
    let line: Vec<String> = pids.iter().map(u32::to_string).collect();
    println!("{}", line.join(" "));
    match load {
        Load::Idle => {}
        Load::Busy => {
            let _ = pool
                .map(announce_and_hang, vec![rendezvous; 2])
                .unwrap()
                .count();
        }
        Load::Nested => {
            let _ = pool.map(nest, vec![rendezvous; 2]).unwrap().count();
        }
    }
    common::hang();
}

/// Waits until `deadline` for process `pid` (not our child) to exit. Only
/// ESRCH from `pidfd_open` means it is gone already; any other error fails.
fn exits_by(pid: u32, deadline: Instant) -> bool {
    let pidfd = match rustix::process::pidfd_open(
        Pid::from_raw(pid as i32).expect("a positive pid"),
        PidfdFlags::empty(),
    ) {
        Ok(pidfd) => pidfd,
        Err(Errno::SRCH) => return true,
        Err(e) => panic!("pidfd_open({pid}): {e}"),
    };
    let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
    let left = deadline.saturating_duration_since(Instant::now());
    let timeout = Timespec::try_from(left).unwrap();
    loop {
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(ready) => return ready == 1,
            Err(Errno::INTR) => continue,
            Err(e) => panic!("poll on the pidfd of {pid}: {e}"),
        }
    }
}

/// The parent process; killed and reaped when dropped, so that a failing
/// test leaves nothing behind.
struct Parent(Child);

impl Drop for Parent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn workers_follow_their_parent(load: Load, test_name: &str, bound: Duration) {
    let rendezvous = common::Rendezvous::new();
    let mut parent = Parent(
        Command::new(std::env::current_exe().unwrap())
            .env(PARENT_ENV, format!("{} {}", load.name(), rendezvous.path()))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = parent.0.stdout.take().unwrap();
    let line = common::within("the parent's report", move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    });
    let workers: Vec<u32> = line
        .split_whitespace()
        .map(|pid| pid.parse().unwrap())
        .collect();
    assert_eq!(
        workers.len(),
        2,
        "the parent's pool of 2 reported these workers: {line:?}"
    );
    let announced: Vec<u32> = (0..load.announcements())
        .map(|_| rendezvous.wait())
        .collect();
    let grand_workers: Vec<u32> = match load {
        Load::Nested => {
            let mut distinct = announced.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(distinct.len(), 4, "grand-workers: {announced:?}");
            assert!(
                announced.iter().all(|pid| !workers.contains(pid)),
                "grand-workers {announced:?} among the workers {workers:?}"
            );
            announced
        }
        _ => {
            assert!(
                announced.iter().all(|pid| workers.contains(pid)),
                "busy workers {announced:?} not among {workers:?}"
            );
            Vec::new()
        }
    };
    parent.0.kill().unwrap();
    parent.0.wait().unwrap();
    let killed = Instant::now();
    let deadline = killed + bound;
    let survivors: Vec<String> = workers
        .iter()
        .map(|pid| (pid, "worker"))
        .chain(grand_workers.iter().map(|pid| (pid, "grand-worker")))
        .filter(|&(&pid, _)| !exits_by(pid, deadline))
        .map(|(&pid, what)| {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            format!("{what} {pid}")
        })
        .collect();
    assert!(
        survivors.is_empty(),
        "outlived the parent by {bound:?} (now killed): {}",
        survivors.join(", ")
    );
    let took = killed.elapsed();
    println!("test {test_name} ... ok ({took:?})");
}

fn main() {
    if let Some(how) = std::env::var_os(PARENT_ENV) {
        let how = how.into_string().unwrap();
        let (load, rendezvous) = how.split_once(' ').unwrap();
        parent(Load::from_name(load), rendezvous.to_owned());
        return;
    }
    let second = Duration::from_secs(1);
    workers_follow_their_parent(
        Load::Idle,
        "workers_exit_when_their_parent_is_killed (0 busy)",
        second,
    );
    workers_follow_their_parent(
        Load::Busy,
        "workers_exit_when_their_parent_is_killed (2 busy)",
        second,
    );
    workers_follow_their_parent(
        Load::Nested,
        "grand_workers_exit_when_the_parent_is_killed",
        2 * second,
    );
    println!();
    println!("test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}
