//! Wide pools: many more workers than cores, as a pool of remote workers
//! would have. Most of them are spawned after `Pool::new` returns, and the
//! pool's thread hears of each through its own events. One test in this
//! binary, so that no other test's workers are around when children are
//! counted.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use buckshot::{Error, Pool};

const WIDE: usize = 200;

fn double(x: u64) -> u64 {
    x * 2
}
buckshot::register!(double);

fn pid_after_nap(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}
buckshot::register!(pid_after_nap);

/// With a rendezvous, announces its worker's pid and never returns.
fn nap_or_hang(rendezvous: Option<String>) -> u32 {
    if let Some(path) = rendezvous {
        common::announce(&path);
        common::hang();
    }
    std::process::id()
}
buckshot::register!(nap_or_hang);

fn exit_with(code: i32) -> u64 {
    std::process::exit(code)
}
buckshot::register!(exit_with);

fn pids() -> HashSet<u32> {
    common::children().into_iter().map(|(pid, _)| pid).collect()
}

/// A worker holds six descriptors here (its three pipes, the read end of
/// its request pipe, its pidfd, the memfd of its reply slots): a default
/// soft limit of 1,024 does not fit 200 of them, and a spawn under way
/// needs a few more. Raised up to the
/// hard limit, which must fit them.
fn make_room_for_descriptors() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let needed = (6 * WIDE + 256) as u64;
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some_and(|current| current < needed) {
        let raised = limit.maximum.map_or(needed, |maximum| maximum.min(needed));
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(raised),
                maximum: limit.maximum,
            },
        )
        .unwrap();
        assert!(
            raised >= needed,
            "the hard limit on open files ({raised}) does not fit {WIDE} workers"
        );
    }
}

#[test]
fn a_wide_pool_serves_hears_deaths_and_timeouts_at_once_and_leaves_nothing() {
    make_room_for_descriptors();
    let fds_before = common::open_fds();
    let timeout = Duration::from_millis(500);
    let pool = Arc::new(
        Pool::builder()
            .processes(WIDE)
            .timeout(timeout)
            .build()
            .unwrap(),
    );
    common::wait_until("every worker is spawned", || pids().len() == WIDE);

    // It maps correctly, and every worker serves.
    let mapped: Vec<u64> = {
        let pool = Arc::clone(&pool);
        common::within("a map over a wide pool", move || {
            pool.map(double, 0..50_000)
                .unwrap()
                .map(Result::unwrap)
                .collect()
        })
    };
    assert_eq!(mapped, (0..50_000).map(|x| x * 2).collect::<Vec<u64>>());
    let served: HashSet<u32> = {
        let pool = Arc::clone(&pool);
        common::within("every worker serves", move || {
            let mut served = HashSet::new();
            while served.len() < WIDE {
                let naps = std::iter::repeat_n(1, 2 * WIDE);
                served.extend(pool.map(pid_after_nap, naps).unwrap().map(Result::unwrap));
            }
            served
        })
    };
    assert_eq!(served, pids(), "the workers that served are the children");

    // A worker killed from outside while the pool idles, among the last
    // spawned: its exit alone wakes the pool, which reaps and replaces it.
    let victim = *served.iter().max().unwrap();
    common::kill9(victim);
    common::assert_worker_gone(victim, "killed from outside");
    common::wait_until_within("the victim is replaced", common::KILL_BOUND, || {
        pids().len() == WIDE
    });

    // A worker that dies of its input: the error comes at once.
    let started = Instant::now();
    let died: Vec<Result<u64, Error>> = {
        let pool = Arc::clone(&pool);
        common::within_for(
            "a map whose input kills its worker",
            common::KILL_BOUND,
            move || pool.map(exit_with, [3]).unwrap().collect(),
        )
    };
    assert!(
        matches!(&died[..], [Err(Error::WorkerDied { index: 0, status, .. })] if status.and_then(|s| s.code()) == Some(3)),
        "{died:?}"
    );
    let noticed = started.elapsed();
    // Its exit wakes the pool: far sooner than the timeout, which is what
    // would end the input if the death went unnoticed.
    assert!(
        noticed < timeout,
        "a death among {WIDE} workers was noticed after {noticed:?}"
    );

    // A timeout among many quick inputs (whose replies keep moving the
    // other workers' deadlines) fires on time: measured from when the
    // hanging input announces itself to when its error arrives. It comes
    // first, so it is alone in its frame (a frame of several that times
    // out is retried one input at a time, and the culprit times out again).
    let rendezvous = common::Rendezvous::new();
    let mut inputs = vec![None; 20_000];
    inputs[0] = Some(rendezvous.path());
    let map = {
        let pool = Arc::clone(&pool);
        std::thread::spawn(move || {
            let mut results = Vec::new();
            let mut failed_at = None;
            for result in pool.map(nap_or_hang, inputs).unwrap() {
                if results.is_empty() {
                    failed_at = Some(Instant::now());
                }
                results.push(result);
            }
            (results, failed_at.unwrap())
        })
    };
    rendezvous.wait();
    let started = Instant::now();
    let (results, failed_at) =
        common::within("a map with one hanging input", move || map.join().unwrap());
    for (index, result) in results.iter().enumerate() {
        match (index, result) {
            (0, Err(Error::TaskTimeout { index: 0, .. })) => {}
            (0, other) => panic!("input 0: expected a timeout, got {other:?}"),
            (_, result) => assert!(result.is_ok(), "input {index}: {result:?}"),
        }
    }
    let waited = failed_at - started;
    // Generous for a loaded 2-core machine; a timeout left to a sweep or
    // to the next unrelated wake-up would be far later, or never.
    assert!(
        waited < timeout + Duration::from_secs(1),
        "the timeout of {timeout:?} fired after {waited:?}"
    );
    eprintln!("death noticed in {noticed:?}; a timeout of {timeout:?} fired after {waited:?}");
    drop(rendezvous);

    // Dropped: every worker goes, and every descriptor.
    drop(Arc::into_inner(pool).expect("the only handle left"));
    assert_eq!(common::children(), [], "workers outlived their pool");
    assert_eq!(common::open_fds(), fds_before, "descriptors leaked");
}
