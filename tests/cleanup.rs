//! Nothing outlives a pool: no worker, no zombie, no file descriptor.
//! One test in this binary, so that no other test's workers are around.

mod common;

use std::time::Duration;

use buckshot::{Error, Pool};

fn pid_of(_: u64) -> u32 {
    std::process::id()
}
buckshot::register!(pid_of);

fn nap(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}
buckshot::register!(nap);

/// With a rendezvous, announces its worker's pid and never returns.
fn announce_and_hang(rendezvous: Option<String>) -> u32 {
    if let Some(path) = rendezvous {
        common::announce(&path);
        common::hang();
    }
    std::process::id()
}
buckshot::register!(announce_and_hang);

fn assert_clean(what: &str, fds_before: usize) {
    assert_eq!(common::children(), [], "{what}: child processes remain");
    assert_eq!(
        common::open_fds(),
        fds_before,
        "{what}: file descriptors leaked"
    );
}

#[test]
fn dropped_pools_leave_nothing_behind() {
    let fds_before = common::open_fds();
    assert_eq!(common::children(), [], "children before any pool");

    // A plain map.
    let pool = Pool::new(3).unwrap();
    let pids: Vec<u32> = pool
        .map(pid_of, 0..300)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(common::children().len(), 3);
    drop(pool);
    assert_clean("after a map", fds_before);
    for pid in pids {
        assert!(!common::alive(pid), "worker {pid} still exists");
    }

    // Timeouts kill workers and start replacements.
    let pool = Pool::builder()
        .processes(2)
        .timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let results: Vec<Result<u32, Error>> = pool.map(nap, [10_000, 0, 10_000, 0]).unwrap().collect();
    assert!(results[0].as_ref().unwrap_err().is_timeout());
    assert!(results[1].is_ok());
    drop(pool);
    assert_clean("after timeouts", fds_before);

    // A map dropped midway, with tasks still running: the workers running
    // them are killed at once, not when the pool goes.
    let pool = Pool::new(2).unwrap();
    let rendezvous = common::Rendezvous::new();
    let inputs = [None, Some(rendezvous.path()), Some(rendezvous.path())];
    let inputs = inputs.into_iter().chain(std::iter::repeat_n(None, 3));
    let mut results = pool.map(announce_and_hang, inputs).unwrap();
    assert!(results.next().unwrap().is_ok());
    let busy = [rendezvous.wait(), rendezvous.wait()];
    assert_ne!(busy[0], busy[1], "two hanging tasks in one worker");
    drop(rendezvous);
    drop(results);
    for pid in busy {
        common::assert_worker_gone(pid, "running a task of a dropped map");
    }
    // The pool still works after the cancelled map.
    assert_eq!(pool.map(nap, [0]).unwrap().count(), 1);
    drop(pool);
    assert_clean("after a cancelled map", fds_before);

    // A consumer that panics midway through a map.
    let pool = Pool::new(2).unwrap();
    let unwound = std::panic::catch_unwind(|| {
        for (index, result) in pool.map(nap, [0, 0, 60_000, 60_000]).unwrap().enumerate() {
            result.unwrap();
            assert!(index < 1, "the consumer gives up");
        }
    });
    assert!(unwound.is_err());
    drop(pool);
    assert_clean("after a panicking consumer", fds_before);

    // A pool dropped while another thread maps on it.
    let pool = std::sync::Arc::new(Pool::new(2).unwrap());
    let results = pool.map(nap, vec![0, 60_000, 60_000, 60_000, 0]).unwrap();
    let consumer = std::thread::spawn(move || results.collect::<Vec<_>>());
    drop(pool);
    let results = common::within("the orphaned map", move || consumer.join().unwrap());
    assert_eq!(results.len(), 5);
    for (index, result) in results.iter().enumerate() {
        assert!(
            matches!(result, Ok(_) | Err(Error::PoolClosed { reason: None, .. })),
            "input {index}: {result:?}"
        );
    }
    assert!(matches!(
        results[1],
        Err(Error::PoolClosed { index: 1, .. })
    ));
    assert_clean("after dropping a pool in use", fds_before);
}
