//! The main path: results, order, laziness, many threads, prints.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use buckshot::{Error, Pool};

fn square(x: u64) -> u64 {
    x * x
}
buckshot::register!(square);

fn noisy(x: u64) -> u64 {
    // A task's prints must not corrupt the reply stream.
    println!("noise {x}");
    print!("\u{0}\u{ff}partial frame bytes");
    x + 1
}
buckshot::register!(noisy);

fn harmonic(x: u64) -> f64 {
    (1..=x).map(|d| 1.0 / d as f64).sum()
}
buckshot::register!(harmonic);

#[test]
fn ten_thousand_inputs_in_order_equal_serial() {
    let pool = Pool::new(2).unwrap();
    let results: Vec<f64> = pool
        .map(harmonic, 0..10_000u64)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let serial: Vec<f64> = (0..10_000u64).map(harmonic).collect();
    assert_eq!(results, serial);
}

#[test]
fn ten_thousand_inputs_unordered_equal_serial() {
    let pool = Pool::new(3).unwrap();
    let mut seen = vec![None; 10_000];
    for (index, result) in pool.map_unordered(square, 0..10_000u64).unwrap() {
        assert!(seen[index].is_none(), "input {index} answered twice");
        seen[index] = Some(result.unwrap());
    }
    let expected: Vec<Option<u64>> = (0..10_000u64).map(|x| Some(x * x)).collect();
    assert_eq!(seen, expected);
}

#[test]
fn empty_input_yields_nothing() {
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.map(square, Vec::<u64>::new()).unwrap().count(), 0);
    assert_eq!(
        pool.map_unordered(square, std::iter::empty::<u64>())
            .unwrap()
            .count(),
        0
    );
}

/// Takes a few milliseconds, so that no worker can run every input before
/// the others are ready.
fn slow_pid_of(_: u64) -> u32 {
    std::thread::sleep(std::time::Duration::from_millis(4));
    std::process::id()
}
buckshot::register!(slow_pid_of);

#[test]
fn more_inputs_than_processes_use_every_worker() {
    let pool = Pool::new(3).unwrap();
    let pids: HashSet<u32> = pool
        .map(slow_pid_of, 0..150)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(
        !pids.contains(&std::process::id()),
        "tasks ran in the parent"
    );
    // 600 ms of work: one worker alone would leave two idle.
    assert_eq!(pids.len(), 3, "workers that ran inputs: {pids:?}");
}

/// Yields `0..u64::MAX`, counting in `pulled` how many the map took. It
/// panics at the millionth, so that a map that pulls eagerly fails the test
/// at once rather than run until the time limit.
fn counted(pulled: &Arc<AtomicU64>) -> impl Iterator<Item = u64> + Send + 'static {
    let pulled = Arc::clone(pulled);
    (0..u64::MAX).inspect(move |&x| {
        pulled.fetch_add(1, Ordering::Relaxed);
        assert!(x < 1_000_000, "a million inputs pulled: the map is eager");
    })
}

/// Takes the first 10 results of `f` over an endless input; returns how
/// many inputs the map pulled for them.
fn pulled_for_ten(f: impl Fn(u64) -> u64 + Send + 'static) -> u64 {
    let pool = Pool::new(2).unwrap();
    let pulled = Arc::new(AtomicU64::new(0));
    let inputs = counted(&pulled);
    let first: Vec<u64> = common::within("take(10) of an endless map", move || {
        pool.map(f, inputs)
            .unwrap()
            .take(10)
            .map(Result::unwrap)
            .collect()
    });
    assert_eq!(first, [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]);
    let pulled = pulled.load(Ordering::Relaxed);
    assert!(pulled >= 10, "only {pulled} inputs pulled");
    pulled
}

#[test]
fn endless_input_is_pulled_lazily() {
    // The map pulls a window ahead of what it yields: for tiny tasks, a few
    // chunks and 512 frames per worker; 40 inputs before run times are
    // known, 1,000 to 2,200 after (measured, idle and under load). Pulling
    // eagerly shows.
    let pulled = pulled_for_ten(square);
    assert!(pulled <= 10_000, "{pulled} inputs pulled for 10 results");
}

fn slow_square(x: u64) -> u64 {
    std::thread::sleep(std::time::Duration::from_millis(1));
    x * x
}
buckshot::register!(slow_square);

#[test]
fn an_endless_map_of_slower_tasks_pulls_a_small_window() {
    // Tasks of a millisecond keep a window of a few chunks per worker: 40
    // inputs before run times are known, no more than a few dozen past the
    // last one yielded after. Ten times that window shows.
    let pulled = pulled_for_ten(slow_square);
    assert!(pulled <= 200, "{pulled} inputs pulled for 10 results");
}

#[test]
fn the_pool_is_reusable_and_survives_a_dropped_map() {
    let pool = Pool::new(2).unwrap();
    let mut results = pool.map(square, 0..100_000u64).unwrap();
    assert_eq!(results.next().unwrap().unwrap(), 0);
    drop(results);
    for _ in 0..3 {
        let sum: u64 = pool
            .map(square, 0..1000u64)
            .unwrap()
            .map(Result::unwrap)
            .sum();
        assert_eq!(sum, (0..1000u64).map(square).sum());
    }
}

#[test]
fn prints_in_tasks_do_not_corrupt_results() {
    let pool = Pool::builder()
        .processes(2)
        .forward_stderr(false)
        .build()
        .unwrap();
    let results: Vec<u64> = pool
        .map(noisy, 0..200u64)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(results, (1..201u64).collect::<Vec<_>>());
}

/// Maps inputs `1000 t..1000 (t + 1)` and checks the squares.
fn map_a_thousand_squares(pool: &Pool, t: u64) {
    let inputs = t * 1000..(t + 1) * 1000;
    let results: Vec<u64> = pool
        .map(square, inputs.clone())
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(results, inputs.map(square).collect::<Vec<_>>());
}

#[test]
fn eight_threads_share_one_pool() {
    let pool = Pool::new(2).unwrap();
    std::thread::scope(|scope| {
        for t in 0..8u64 {
            let pool = &pool;
            scope.spawn(move || map_a_thousand_squares(pool, t));
        }
    });
}

#[test]
fn eight_threads_with_their_own_pools() {
    std::thread::scope(|scope| {
        for t in 0..8u64 {
            scope.spawn(move || map_a_thousand_squares(&Pool::new(2).unwrap(), t));
        }
    });
}

#[test]
fn one_shot_map_owns_its_pool() {
    let squares: Vec<u64> = buckshot::map(square, 1..=4u64)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(squares, [1, 4, 9, 16]);
}

#[test]
fn pool_and_results_can_cross_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>() {}
    assert_send_sync::<Pool>();
    assert_send::<buckshot::Results<std::ops::Range<u64>, u64>>();
    assert_send::<buckshot::UnorderedResults<std::vec::IntoIter<u64>, u64>>();
    assert_send_sync::<Error>();
}

#[test]
fn results_report_their_size() {
    let pool = Pool::new(1).unwrap();
    let results = pool.map(square, 0..10u64).unwrap();
    assert_eq!(results.size_hint(), (10, Some(10)));
    assert_eq!(results.count(), 10);
}

#[test]
fn a_panicking_input_iterator_ends_the_map() {
    let pool = Pool::new(1).unwrap();
    let inputs = (0..100u64).map(|x| {
        if x == 5 {
            panic!("input 5 cannot be made")
        } else {
            x
        }
    });
    let mut results = pool.map(square, inputs).unwrap();
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| results.next()));
    assert!(unwound.is_err(), "the iterator's panic reaches the caller");
    // Nothing left to wait for: the map ends rather than hang.
    assert!(common::within("next() after a panic", move || results
        .next()
        .is_none()));
    // And the pool goes on.
    assert_eq!(
        pool.map(square, [3u64]).unwrap().next().unwrap().unwrap(),
        9
    );
}
