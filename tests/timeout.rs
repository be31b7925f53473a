//! Timeouts: the input that runs too long fails, its worker is replaced,
//! and the map goes on.

mod common;

use std::time::{Duration, Instant};

use buckshot::{Error, Pool};

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}
buckshot::register!(nap);

fn spin_forever(_: u64) -> u64 {
    // Ignores every catchable signal; SIGKILL still wins.
    // SAFETY: installing SIG_IGN runs no code of ours in a signal context.
    unsafe {
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::signal(signal, libc::SIG_IGN);
        }
    }
    let mut x = 0u64;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}
buckshot::register!(spin_forever);

#[test]
fn a_task_past_its_timeout_fails_alone() {
    let timeout = Duration::from_millis(200);
    let pool = Pool::builder()
        .processes(2)
        .timeout(timeout)
        .build()
        .unwrap();
    let inputs = vec![0, 1, 60_000, 2, 3, 4, 5, 6, 7, 8];
    let started = Instant::now();
    let results: Vec<Result<u64, Error>> = common::within("map with one hanging task", move || {
        pool.map(nap, inputs).unwrap().collect()
    });
    let elapsed = started.elapsed();
    assert!(
        elapsed >= timeout,
        "finished in {elapsed:?}, before the timeout"
    );
    assert_eq!(results.len(), 10, "one result per input: {results:?}");
    for (index, result) in results.into_iter().enumerate() {
        if index == 2 {
            match result {
                Err(Error::TaskTimeout {
                    index: 2,
                    timeout: t,
                    ..
                }) => assert_eq!(t, timeout),
                other => panic!("input 2: expected a timeout, got {other:?}"),
            }
        } else {
            assert!(result.is_ok(), "input {index}: {result:?}");
        }
    }
}

#[test]
fn a_task_that_ignores_signals_is_killed() {
    let pool = Pool::builder()
        .processes(1)
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let results: Vec<Result<u64, Error>> = common::within("map of a spinning task", move || {
        pool.map(spin_forever, [1, 2]).unwrap().collect()
    });
    assert_eq!(results.len(), 2, "one result per input: {results:?}");
    for (index, result) in results.iter().enumerate() {
        assert!(
            matches!(result, Err(Error::TaskTimeout { index: i, .. }) if *i == index),
            "{result:?}"
        );
    }
}

#[test]
fn queued_inputs_do_not_spend_their_timeout_waiting() {
    // One worker, one input per frame. The pool writes a frame while the
    // one before it runs, so an input waits in the pipe about one task
    // before it starts. Each task takes 2/3 of the timeout: counted from
    // the write of its frame, an input would need about 4/3 of the timeout
    // and fail; counted from its start, as it must be, it has a third of
    // the timeout to spare.
    let timeout = Duration::from_millis(150);
    let task_ms = 100;
    let pool = Pool::builder()
        .processes(1)
        .batch_size(1)
        .timeout(timeout)
        .build()
        .unwrap();
    // A ready worker: the measurement is about queueing, not start-up.
    assert!(matches!(pool.map(nap, [0]).unwrap().next(), Some(Ok(0))));
    let results: Vec<Result<u64, Error>> = common::within("map of queued tasks", move || {
        pool.map(nap, vec![task_ms; 6]).unwrap().collect()
    });
    assert_eq!(results.len(), 6, "one result per input: {results:?}");
    for (index, result) in results.iter().enumerate() {
        assert!(
            matches!(result, Ok(ms) if *ms == task_ms),
            "input {index} ({task_ms} ms under a {timeout:?} timeout, queued behind {index}): {result:?}"
        );
    }
}

/// Announces its worker's pid, then never returns.
fn announce_and_hang(rendezvous: String) -> u64 {
    common::announce(&rendezvous);
    common::hang()
}
buckshot::register!(announce_and_hang);

#[test]
fn a_timed_out_worker_is_gone_while_the_pool_lives() {
    let rendezvous = common::Rendezvous::new();
    let pool = Pool::builder()
        .processes(1)
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let mut results = pool.map(announce_and_hang, [rendezvous.path()]).unwrap();
    // Inputs are pulled as results are asked for.
    let first = std::thread::spawn(move || results.next());
    let worker = rendezvous.wait();
    let result = common::within("a hanging task", move || first.join().unwrap());
    assert!(
        matches!(result, Some(Err(Error::TaskTimeout { index: 0, .. }))),
        "{result:?}"
    );
    // The pool is still here: the timed-out worker must not wait for it to
    // be dropped.
    common::assert_worker_gone(worker, "timed out");
    // And a replacement serves the next map.
    assert!(matches!(pool.map(nap, [1]).unwrap().next(), Some(Ok(1))));
}

fn hang(_: u64) -> u64 {
    loop {
        std::thread::park();
    }
}
buckshot::register!(hang);

#[test]
fn a_timeout_fires_no_earlier_than_it_should_and_not_much_later() {
    let timeout = Duration::from_millis(100);
    let pool = Pool::builder()
        .processes(1)
        .timeout(timeout)
        .build()
        .unwrap();
    // A warm worker, so that start-up is not part of the measurement.
    assert_eq!(pool.map(nap, [0]).unwrap().count(), 1);
    for _ in 0..3 {
        let started = Instant::now();
        let mut results = pool.map(hang, [0]).unwrap();
        let result = common::within("a hanging task", move || results.next().unwrap());
        let elapsed = started.elapsed();
        assert!(result.unwrap_err().is_timeout());
        assert!(
            elapsed >= timeout,
            "timed out after {elapsed:?}, before {timeout:?}"
        );
        assert!(
            elapsed < Duration::from_secs(1),
            "timed out only after {elapsed:?}"
        );
    }
}
