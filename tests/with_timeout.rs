//! Per-map timeouts: `with_timeout` on a pool (with or without a timeout
//! of its own) and on a context handle, through every entry point; a map's
//! timeout stays with its own inputs while other maps run beside it.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use buckshot::{Error, Pool};
use futures::StreamExt;

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}
buckshot::register!(nap);

/// Naps `ms`, at most the context's cap.
fn capped_nap(cap: &u64, ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms.min(*cap)));
    ms
}
buckshot::register!(capped_nap);

/// Announces its worker's pid, then naps `ms`.
fn announce_and_nap((rendezvous, ms): (String, u64)) -> u64 {
    common::announce(&rendezvous);
    nap(ms)
}
buckshot::register!(announce_and_nap);

const HANG: u64 = 600_000;

/// Asserts that `result` is a timeout of input `index` after `timeout`.
fn assert_timed_out<T: std::fmt::Debug>(
    result: &Result<T, Error>,
    index: usize,
    timeout: Duration,
) {
    match result {
        Err(Error::TaskTimeout {
            index: i,
            timeout: t,
            ..
        }) => assert_eq!((*i, *t), (index, timeout), "{result:?}"),
        other => panic!("input {index}: expected a timeout after {timeout:?}, got {other:?}"),
    }
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

#[test]
fn a_pool_without_a_timeout_times_out_a_hanging_task_of_a_timed_map() {
    let timeout = Duration::from_millis(200);
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.timeout(), None);
    let started = Instant::now();
    let results: Vec<Result<u64, Error>> = common::within("a timed map", move || {
        let quick = pool.with_timeout(timeout);
        assert_eq!(quick.timeout(), timeout);
        quick.map(nap, [1, HANG, 2, 3]).unwrap().collect()
    });
    assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());
    assert_eq!(results.len(), 4, "{results:?}");
    assert_timed_out(&results[1], 1, timeout);
    for k in [0, 2, 3] {
        assert!(results[k].is_ok(), "input {k}: {:?}", results[k]);
    }
}

#[test]
fn a_timed_map_overrides_the_pools_timeout_both_ways() {
    // Shorter than the pool's: the hang ends long before the pool's
    // timeout would end it.
    let pool = Pool::builder()
        .processes(2)
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let short = Duration::from_millis(200);
    let result = common::within_for("a short timeout", Duration::from_secs(30), move || {
        pool.with_timeout(short).call(nap, HANG)
    });
    assert_timed_out(&result, 0, short);
    // Longer than the pool's: an input that the pool's timeout would end
    // runs to its end, and the pool's still holds for its other maps.
    let pool_timeout = Duration::from_millis(150);
    let pool = Pool::builder()
        .processes(1)
        .timeout(pool_timeout)
        .build()
        .unwrap();
    let (long, plain) = common::within("a long timeout", move || {
        let long = pool.with_timeout(Duration::from_secs(60)).call(nap, 600);
        let plain = pool.call(nap, 600);
        (long, plain)
    });
    assert_eq!(long.unwrap(), 600);
    assert_timed_out(&plain, 0, pool_timeout);
}

#[test]
fn a_timeout_stays_with_its_maps_inputs_while_others_run_beside_them() {
    // On two workers at once: a timed map of short inputs and one hang,
    // and an untimed map of inputs longer than that timeout, started
    // first. Each worker runs inputs of both maps, one after the other.
    let timeout = Duration::from_millis(300);
    let pool = Pool::builder().processes(2).batch_size(1).build().unwrap();
    let (untimed, timed) = common::within("two maps at once", move || {
        let rendezvous = common::Rendezvous::new();
        let path = rendezvous.path();
        std::thread::scope(|scope| {
            let untimed = scope.spawn(|| {
                let inputs = (0..6).map(|_| (path.clone(), 500u64));
                let results: Vec<Result<u64, Error>> =
                    pool.map(announce_and_nap, inputs).unwrap().collect();
                results
            });
            // The untimed map runs: now the timed one starts beside it.
            rendezvous.wait();
            let mut inputs = vec![20u64; 12];
            inputs[5] = HANG;
            let timed: Vec<Result<u64, Error>> = pool
                .with_timeout(timeout)
                .map_unordered(nap, inputs)
                .unwrap()
                .map(|(index, result)| {
                    if index == 5 {
                        assert_timed_out(&result, 5, timeout);
                        Ok(HANG)
                    } else {
                        result
                    }
                })
                .collect();
            // The others' announcements are not waited for.
            (untimed.join().unwrap(), timed)
        })
    });
    assert_eq!(untimed.len(), 6);
    for (index, result) in untimed.iter().enumerate() {
        assert!(
            matches!(result, Ok(500)),
            "untimed input {index} (500 ms, beside a map with a {timeout:?} timeout): {result:?}"
        );
    }
    assert_eq!(timed.len(), 12);
    assert!(timed.iter().all(Result::is_ok), "{timed:?}");
}

#[test]
fn a_context_handle_takes_a_timeout_in_either_order() {
    let timeout = Duration::from_millis(200);
    let pool = Pool::new(2).unwrap();
    let results = common::within("timed maps with a context", move || {
        let cap = HANG;
        let ctx = pool.with_context(&cap);
        assert_eq!(ctx.timeout(), None);
        let timed = ctx.with_timeout(timeout);
        assert_eq!(timed.timeout(), Some(timeout));
        let first: Vec<Result<u64, Error>> = timed.map(capped_nap, [1, HANG]).unwrap().collect();
        let other: Vec<Result<u64, Error>> = pool
            .with_timeout(timeout)
            .with_context(&cap)
            .map(capped_nap, [HANG, 2])
            .unwrap()
            .collect();
        // The handle it came from keeps no timeout.
        let untimed = ctx.call(capped_nap, 400);
        (first, other, untimed)
    });
    let (first, other, untimed) = results;
    assert_eq!(*first[0].as_ref().unwrap(), 1);
    assert_timed_out(&first[1], 1, timeout);
    assert_timed_out(&other[0], 0, timeout);
    assert_eq!(*other[1].as_ref().unwrap(), 2);
    assert_eq!(untimed.unwrap(), 400);
}

#[test]
fn call_and_the_async_entry_points_take_the_timeout() {
    let timeout = Duration::from_millis(200);
    let pool = Pool::new(2).unwrap();
    let (call, called, streamed) = common::within("timed calls", move || {
        let quick = pool.with_timeout(timeout);
        let call = quick.call(nap, HANG);
        let (called, streamed) = current_thread().block_on(async {
            let called = quick.call_async(nap, HANG).await;
            let streamed: Vec<Result<u64, Error>> =
                quick.map_stream(nap, [3, HANG, 4]).unwrap().collect().await;
            (called, streamed)
        });
        (call, called, streamed)
    });
    assert_timed_out(&call, 0, timeout);
    assert_timed_out(&called, 0, timeout);
    assert_eq!(*streamed[0].as_ref().unwrap(), 3);
    assert_timed_out(&streamed[1], 1, timeout);
    assert_eq!(*streamed[2].as_ref().unwrap(), 4);
}

#[test]
fn a_zero_timeout_is_refused_by_every_entry_point() {
    let pool = Pool::new(1).unwrap();
    let zero = pool.with_timeout(Duration::ZERO);
    let expected = "invalid pool configuration: with_timeout must be greater than zero";
    let refused = |error: Error| {
        assert!(matches!(error, Error::Config { .. }), "{error:?}");
        assert_eq!(error.to_string(), expected);
    };
    refused(zero.map(nap, [1]).err().unwrap());
    refused(zero.map_unordered(nap, [1]).err().unwrap());
    refused(zero.map_stream(nap, [1]).err().unwrap());
    refused(zero.call(nap, 1).unwrap_err());
    refused(futures::executor::block_on(zero.call_async(nap, 1)).unwrap_err());
    refused(zero.with_context(&5u64).call(capped_nap, 1).unwrap_err());
    let ctx = pool.with_context(&5u64);
    refused(
        ctx.with_timeout(Duration::ZERO)
            .map(capped_nap, [1])
            .err()
            .unwrap(),
    );
    // The pool goes on.
    assert_eq!(pool.call(nap, 1).unwrap(), 1);
}

#[test]
fn a_replay_of_a_timed_out_input_runs_under_its_maps_timeout() {
    let dir = common::TempDir::new("with-timeout-replay");
    let timeout = Duration::from_millis(250);
    let pool = Pool::builder()
        .processes(1)
        .keep_failures(&dir.0)
        .build()
        .unwrap();
    let error = common::within("a timed call", move || {
        pool.with_timeout(timeout).call(nap, HANG).unwrap_err()
    });
    assert_timed_out::<u64>(&Err(error), 0, timeout);
    let files = dir.files();
    assert_eq!(files.len(), 1, "{files:?}");
    let file: &Path = &files[0];
    let started = Instant::now();
    let child = Command::new(std::env::current_exe().unwrap())
        .env("BUCKSHOT_REPLAY", file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = common::within("a replay", move || child.wait_with_output().unwrap());
    assert!(started.elapsed() >= timeout);
    assert_eq!(output.status.code(), Some(124), "{:?}", output.status);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("timeout of 250ms"), "{stderr}");
}
