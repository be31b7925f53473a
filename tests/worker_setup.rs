//! What a pool sets up in its workers and only there: an initializer run
//! once in each worker and each replacement (never here), whose panic or
//! exit breaks the pool with its message and whose time counts against no
//! task's timeout; variables in workers' environment; and workers retired
//! when their resident memory grows past `max_worker_rss`, with no input
//! failing and nothing left behind.
//!
//! The tests count this process's children: they run one at a time.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use buckshot::{Error, Launcher, Pool};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serialised() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// How many times an initializer ran in this process.
static INITIALIZED: AtomicU32 = AtomicU32::new(0);

/// The file in which the initializer `name` of workers of the process
/// `parent` writes their pids.
fn log_of(name: &str, parent: u32) -> PathBuf {
    std::env::temp_dir().join(format!("buckshot-setup-{name}-{parent}"))
}

/// Counts itself and writes its worker's pid in its log.
fn note_pid() {
    INITIALIZED.fetch_add(1, Ordering::SeqCst);
    let log = log_of("note", std::os::unix::process::parent_id());
    common::note(&log.to_string_lossy(), u64::from(std::process::id()));
}
buckshot::register!(note_pid);

/// Its worker's pid, and how many times an initializer ran there.
fn pid_and_runs(_: u64) -> (u32, u32) {
    (std::process::id(), INITIALIZED.load(Ordering::SeqCst))
}
buckshot::register!(pid_and_runs);

fn broken_setup() {
    panic!("no model at /nowhere");
}
buckshot::register!(broken_setup);

fn exiting_setup() {
    std::process::exit(3);
}
buckshot::register!(exiting_setup);

fn slow_setup() {
    std::thread::sleep(Duration::from_millis(500));
}
buckshot::register!(slow_setup);

/// Never registered.
fn unregistered_setup() {}

/// Installs a subscriber of its own, as a program's `main` would: that
/// panics if the worker installed one before.
fn install_subscriber() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
}
buckshot::register!(install_subscriber);

fn log_and_return(x: u64) -> u64 {
    tracing::info!(x, "from a task");
    x
}
buckshot::register!(log_and_return);

/// Quick, except for input 2, which hangs.
fn hang_at_two(x: u64) -> u64 {
    if x == 2 {
        common::hang();
    }
    x
}
buckshot::register!(hang_at_two);

fn env_of(name: String) -> Option<String> {
    std::env::var(&name).ok()
}
buckshot::register!(env_of);

/// The pids in a log, in order.
fn pids_in(log: &std::path::Path) -> Vec<u32> {
    common::runs(log)
        .into_iter()
        .map(|pid| pid as u32)
        .collect()
}

/// Removes a log, now and when dropped.
struct Log(PathBuf);

impl Log {
    fn new(name: &str) -> Log {
        let path = log_of(name, std::process::id());
        let _ = std::fs::remove_file(&path);
        Log(path)
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn an_initializer_runs_once_in_each_worker_and_each_replacement_and_never_here() {
    let _one = serialised();
    let log = Log::new("note");
    let pool = Pool::builder()
        .processes(2)
        .initializer(note_pid)
        .build()
        .unwrap();
    // Each worker runs it before its handshake, hence before any task.
    common::wait_until("both workers initialized", || pids_in(&log.0).len() >= 2);
    let mut first = pids_in(&log.0);
    first.sort();
    let mut workers: Vec<u32> = common::children().into_iter().map(|(pid, _)| pid).collect();
    workers.sort();
    assert_eq!(first, workers, "one run per worker");
    let seen: Vec<(u32, u32)> = pool
        .map(pid_and_runs, 0..50)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (pid, runs) in &seen {
        assert!(first.contains(pid), "worker {pid} did not initialize");
        assert_eq!(*runs, 1, "worker {pid} initialized {runs} times");
    }
    // A worker killed from outside is replaced, and its replacement runs
    // it too.
    let victim = first[0];
    common::kill9(victim);
    common::assert_worker_gone(victim, "killed from outside");
    common::wait_until("the replacement initialized", || pids_in(&log.0).len() == 3);
    let replacement = pids_in(&log.0)[2];
    assert!(!first.contains(&replacement));
    let survivor = first[1];
    let mut now: Vec<u32> = common::children().into_iter().map(|(pid, _)| pid).collect();
    now.sort();
    let mut expected = vec![survivor, replacement];
    expected.sort();
    assert_eq!(now, expected, "the workers now");
    let seen: Vec<(u32, u32)> = pool
        .map(pid_and_runs, 0..50)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(
        seen.iter()
            .all(|&(pid, runs)| expected.contains(&pid) && runs == 1)
    );
    drop(pool);
    // Never in this process.
    assert_eq!(INITIALIZED.load(Ordering::SeqCst), 0);
    assert!(!pids_in(&log.0).contains(&std::process::id()));
    assert_eq!(
        pids_in(&log.0).len(),
        3,
        "runs in all: {:?}",
        pids_in(&log.0)
    );
}

/// Maps on a pool built by `builder` whose every worker fails to start,
/// and checks that the pool gives up with `reason`.
fn gives_up(builder: buckshot::PoolBuilder, reason: &str) {
    let pool = Arc::new(builder.processes(2).forward_stderr(false).build().unwrap());
    let first = common::within("the first map", {
        let pool = Arc::clone(&pool);
        move || {
            pool.map(pid_and_runs, 0..3)
                .map(|results| results.collect::<Vec<_>>())
        }
    });
    // The pool may give up before or after the map starts.
    match first {
        Ok(results) => {
            assert_eq!(results.len(), 3);
            for (index, result) in results.iter().enumerate() {
                match result {
                    Err(Error::PoolClosed {
                        index: i,
                        reason: Some(r),
                        ..
                    }) => assert_eq!((*i, r.as_str()), (index, reason)),
                    other => panic!("input {index}: {other:?}"),
                }
            }
        }
        Err(error) => assert_eq!(
            error.to_string(),
            format!("workers fail to start: {reason}")
        ),
    }
    let error = pool.map(pid_and_runs, [0]).unwrap_err();
    assert!(matches!(error, Error::Startup { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!("workers fail to start: {reason}")
    );
}

#[test]
fn an_initializer_that_panics_breaks_the_pool_with_its_message() {
    let _one = serialised();
    gives_up(
        Pool::builder().initializer(broken_setup),
        "5 workers in a row died before their handshake; last: exit status: 101: \
         buckshot worker: initializer `worker_setup::broken_setup` panicked: no model at /nowhere",
    );
}

#[test]
fn an_initializer_that_exits_says_so() {
    let _one = serialised();
    gives_up(
        Pool::builder().initializer(exiting_setup),
        "5 workers in a row died before their handshake; last: exit status: 3: \
         buckshot worker: initializer `worker_setup::exiting_setup` exited before the worker served",
    );
}

#[test]
fn an_initializer_counts_against_no_tasks_timeout() {
    let _one = serialised();
    let pool = Pool::builder()
        .processes(1)
        .initializer(slow_setup)
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    // Input 2 times out, and its worker's replacement initializes for
    // 500 ms before the inputs after it run.
    let results: Vec<_> = common::within("quick inputs on a slow start", move || {
        pool.map(hang_at_two, 0..5).unwrap().collect::<Vec<_>>()
    });
    assert_eq!(results.len(), 5);
    for (index, result) in results.into_iter().enumerate() {
        match (index, result) {
            (2, Err(Error::TaskTimeout { index: 2, .. })) => {}
            (_, Ok(x)) if x == index as u64 => {}
            (_, other) => panic!("input {index}: {other:?}"),
        }
    }
}

#[test]
fn an_initializer_may_install_its_own_subscriber() {
    let _one = serialised();
    // This thread's subscriber wants workers' events: a worker installs
    // its own, which must give way.
    let here = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(std::io::sink)
        .finish();
    let pool = tracing::subscriber::with_default(here, || {
        Pool::builder()
            .processes(1)
            .initializer(install_subscriber)
            .forward_stderr(false)
            .build()
            .unwrap()
    });
    let out = common::within("a call", move || pool.call(log_and_return, 7));
    assert_eq!(out.unwrap(), 7);
}

#[test]
fn an_unregistered_initializer_fails_the_build() {
    let _one = serialised();
    let error = Pool::builder()
        .initializer(unregistered_setup)
        .build()
        .unwrap_err();
    assert!(matches!(error, Error::NotRegistered { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "task `worker_setup::unregistered_setup` is not registered (missing `buckshot::register!`?)"
    );
}

const VALUE: &str = "one two 'three' \"four\" $FIVE = six";

#[test]
fn variables_are_set_in_workers_only() {
    let _one = serialised();
    let pool = Pool::builder()
        .processes(1)
        .env("SETUP_TEST_A", VALUE)
        .env("SETUP_TEST_B", "first")
        .env("SETUP_TEST_B", "second")
        .build()
        .unwrap();
    let a = pool.call(env_of, "SETUP_TEST_A".to_owned()).unwrap();
    let builder = Pool::builder().env("SECRET", "hunter2");
    let shown = format!("{builder:?}");
    assert!(shown.contains("env: [\"SECRET\"]"), "{shown}");
    assert!(!shown.contains("hunter2"), "a value is not shown: {shown}");
    assert_eq!(a.as_deref(), Some(VALUE));
    let b = pool.call(env_of, "SETUP_TEST_B".to_owned()).unwrap();
    assert_eq!(
        b.as_deref(),
        Some("second"),
        "a key set again takes the new value"
    );
    assert_eq!(
        std::env::var_os("SETUP_TEST_A"),
        None,
        "not in this process"
    );
    assert_eq!(
        std::env::var_os("SETUP_TEST_B"),
        None,
        "not in this process"
    );
}

#[test]
fn variables_and_the_initializer_reach_workers_started_through_a_command() {
    let _one = serialised();
    let log = Log::new("note");
    let pool = Pool::builder()
        .workers(Launcher::command(["nice"]), 1)
        .env("SETUP_TEST_C", VALUE)
        .initializer(note_pid)
        .build()
        .unwrap();
    let value = pool.call(env_of, "SETUP_TEST_C".to_owned()).unwrap();
    assert_eq!(value.as_deref(), Some(VALUE));
    // The initializer travels on the command line too.
    let (pid, runs) = pool.call(pid_and_runs, 0).unwrap();
    assert_eq!(runs, 1);
    assert_eq!(pids_in(&log.0), [pid]);
}

#[test]
fn the_pools_own_variables_and_bad_names_are_refused() {
    let _one = serialised();
    let refused = |key: &str, value: &str, why: &str| {
        let error = Pool::builder().env(key, value).build().unwrap_err();
        assert!(matches!(error, Error::Config { .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            format!("invalid pool configuration: env: {key:?} {why}")
        );
    };
    let own = "is one of the pool's own variables (BUCKSHOT_*), which it sets itself";
    refused("__BUCKSHOT_WORKER", "1,2,,0,0,,,", own);
    refused("BUCKSHOT_REPLAY", "/tmp/x.replay", own);
    let name = "is not a variable name (it holds `=` or a NUL byte, or starts with `-`)";
    refused("A=B", "x", name);
    refused("-i", "x", name);
    refused("A\0B", "x", name);
    refused("", "x", "is not a variable name (empty)");
    refused("A", "x\0y", "has a value with a NUL byte");
    let error = Pool::builder().max_worker_rss(0).build().unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid pool configuration: max_worker_rss must be at least 1"
    );
}

/// What [`leak`] keeps.
static LEAKED: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Keeps 64 MiB more, touched, and sleeps past the interval at which a
/// worker reads its memory; returns its worker's pid.
fn leak(x: u64) -> (u64, u32) {
    let block = vec![1u8; 64 << 20];
    LEAKED.lock().unwrap().push(block);
    std::thread::sleep(Duration::from_millis(20));
    (x, std::process::id())
}
buckshot::register!(leak);

#[test]
fn a_worker_past_max_worker_rss_retires_and_no_input_fails() {
    let _one = serialised();
    // Two blocks and a worker's own few MiB are under the limit; three are
    // over it: each worker answers three inputs, then retires.
    let pool = Pool::builder()
        .processes(1)
        .max_worker_rss(160 << 20)
        .build()
        .unwrap();
    let results: Vec<(u64, u32)> = common::within("a leaking map", {
        move || {
            let results = pool.map(leak, 0..9).unwrap().map(Result::unwrap).collect();
            drop(pool);
            results
        }
    });
    let inputs: Vec<u64> = results.iter().map(|(x, _)| *x).collect();
    assert_eq!(inputs, (0..9).collect::<Vec<_>>());
    let pids: Vec<u32> = results.iter().map(|(_, pid)| *pid).collect();
    let mut runs: HashMap<u32, usize> = HashMap::new();
    for pid in &pids {
        *runs.entry(*pid).or_default() += 1;
    }
    assert_eq!(runs.len(), 3, "workers: {pids:?}");
    assert!(runs.values().all(|&n| n == 3), "workers: {pids:?}");
    // The pool was dropped: every worker is gone and reaped (no zombie),
    // and none lives on elsewhere (no orphan).
    assert_eq!(common::children(), [], "workers remain");
    for pid in runs.keys() {
        assert!(!common::alive(*pid), "worker {pid} lives on");
    }
}

/// Quick, but every fourth input keeps 64 MiB, as [`leak`] does.
fn leak_every_fourth(x: u64) -> (u64, u32) {
    match x % 4 {
        3 => leak(x),
        _ => (x, std::process::id()),
    }
}
buckshot::register!(leak_every_fourth);

#[test]
fn what_a_retiring_worker_had_queued_runs_elsewhere() {
    let _one = serialised();
    // Quick inputs queue up behind each slow one (several messages in
    // flight); two blocks are over the limit.
    let pool = Pool::builder()
        .processes(1)
        .max_worker_rss(100 << 20)
        .build()
        .unwrap();
    let results: Vec<_> = common::within("a map that leaks now and then", move || {
        pool.map(leak_every_fourth, 0..32)
            .unwrap()
            .collect::<Vec<_>>()
    });
    let results: Vec<(u64, u32)> = results
        .into_iter()
        .map(|result| result.unwrap_or_else(|e| panic!("{e}")))
        .collect();
    assert_eq!(
        results.iter().map(|(x, _)| *x).collect::<Vec<_>>(),
        (0..32).collect::<Vec<_>>()
    );
    // One worker after the other, each retired after two or three blocks
    // (a message may hold more than one).
    let mut pids: Vec<u32> = results.iter().map(|(_, pid)| *pid).collect();
    pids.dedup();
    let mut distinct = pids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), pids.len(), "a worker came back: {pids:?}");
    assert!(pids.len() >= 3, "workers: {pids:?}");
}

#[test]
fn retired_workers_are_reaped_while_the_pool_lives() {
    let _one = serialised();
    let pool = Pool::builder()
        .processes(1)
        .max_worker_rss(100 << 20)
        .build()
        .unwrap();
    // One block and a worker's own are under the limit, two are over it.
    let first: Vec<u32> = pool
        .map(leak, 0..2)
        .unwrap()
        .map(|result| result.unwrap().1)
        .collect();
    assert_eq!(first[0], first[1], "{first:?}");
    common::assert_worker_gone(first[0], "retired past max_worker_rss");
    let next = pool.call(leak, 2).unwrap().1;
    assert_ne!(next, first[0]);
    let live: Vec<(u32, char)> = common::children();
    assert_eq!(live.len(), 1, "one worker, no zombie: {live:?}");
    assert_eq!(live[0].0, next);
}
