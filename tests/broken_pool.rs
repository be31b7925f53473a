//! An idle pool, and a pool that gave up because workers cannot be spawned,
//! must not wake up: their thread sleeps until something happens. And the
//! reason a pool gives up says what happened. One test in this binary: it
//! lowers this process's file limit, and it watches the one pool thread.

mod common;

use std::time::Duration;

use buckshot::{Error, Pool};
use rustix::process::{Resource, Rlimit};

fn pid_of(_: u64) -> u32 {
    std::process::id()
}
buckshot::register!(pid_of);

/// The thread id of this process's one pool thread. The threads it starts
/// bear its name until they give themselves theirs, when they first run.
fn pool_thread() -> u32 {
    let named = || {
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            if comm.trim() == "buckshot-pool" {
                found.push(entry.file_name().to_string_lossy().parse().unwrap());
            }
        }
        found
    };
    common::wait_until("one thread named buckshot-pool", || named().len() == 1);
    named()[0]
}

/// How often thread `tid` was scheduled, and for how long it ran, in total.
fn activity(tid: u32) -> (u64, Duration) {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
    let switches: u64 = status
        .lines()
        .filter(|line| line.contains("ctxt_switches"))
        .map(|line| {
            line.split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    let schedstat = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).unwrap();
    let ran: u64 = schedstat
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    (switches, Duration::from_nanos(ran))
}

/// Watches thread `tid` for `period` (a measurement, not a synchronisation)
/// and returns its wake-ups and run time in that period.
fn watch(tid: u32, period: Duration) -> (u64, Duration) {
    let (switches, ran) = activity(tid);
    std::thread::sleep(period);
    let (switches_after, ran_after) = activity(tid);
    (switches_after - switches, ran_after - ran)
}

fn assert_asleep(what: &str, tid: u32) {
    let (wakeups, ran) = watch(tid, Duration::from_secs(1));
    eprintln!("{what}: {wakeups} wake-ups, {ran:?} on a CPU in 1 s");
    assert!(
        wakeups <= 5 && ran < Duration::from_millis(20),
        "{what}: the pool thread woke {wakeups} times and ran {ran:?} in 1 s"
    );
}

#[test]
fn idle_and_broken_pools_sleep_and_say_why() {
    // Counted with the descriptor that reads the count: that one's number
    // is where the pool's doorbell goes, and the worker's pipes come next.
    let fds_before_pool = common::open_fds() as u64;
    let pool = Pool::new(1).unwrap();
    let worker = pool.map(pid_of, [0]).unwrap().next().unwrap().unwrap();
    let tid = pool_thread();
    assert_asleep("an idle pool", tid);

    // No descriptor to spare: the replacement of a killed worker cannot be
    // spawned, again and again, and the pool gives up.
    let before = rustix::process::getrlimit(Resource::Nofile);
    let tight = Rlimit {
        current: Some(fds_before_pool),
        maximum: before.maximum,
    };
    rustix::process::setrlimit(Resource::Nofile, tight).unwrap();
    common::kill9(worker);
    let mut error = None;
    common::wait_until("the pool gives up", || match pool.map(pid_of, [0]) {
        Err(e) => {
            error = Some(e);
            true
        }
        Ok(_) => false,
    });
    rustix::process::setrlimit(Resource::Nofile, before).unwrap();
    assert_asleep("a broken pool", tid);
    let error = error.unwrap();
    assert!(matches!(error, Error::Startup { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "workers fail to start: 5 attempts in a row to spawn a worker failed; \
         last: Too many open files (os error 24)"
    );
    drop(pool);
    assert_eq!(common::children(), [], "workers remain");
}
