//! Workers that die (killed from outside, or by their task) fail the input
//! they ran, and only that one; the map goes on with a fresh worker.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use buckshot::{Error, Pool};

fn hang_at_seven((x, rendezvous): (u64, String)) -> u64 {
    if x == 7 {
        common::announce(&rendezvous);
        common::hang();
    }
    x
}
buckshot::register!(hang_at_seven);

fn abort_at_three(x: u64) -> u64 {
    if x == 3 {
        eprintln!("about to abort on {x}");
        std::process::abort();
    }
    x
}
buckshot::register!(abort_at_three);

#[test]
fn a_worker_killed_from_outside_fails_only_its_input() {
    let rendezvous = common::Rendezvous::new();
    // The timeout is only a safety net: the kill comes much sooner.
    let pool = Pool::builder()
        .processes(2)
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let path = rendezvous.path();
    let inputs: Vec<(u64, String)> = (0..30).map(|x| (x, path.clone())).collect();
    let map =
        std::thread::spawn(move || pool.map(hang_at_seven, inputs).unwrap().collect::<Vec<_>>());
    let victim = rendezvous.wait();
    common::kill9(victim);
    let results = common::within("the map after a kill", move || map.join().unwrap());
    assert_eq!(results.len(), 30, "one result per input: {results:?}");
    for (x, result) in results.into_iter().enumerate() {
        if x == 7 {
            match result {
                Err(Error::WorkerDied {
                    index: 7, status, ..
                }) => assert_eq!(status.and_then(|s| s.signal()), Some(libc::SIGKILL)),
                other => panic!("input 7: expected WorkerDied, got {other:?}"),
            }
        } else {
            assert_eq!(result.unwrap(), x as u64);
        }
    }
    assert!(!common::alive(victim), "the killed worker was not reaped");
}

#[test]
fn abort_in_a_task_fails_only_its_input() {
    let stderr = common::StderrLines::default();
    let pool = stderr.builder().processes(2).build().unwrap();
    let results: Vec<Result<u64, Error>> = common::within("map with an abort", move || {
        pool.map(abort_at_three, 0..10u64).unwrap().collect()
    });
    assert_eq!(results.len(), 10, "one result per input: {results:?}");
    for (x, result) in results.into_iter().enumerate() {
        if x == 3 {
            let Err(error @ Error::WorkerDied { .. }) = result else {
                panic!("input 3: {result:?}")
            };
            let Error::WorkerDied { status, stderr, .. } = &error else {
                unreachable!()
            };
            assert_eq!(status.and_then(|s| s.signal()), Some(libc::SIGABRT));
            assert!(
                stderr.contains("about to abort on 3"),
                "stderr tail: {stderr:?}"
            );
            assert!(
                error
                    .to_string()
                    .starts_with("input 3: worker died (signal: 6 (SIGABRT)"),
                "{error}"
            );
        } else {
            assert_eq!(result.unwrap(), x as u64);
        }
    }
    // The pool is dropped: its workers' last lines are in.
    assert_eq!(stderr.lines(), ["about to abort on 3"]);
}

/// Input 0 prints and waits until the pool has read it; input 1 aborts
/// without a word.
fn print_then_abort_silently(x: u64) -> u64 {
    if x == 0 {
        eprintln!("noise from input 0");
        let stderr = std::io::stderr();
        common::wait_until("the pool reads this worker's stderr", || {
            rustix::io::ioctl_fionread(&stderr).unwrap() == 0
        });
    } else {
        std::process::abort();
    }
    x
}
buckshot::register!(print_then_abort_silently);

#[test]
fn a_silent_death_is_not_explained_by_an_earlier_input() {
    let pool = Pool::builder()
        .processes(1)
        .batch_size(1)
        .forward_stderr(false)
        .build()
        .unwrap();
    let results: Vec<Result<u64, Error>> = common::within("map with a silent abort", move || {
        pool.map(print_then_abort_silently, 0..2u64)
            .unwrap()
            .collect()
    });
    assert_eq!(results.len(), 2, "one result per input: {results:?}");
    assert_eq!(results[0].as_ref().ok(), Some(&0));
    match &results[1] {
        Err(error @ Error::WorkerDied { stderr, .. }) => {
            assert_eq!(stderr, "", "{error}");
            assert_eq!(
                error.to_string(),
                "input 1: worker died (signal: 6 (SIGABRT))"
            );
        }
        other => panic!("input 1: {other:?}"),
    }
}

/// Burns CPU time until its worker is stopped.
fn spin_forever(_: u64) -> u64 {
    let mut x = 0u64;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}
buckshot::register!(spin_forever);

#[test]
fn a_worker_ended_by_its_cpu_time_limit_says_so() {
    let sandbox = buckshot::Sandbox::new().cpu_time(Duration::from_secs(1));
    let pool = match Pool::builder()
        .processes(1)
        // A safety net only.
        .timeout(common::BOUND)
        .sandbox(sandbox)
        .forward_stderr(false)
        .build()
    {
        Ok(pool) => pool,
        Err(Error::Sandbox { reason, .. }) => return common::skip("rlimit", &reason),
        Err(e) => panic!("{e}"),
    };
    let result = common::within("a task past its CPU time", move || {
        pool.call(spin_forever, 0)
    });
    let Err(error @ Error::WorkerDied { .. }) = result else {
        panic!("{result:?}")
    };
    let Error::WorkerDied { limit, .. } = &error else {
        unreachable!()
    };
    assert_eq!(*limit, Some(buckshot::Limit::CpuTime), "{error}");
    assert!(
        error.to_string().contains(", past its CPU time limit)"),
        "{error}"
    );
}
