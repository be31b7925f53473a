//! A program that sets SIGCHLD to `SIG_IGN` lets the kernel reap its
//! children: workers' exit statuses are lost, but every input still gets
//! its one result, and nothing is left behind. One test in this binary: the
//! disposition is the whole process's.

mod common;

use std::time::Duration;

use buckshot::{Error, Pool};

fn abort_or_hang(x: u64) -> u64 {
    match x {
        1 => std::process::abort(),
        2 => common::hang(),
        x => x,
    }
}
buckshot::register!(abort_or_hang);

#[test]
fn ignoring_sigchld_loses_exit_statuses_and_nothing_else() {
    // SAFETY: setting a disposition to SIG_IGN runs no code of ours.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    let pool = Pool::builder()
        .processes(2)
        .timeout(Duration::from_millis(300))
        .forward_stderr(false)
        .build()
        .unwrap();
    let results: Vec<Result<u64, Error>> = common::within("the map", move || {
        pool.map(abort_or_hang, 0..6u64).unwrap().collect()
    });
    assert_eq!(results.len(), 6, "one result per input: {results:?}");
    for (index, result) in results.iter().enumerate() {
        match (index, result) {
            (1, Err(error @ Error::WorkerDied { status: None, .. })) => {
                assert_eq!(
                    error.to_string(),
                    "input 1: worker died (exit status unknown)"
                );
            }
            (2, Err(Error::TaskTimeout { index: 2, .. })) => {}
            (_, Ok(x)) if *x == index as u64 => {}
            other => panic!("input {index}: {other:?}"),
        }
    }
    assert_eq!(common::children(), [], "workers remain");
}
