//! Single calls: one input, isolated, with the map's fault semantics, from
//! many threads at once on one pool.

mod common;

use std::time::Duration;

use buckshot::{Error, Pool};

fn checked(x: u64) -> u64 {
    match x {
        1 => panic!("one is not allowed"),
        2 => std::process::abort(),
        3 => common::hang(),
        x => x * 10,
    }
}
buckshot::register!(checked);

fn pid_of(_: u64) -> u32 {
    std::process::id()
}
buckshot::register!(pid_of);

#[test]
fn a_call_fails_alone_and_the_pool_goes_on() {
    let pool = Pool::builder()
        .processes(1)
        .timeout(Duration::from_millis(300))
        .forward_stderr(false)
        .build()
        .unwrap();
    let pool = common::within("the calls", move || {
        assert_eq!(pool.call(checked, 4).unwrap(), 40);
        assert!(matches!(
            pool.call(checked, 1),
            Err(Error::TaskPanicked { index: 0, message, .. }) if message == "one is not allowed"
        ));
        let died = pool.call(checked, 2);
        assert!(
            matches!(died, Err(Error::WorkerDied { index: 0, .. })),
            "{died:?}"
        );
        assert!(matches!(
            pool.call(checked, 3),
            Err(Error::TaskTimeout { index: 0, .. })
        ));
        assert_eq!(pool.call(checked, 5).unwrap(), 50);
        pool
    });
    drop(pool);
}

#[test]
fn many_threads_call_one_pool_at_once() {
    let pool = Pool::new(2).unwrap();
    let workers: std::collections::HashSet<u32> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..16u64)
            .map(|t| {
                let pool = &pool;
                scope.spawn(move || {
                    (0..50)
                        .map(|k| {
                            assert_eq!(
                                pool.call(checked, 10 + t * 100 + k).unwrap(),
                                (10 + t * 100 + k) * 10
                            );
                            pool.call(pid_of, 0).unwrap()
                        })
                        .collect::<Vec<u32>>()
                })
            })
            .collect();
        calls
            .into_iter()
            .flat_map(|call| call.join().unwrap())
            .collect()
    });
    assert!(!workers.is_empty() && workers.len() <= 2, "{workers:?}");
}

#[test]
fn results_know_their_length_when_the_inputs_do() {
    let pool = Pool::new(2).unwrap();
    let mut results = pool.map(checked, vec![4u64, 5, 6, 7]).unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(results.next().unwrap().unwrap(), 40);
    assert_eq!(results.len(), 3);
    let mut unordered = pool.map_unordered(checked, [4u64, 5]).unwrap();
    assert_eq!(unordered.len(), 2);
    assert!(unordered.next().unwrap().1.is_ok());
    assert_eq!(unordered.len(), 1);
}
