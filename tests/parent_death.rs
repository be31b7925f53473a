//! When the parent is killed with SIGKILL, its workers exit within a second,
//! idle or busy. This binary runs twice: as the test, and (with the variable
//! below set) as the parent that the test kills.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::{Pid, PidfdFlags};

const PARENT_ENV: &str = "BUCKSHOT_TEST_PARENT_TO_KILL";

fn pid_of(_: u64) -> u32 {
    std::process::id()
}
buckshot::register!(pid_of);

fn announce_and_hang(rendezvous: String) -> u32 {
    common::announce(&rendezvous);
    common::hang()
}
buckshot::register!(announce_and_hang);

/// The parent to kill: prints its workers' pids, then keeps `busy` of them
/// inside a task that never ends.
fn parent(busy: usize, rendezvous: String) {
    let pool = buckshot::Pool::new(2).unwrap();
    let mut pids: Vec<u32> = pool
        .map(pid_of, 0..200)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    pids.sort();
    pids.dedup();
    let line: Vec<String> = pids.iter().map(u32::to_string).collect();
    println!("{}", line.join(" "));
    let _ = pool
        .map(announce_and_hang, vec![rendezvous; busy])
        .unwrap()
        .count();
    common::hang();
}

/// Waits at most `bound` for process `pid` (not our child) to exit.
fn exits_within(pid: u32, bound: Duration) -> bool {
    let Ok(pidfd) =
        rustix::process::pidfd_open(Pid::from_raw(pid as i32).unwrap(), PidfdFlags::empty())
    else {
        return true; // already gone
    };
    let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
    let timeout = Timespec::try_from(bound).unwrap();
    rustix::event::poll(&mut fds, Some(&timeout)).unwrap() == 1
}

fn workers_follow_their_parent(busy: usize) {
    let rendezvous = common::Rendezvous::new();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(PARENT_ENV, format!("{busy} {}", rendezvous.path()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = common::within("the parent's report", move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    });
    let workers: Vec<u32> = line
        .split_whitespace()
        .map(|pid| pid.parse().unwrap())
        .collect();
    assert!(!workers.is_empty(), "no worker pids from the parent");
    for _ in 0..busy {
        rendezvous.wait();
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = Instant::now();
    for pid in workers {
        assert!(
            exits_within(pid, Duration::from_secs(1)),
            "worker {pid} outlived its parent by 1 s"
        );
    }
    let took = killed.elapsed();
    println!("test workers_exit_when_their_parent_is_killed ({busy} busy) ... ok ({took:?})");
}

fn main() {
    if let Some(how) = std::env::var_os(PARENT_ENV) {
        let how = how.into_string().unwrap();
        let (busy, rendezvous) = how.split_once(' ').unwrap();
        parent(busy.parse().unwrap(), rendezvous.to_owned());
        return;
    }
    workers_follow_their_parent(0);
    workers_follow_their_parent(2);
    println!();
    println!("test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}
