//! `idle_timeout`: workers with nothing to do exit (their pids go, reaped,
//! no zombies), the pool is not broken and does not spin meanwhile, and
//! workers start again on demand when work comes.
//!
//! The tests look at this process's children, so they run one at a time.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use buckshot::{Error, Pool};

const IDLE: Duration = Duration::from_secs(1);

/// How long idle workers may take to be gone past their idle timeout on a
/// loaded machine: a RETIRE frame, an exit and a reap.
const GONE_BOUND: Duration = Duration::from_secs(20);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn pid_of(x: u64) -> (u64, u32) {
    (x, std::process::id())
}
buckshot::register!(pid_of);

/// Naps `ms`, then says which worker ran it.
fn nap_pid(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}
buckshot::register!(nap_pid);

fn scaled(by: &u64, x: u64) -> u64 {
    x * by
}
buckshot::register!(scaled);

/// Announces its worker, then naps `ms`.
fn announce_and_nap((rendezvous, ms): (String, u64)) -> u32 {
    common::announce(&rendezvous);
    nap_pid(ms)
}
buckshot::register!(announce_and_nap);

/// This process's live children (the pool's workers: one pool at a time).
fn workers() -> BTreeSet<u32> {
    common::children()
        .into_iter()
        .filter(|&(_, state)| state != 'Z')
        .map(|(pid, _)| pid)
        .collect()
}

fn zombies() -> Vec<u32> {
    common::children()
        .into_iter()
        .filter(|&(_, state)| state == 'Z')
        .map(|(pid, _)| pid)
        .collect()
}

/// Waits until every one of `pids` is gone: exited and reaped.
fn wait_gone(pids: &BTreeSet<u32>, why: &str) {
    common::wait_until_within(why, GONE_BOUND, || {
        pids.iter().all(|&pid| !common::alive(pid))
    });
}

/// CPU time the pool's thread has used, in clock ticks.
fn pool_thread_ticks() -> u64 {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let dir = entry.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != "buckshot-pool" {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .collect();
        // utime and stime: fields 14 and 15 of stat, 12 and 13 after comm.
        let utime: u64 = fields[11].parse().unwrap();
        let stime: u64 = fields[12].parse().unwrap();
        found.push(utime + stime);
    }
    assert_eq!(found.len(), 1, "one pool thread");
    found[0]
}

#[test]
fn idle_workers_exit_and_come_back_when_a_map_comes() {
    let _serial = serial();
    let built = Instant::now();
    let pool = Arc::new(
        Pool::builder()
            .processes(2)
            .idle_timeout(IDLE)
            .build()
            .unwrap(),
    );
    // Spawned by the build.
    let before = workers();
    assert_eq!(before.len(), 2, "{before:?}");
    let results: Vec<(u64, u32)> = common::within("a first map", {
        let pool = Arc::clone(&pool);
        move || {
            pool.map(pid_of, 0..8)
                .unwrap()
                .map(Result::unwrap)
                .collect()
        }
    });
    assert_eq!(
        results.iter().map(|&(x, _)| x).collect::<Vec<_>>(),
        (0..8).collect::<Vec<_>>()
    );
    assert!(results.iter().all(|(_, pid)| before.contains(pid)));
    wait_gone(&before, "idle workers exit");
    // Idle since their handshake at the earliest, so not before this.
    assert!(built.elapsed() >= IDLE, "gone after {:?}", built.elapsed());
    assert!(workers().is_empty(), "{:?}", workers());
    assert!(zombies().is_empty(), "zombies: {:?}", zombies());
    // Neither broken nor spinning while it has no workers.
    let debug = format!("{pool:?}");
    assert!(debug.contains("phase: Open"), "{debug}");
    let ticks = pool_thread_ticks();
    let window = Instant::now();
    while window.elapsed() < Duration::from_millis(500) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let spent = pool_thread_ticks() - ticks;
    assert!(spent <= 5, "the pool's thread used {spent} ticks in 500 ms");
    assert!(workers().is_empty(), "{:?}", workers());
    // Work comes: workers start again, and serve it with its context.
    let results: Vec<u64> = common::within("a map on an idle pool", {
        let pool = Arc::clone(&pool);
        move || {
            pool.with_context(&3u64)
                .map(scaled, 0..100)
                .unwrap()
                .map(Result::unwrap)
                .collect()
        }
    });
    assert_eq!(results, (0..100).map(|x| x * 3).collect::<Vec<_>>());
    let after = workers();
    assert!(!after.is_empty() && after.len() <= 2, "{after:?}");
    assert!(before.is_disjoint(&after), "{before:?} then {after:?}");
    // And they go again.
    wait_gone(&after, "workers that came back exit when idle again");
    assert!(zombies().is_empty(), "zombies: {:?}", zombies());
}

#[test]
fn an_idle_worker_goes_while_another_runs_a_long_task() {
    let _serial = serial();
    let pool = Arc::new(
        Pool::builder()
            .processes(2)
            .batch_size(1)
            .idle_timeout(IDLE)
            .build()
            .unwrap(),
    );
    let all = workers();
    assert_eq!(all.len(), 2, "{all:?}");
    let rendezvous = common::Rendezvous::new();
    let path = rendezvous.path();
    let long = std::thread::spawn({
        let pool = Arc::clone(&pool);
        move || pool.call(announce_and_nap, (path, 4000))
    });
    let busy = rendezvous.wait();
    let idle: BTreeSet<u32> = all.iter().copied().filter(|&pid| pid != busy).collect();
    wait_gone(&idle, "the idle worker exits");
    assert!(
        common::alive(busy),
        "the busy worker {busy} stays while it runs its task"
    );
    let ran_on = common::within("the long call", move || long.join().unwrap()).unwrap();
    assert_eq!(ran_on, busy);
    wait_gone(&[busy].into(), "the busy worker exits once idle");
    // Many inputs: both workers come back, and share them.
    let pids: Vec<u32> = common::within("a map on an idle pool", {
        let pool = Arc::clone(&pool);
        move || {
            pool.map(nap_pid, vec![100; 10])
                .unwrap()
                .map(Result::unwrap)
                .collect()
        }
    });
    let ran: BTreeSet<u32> = pids.into_iter().collect();
    assert_eq!(ran.len(), 2, "inputs ran on {ran:?}");
    assert!(ran.is_disjoint(&all), "{all:?} then {ran:?}");
    wait_gone(&ran, "they exit when idle again");
    assert!(zombies().is_empty(), "zombies: {:?}", zombies());
}

#[test]
fn one_call_on_an_idle_pool_starts_one_worker() {
    let _serial = serial();
    let pool = Arc::new(
        Pool::builder()
            .processes(4)
            .idle_timeout(IDLE)
            .build()
            .unwrap(),
    );
    let first = workers();
    assert_eq!(first.len(), 4, "{first:?}");
    wait_gone(&first, "idle workers exit");
    let (_, ran_on) = common::within("a call on an idle pool", {
        let pool = Arc::clone(&pool);
        move || pool.call(pid_of, 7)
    })
    .unwrap();
    // Its worker is still there (idle for less than its timeout), alone.
    assert_eq!(workers(), [ran_on].into());
    wait_gone(&[ran_on].into(), "it exits when idle");
    assert!(zombies().is_empty(), "zombies: {:?}", zombies());
}

#[test]
fn a_zero_idle_timeout_is_refused() {
    let error = Pool::builder()
        .processes(1)
        .idle_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(matches!(error, Error::Config { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "invalid pool configuration: idle_timeout must be greater than zero"
    );
}
