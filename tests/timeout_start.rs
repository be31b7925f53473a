//! A timeout never fires before the task has run for the timeout: the clock
//! of an input starts once its frame is written in full, never at a time
//! read before the write, even when the pool's thread is busy with another
//! worker's replies. One test in this binary, so that the machine is not
//! busy with other tests' workers.
//!
//! The spinning input is small: the clock also counts the time a worker
//! takes to read and decode its input, which for megabytes is a few
//! milliseconds that a task cannot see from the inside. Even for a small
//! one, the worker must be scheduled to read it: on a loaded machine the
//! task started up to a third of a millisecond after the clock (measured),
//! so the check allows [`READ_LATENCY`]. A clock started before the write,
//! by a pool's thread busy with replies, is earlier by more.

mod common;

use std::sync::Arc;
use std::time::Duration;

use buckshot::Pool;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
enum Job {
    /// Returns at once: many of these keep the pool's thread busy.
    Echo(u64),
    /// Writes the time it started to the file, then spins until killed.
    Spin(String),
}

fn now_nanos() -> u128 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    assert_eq!(rc, 0);
    now.tv_sec as u128 * 1_000_000_000 + now.tv_nsec as u128
}

fn job(job: Job) -> u64 {
    match job {
        Job::Echo(x) => x,
        Job::Spin(path) => {
            std::fs::write(path, now_nanos().to_string()).unwrap();
            let mut x = 0u64;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
    }
}
buckshot::register!(job);

#[test]
fn a_timeout_never_fires_before_the_task_ran_that_long() {
    let timeout = Duration::from_millis(50);
    let pool = Arc::new(
        Pool::builder()
            .processes(2)
            .timeout(timeout)
            .batch_size(1)
            .build()
            .unwrap(),
    );
    let dir = std::env::temp_dir().join(format!("buckshot-timeout-start-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for round in 0..20 {
        let path = dir.join(round.to_string()).to_string_lossy().into_owned();
        // The spinning input sits among many tiny inputs, so that the
        // pool's thread has replies to read around its write.
        let mut jobs: Vec<Job> = (0..2000).map(Job::Echo).collect();
        jobs.insert(SPIN_AT, Job::Spin(path.clone()));
        let failed_at = common::within("the map", {
            let pool = Arc::clone(&pool);
            move || map_and_time_the_timeout(&pool, jobs)
        });
        let started: u128 = std::fs::read_to_string(&path).unwrap().parse().unwrap();
        let ran = Duration::from_nanos((failed_at - started) as u64);
        assert!(
            failed_at >= started && ran + READ_LATENCY >= timeout,
            "round {round}: timed out after {ran:?} of running, before {timeout:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// How long after the clock started the task may start: the worker, woken
/// by the write, must be scheduled to read its frame.
const READ_LATENCY: Duration = Duration::from_millis(2);

/// Where the spinning input sits among the others.
const SPIN_AT: usize = 20;

/// Maps `jobs`, checks every result, and returns when the caller saw the
/// timeout of the spinning input (monotonic nanoseconds).
fn map_and_time_the_timeout(pool: &Pool, jobs: Vec<Job>) -> u128 {
    let count = jobs.len();
    let mut failed_at = None;
    let mut seen = 0;
    for (index, result) in pool.map(job, jobs).unwrap().enumerate() {
        let now = now_nanos();
        seen += 1;
        match result {
            Err(e) if e.is_timeout() && index == SPIN_AT => failed_at = Some(now),
            Ok(x) if index != SPIN_AT => {
                assert_eq!(x as usize, if index < SPIN_AT { index } else { index - 1 })
            }
            other => panic!("input {index}: {other:?}"),
        }
    }
    assert_eq!(seen, count);
    failed_at.expect("the spinning input timed out")
}
