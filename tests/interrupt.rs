//! When the program is interrupted (Ctrl-C: SIGINT to its process group) or
//! killed, its workers go, and so does what their tasks started, although
//! workers lead process groups of their own.
//!
//! This binary runs twice: as the test, and (with the variable below set)
//! as the program to interrupt.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HOST_ENV: &str = "BUCKSHOT_TEST_HOST_TO_INTERRUPT";

/// Starts `sleep 60` and returns its pid and this worker's.
fn start_sleeper(_: u64) -> (u32, u32) {
    let sleeper = Command::new("sleep").arg("60").spawn().unwrap().id();
    (sleeper, std::process::id())
}
buckshot::register!(start_sleeper);

/// The program: one worker starts a sleeper; prints both pids, then waits
/// to be interrupted.
fn host() {
    // As a program started from a terminal: Ctrl-C ends it. (A test run in
    // the background of a shell inherits SIGINT ignored.)
    // SAFETY: setting a disposition to its default runs no code of ours.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
    let pool = buckshot::Pool::new(1).unwrap();
    let (sleeper, worker) = pool
        .map(start_sleeper, [0u64])
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    println!("{sleeper} {worker}");
    common::hang();
}

/// The program, killed if the test fails before it ends.
struct Host(Child);

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn interrupted_with(signal: i32, name: &str) {
    // In a process group of its own, as a shell starts a job.
    let mut host = Host(
        Command::new(std::env::current_exe().unwrap())
            .env(HOST_ENV, "1")
            .process_group(0)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = host.0.stdout.take().unwrap();
    let line = common::within("the program's report", move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    });
    let pids: Vec<u32> = line
        .split_whitespace()
        .map(|pid| pid.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2, "the program reported: {line:?}");
    let started = Instant::now();
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(-(host.0.id() as i32), signal) }, 0);
    let pid = host.0.id();
    assert!(
        common::exits_within(pid, common::BOUND),
        "the program did not end on {name}"
    );
    for (pid, what) in pids.iter().zip(["the task's sleeper", "the worker"]) {
        let gone = common::exits_within(*pid, Duration::from_secs(2));
        if !gone {
            common::kill9(*pid);
        }
        assert!(gone, "{what} {pid} outlived the program's {name} by 2 s");
    }
    println!(
        "test subprocesses_go_when_the_program_gets_{name} ... ok ({:?})",
        started.elapsed()
    );
}

fn main() {
    if std::env::var_os(HOST_ENV).is_some() {
        host();
        return;
    }
    interrupted_with(libc::SIGINT, "sigint");
    interrupted_with(libc::SIGKILL, "sigkill");
    println!();
    println!("test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}
