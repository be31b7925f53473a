//! Builder options that contain faults: retries, worker recycling and
//! memory limits.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use buckshot::{Error, Pool};

/// Aborts the first time it sees `x` (remembered in a file under `dir`),
/// succeeds after that.
fn crash_once((x, dir): (u64, String)) -> u64 {
    let marker = PathBuf::from(dir).join(x.to_string());
    if !marker.exists() {
        std::fs::write(&marker, b"").unwrap();
        std::process::abort();
    }
    x
}
buckshot::register!(crash_once);

/// Counts its runs in a file under `dir`, then sleeps far past any timeout.
fn count_and_hang((x, dir): (u64, String)) -> u64 {
    let marker = PathBuf::from(dir).join(x.to_string());
    let runs = std::fs::read_to_string(&marker).map_or(0, |s| s.len());
    std::fs::write(&marker, "x".repeat(runs + 1)).unwrap();
    common::hang()
}
buckshot::register!(count_and_hang);

fn pid_of(_: u64) -> u32 {
    std::process::id()
}
buckshot::register!(pid_of);

fn allocate(bytes: usize) -> usize {
    let block = vec![1u8; bytes];
    std::hint::black_box(&block).len()
}
buckshot::register!(allocate);

#[test]
fn retries_rerun_inputs_whose_worker_died() {
    let dir = common::TempDir::new("retries");
    let pool = Pool::builder().processes(2).retries(1).build().unwrap();
    let inputs: Vec<(u64, String)> = (0..6).map(|x| (x, dir.path())).collect();
    let results: Vec<u64> = pool
        .map(crash_once, inputs)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(results, [0, 1, 2, 3, 4, 5]);
}

#[test]
fn without_retries_a_death_is_reported() {
    let dir = common::TempDir::new("no-retries");
    let pool = Pool::new(2).unwrap();
    let inputs: Vec<(u64, String)> = (0..4).map(|x| (x, dir.path())).collect();
    let results: Vec<_> = common::within("map of crashing tasks", move || {
        pool.map(crash_once, inputs).unwrap().collect::<Vec<_>>()
    });
    assert_eq!(results.len(), 4, "one result per input: {results:?}");
    for (index, result) in results.into_iter().enumerate() {
        assert!(
            matches!(result, Err(Error::WorkerDied { index: i, .. }) if i == index),
            "{result:?}"
        );
    }
}

#[test]
fn timeouts_are_never_retried() {
    let dir = common::TempDir::new("timeout-retries");
    let pool = Pool::builder()
        .processes(2)
        .retries(3)
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let inputs: Vec<(u64, String)> = (0..3).map(|x| (x, dir.path())).collect();
    let results: Vec<_> = common::within("hanging map", move || {
        pool.map(count_and_hang, inputs)
            .unwrap()
            .collect::<Vec<_>>()
    });
    assert_eq!(results.len(), 3, "one result per input: {results:?}");
    for (index, result) in results.iter().enumerate() {
        assert!(
            matches!(result, Err(Error::TaskTimeout { index: i, .. }) if *i == index),
            "{result:?}"
        );
        let runs = std::fs::read_to_string(dir.0.join(index.to_string())).unwrap();
        assert_eq!(runs.len(), 1, "input {index} ran {} times", runs.len());
    }
}

#[test]
fn workers_are_recycled_after_their_quota() {
    let pool = Pool::builder()
        .processes(1)
        .max_tasks_per_worker(5)
        .build()
        .unwrap();
    let pids: Vec<u32> = pool
        .map(pid_of, 0..50)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut runs: HashMap<u32, usize> = HashMap::new();
    for pid in &pids {
        *runs.entry(*pid).or_default() += 1;
    }
    assert_eq!(runs.len(), 10, "runs per worker: {runs:?}");
    assert!(runs.values().all(|&n| n == 5), "runs per worker: {runs:?}");
    for chunk in pids.chunks(5) {
        assert!(
            chunk.iter().all(|pid| *pid == chunk[0]),
            "one worker at a time: {pids:?}"
        );
    }
}

#[test]
fn an_allocation_past_the_memory_limit_is_a_death_that_says_so() {
    let pool = Pool::builder()
        .processes(1)
        .memory_limit(512 << 20)
        .forward_stderr(false)
        .build()
        .unwrap();
    let results: Vec<_> = pool
        .map(allocate, [1 << 20, 2 << 30, 1 << 20])
        .unwrap()
        .collect();
    assert_eq!(results.len(), 3, "one result per input: {results:?}");
    assert_eq!(*results[0].as_ref().unwrap(), 1 << 20);
    let message = results[1].as_ref().unwrap_err().to_string();
    assert_eq!(
        message,
        "input 1: worker died (signal: 6 (SIGABRT), past its memory limit of 512.0 MiB): \
         memory allocation of 2147483648 bytes failed"
    );
    assert_eq!(*results[2].as_ref().unwrap(), 1 << 20);
}

/// Starts `n` threads that each allocate 100 KB, and waits for them.
fn many_threads(n: u64) -> usize {
    let threads: Vec<_> = (0..n)
        .map(|k| std::thread::spawn(move || std::hint::black_box(vec![k as u8; 100_000]).len()))
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).sum()
}
buckshot::register!(many_threads);

#[test]
fn the_memory_limit_counts_what_tasks_use_not_what_they_reserve() {
    // glibc reserves 64 MiB of address space per malloc arena: under a
    // limit on the address space, 64 threads needed 2 GiB. Their stacks
    // (2 MiB each) and what they allocate fit in 512 MiB.
    let pool = Pool::builder()
        .processes(1)
        .memory_limit(512 << 20)
        .forward_stderr(false)
        .build()
        .unwrap();
    let total = common::within("64 threads", move || pool.call(many_threads, 64));
    assert_eq!(total.unwrap(), 64 * 100_000);
    // A small limit is enough for a small task.
    let pool = Pool::builder()
        .processes(1)
        .memory_limit(8 << 20)
        .forward_stderr(false)
        .build()
        .unwrap();
    let result = common::within("a call under 8 MiB", move || pool.call(allocate, 1 << 20));
    assert_eq!(result.unwrap(), 1 << 20);
}

#[test]
fn a_memory_limit_no_worker_can_start_under_fails_the_pool_naming_it() {
    let pool = std::sync::Arc::new(
        Pool::builder()
            .processes(2)
            .memory_limit(1 << 20)
            .forward_stderr(false)
            .build()
            .unwrap(),
    );
    let first = common::within("a map under 1 MiB", {
        let pool = std::sync::Arc::clone(&pool);
        move || {
            pool.map(pid_of, 0..3)
                .map(|results| results.collect::<Vec<_>>())
        }
    });
    let says_why = |message: &str| {
        message.starts_with("memory_limit of 1.0 MiB is below what a worker needs to start: ")
            && message.ends_with(" of data in use before its first task, and 1.0 MiB of room")
    };
    // Refused at the first handshake: the map is refused, or each of its
    // inputs fails with the reason.
    match first {
        Ok(results) => {
            assert_eq!(results.len(), 3);
            for result in results {
                match result {
                    Err(Error::PoolClosed {
                        reason: Some(reason),
                        ..
                    }) => assert!(says_why(&reason), "{reason}"),
                    other => panic!("{other:?}"),
                }
            }
        }
        Err(error) => assert!(says_why(
            &error.to_string()["workers fail to start: ".len()..]
        )),
    }
    let error = pool.call(pid_of, 0).unwrap_err().to_string();
    let reason = error
        .strip_prefix("workers fail to start: ")
        .unwrap_or_else(|| panic!("{error}"));
    assert!(says_why(reason), "{error}");
}

fn byte_count(bytes: serde_bytes::ByteBuf) -> usize {
    bytes.len()
}
buckshot::register!(byte_count);

#[test]
fn inputs_larger_than_half_the_window_all_run() {
    // Over 32 MiB, one input fills the map's window (64 MiB) alone; over
    // 64 MiB it exceeds it. Neither may stall the map.
    let pool = Pool::new(2).unwrap();
    let sizes = [33 << 20, 1, 65 << 20, 33 << 20, 33 << 20, 1, 33 << 20];
    let counts: Vec<usize> = common::within("a map of large inputs", move || {
        pool.map(
            byte_count,
            sizes.map(|size| serde_bytes::ByteBuf::from(vec![1u8; size])),
        )
        .unwrap()
        .map(Result::unwrap)
        .collect()
    });
    assert_eq!(counts, sizes);
}

#[test]
fn large_inputs_are_pulled_a_window_of_bytes_at_a_time() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static PULLED: AtomicUsize = AtomicUsize::new(0);
    let pool = Pool::new(2).unwrap();
    let inputs = (0..40).map(|_| {
        PULLED.fetch_add(1, Ordering::Relaxed);
        serde_bytes::ByteBuf::from(vec![1u8; 20 << 20])
    });
    common::within("the first of 40 large inputs", move || {
        let mut results = pool.map(byte_count, inputs).unwrap();
        assert_eq!(results.next().unwrap().unwrap(), 20 << 20);
    });
    // 64 MiB of them, and what the first answer let through.
    let pulled = PULLED.load(Ordering::Relaxed);
    assert!(pulled <= 6, "{pulled} inputs of 20 MiB pulled");
}

#[test]
fn an_input_too_large_for_the_memory_limit_fails_instead_of_going_round() {
    // The worker fails to read the input: the input is to blame, not sent
    // again and again to fresh workers.
    let pool = Pool::builder()
        .processes(1)
        .memory_limit(128 << 20)
        .forward_stderr(false)
        .build()
        .unwrap();
    let input = serde_bytes::ByteBuf::from(vec![7u8; 200 << 20]);
    let results: Vec<_> = common::within("a map of one large input", move || {
        pool.map(byte_count, [input]).unwrap().collect::<Vec<_>>()
    });
    assert_eq!(results.len(), 1, "one result per input: {results:?}");
    let message = results[0].as_ref().unwrap_err().to_string();
    // Read inline, the allocation aborts the worker; read from shared
    // memory (a local worker), mapping it fails first.
    let aborted = message.starts_with(
        "input 0: worker died (signal: 6 (SIGABRT), past its memory limit of 128.0 MiB): ",
    ) && message.contains("memory allocation of");
    let refused = message
        == "input 0: worker could not decode the input: Cannot allocate memory (os error 12)";
    assert!(aborted || refused, "{message}");
}

/// Returns this worker's pid, and makes its exit hang (in an `atexit`
/// handler), as a task's leftover state might.
fn pid_then_hang_at_exit(_: u64) -> u32 {
    extern "C" fn hang() {
        loop {
            std::thread::park();
        }
    }
    // SAFETY: registers a handler that takes no arguments.
    assert_eq!(unsafe { libc::atexit(hang) }, 0);
    std::process::id()
}
buckshot::register!(pid_then_hang_at_exit);

#[test]
fn a_recycled_worker_does_not_linger_in_its_exit_handlers() {
    let pool = Pool::builder()
        .processes(1)
        .max_tasks_per_worker(1)
        .build()
        .unwrap();
    let pids: Vec<u32> = pool
        .map(pid_then_hang_at_exit, 0..2)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_ne!(pids[0], pids[1], "a fresh worker for each input");
    // The pool lives on, idle: the worker must still go (a worker whose
    // requests end kills its process group rather than run exit handlers;
    // one that lingers anyway is killed after a grace period).
    common::assert_worker_gone(pids[0], "recycled, stuck in its exit");
}
