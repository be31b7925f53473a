//! What a task starts ends with its worker: a subprocess left running by a
//! task that timed out, crashed, or whose pool was dropped is killed with
//! the worker's process group.

mod common;

use std::process::Command;
use std::time::Duration;

use buckshot::{Error, Pool};

/// What the task does once its `sleep 60` runs.
#[derive(serde::Serialize, serde::Deserialize)]
enum Then {
    Hang,
    Abort,
    Return,
}

fn start_sleeper((then, rendezvous): (Then, String)) -> u32 {
    let sleeper = Command::new("sleep").arg("60").spawn().unwrap().id();
    common::announce_pid(&rendezvous, sleeper);
    match then {
        Then::Hang => common::hang(),
        Then::Abort => std::process::abort(),
        Then::Return => sleeper,
    }
}
buckshot::register!(start_sleeper);

/// Runs one `start_sleeper` input on a fresh pool; returns the result, the
/// sleeper's pid and the pool (still alive).
fn run(then: Then) -> (Result<u32, Error>, u32, Pool) {
    let rendezvous = common::Rendezvous::new();
    let pool = Pool::builder()
        .processes(1)
        .timeout(Duration::from_millis(500))
        .forward_stderr(false)
        .build()
        .unwrap();
    let input = (then, rendezvous.path());
    let map = std::thread::spawn(move || {
        let result = pool.map(start_sleeper, [input]).unwrap().next().unwrap();
        (result, pool)
    });
    let sleeper = rendezvous.wait();
    let (result, pool) = common::within("the map", move || map.join().unwrap());
    (result, sleeper, pool)
}

fn assert_gone_soon(sleeper: u32, when: &str) {
    let gone = common::exits_within(sleeper, Duration::from_secs(5));
    if !gone {
        common::kill9(sleeper);
    }
    assert!(gone, "the task's subprocess outlived {when}");
}

#[test]
fn a_timed_out_task_takes_its_subprocess_along() {
    let (result, sleeper, _pool) = run(Then::Hang);
    assert!(result.as_ref().is_err_and(Error::is_timeout), "{result:?}");
    assert_gone_soon(sleeper, "the timeout, while the pool lives");
}

#[test]
fn a_crashed_task_takes_its_subprocess_along() {
    let (result, sleeper, _pool) = run(Then::Abort);
    assert!(
        result.as_ref().is_err_and(Error::is_worker_died),
        "{result:?}"
    );
    assert_gone_soon(sleeper, "the crash, while the pool lives");
}

#[test]
fn a_dropped_pool_takes_every_subprocess_along() {
    let (result, sleeper, pool) = run(Then::Return);
    assert_eq!(result.unwrap(), sleeper);
    assert!(
        common::alive(sleeper),
        "the subprocess of a finished task ended early"
    );
    drop(pool);
    assert_gone_soon(sleeper, "the pool's drop");
}
