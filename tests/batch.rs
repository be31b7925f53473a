//! Faults inside frames of several inputs, with `batch_size(8)` and with the
//! adaptive default (20,000 tiny tasks: frames grow to hundreds of inputs). A worker
//! answers a frame at its end, so when it dies or times out in the middle
//! of one, the pool cannot tell which input was running: it runs each of
//! them again, alone, and reports only the one that fails alone. Exactly
//! that input fails, with the right error; every other input yields its
//! value; one result per input; a timeout inside a frame is reported after
//! at least the timeout and at most about twice the timeout.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use buckshot::{Error, Pool};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
enum Fault {
    Abort,
    Exit,
    Hang,
}

/// Exit code of [`Fault::Exit`].
const EXIT_CODE: i32 = 7;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Job {
    x: u64,
    /// Which input misbehaves, and how.
    bad: u64,
    fault: Fault,
    /// Every run appends its input to this file: inputs of a frame that
    /// died run twice.
    log: String,
}

fn run(job: Job) -> u64 {
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(&job.log)
        .expect("open the run log");
    // One write of a few bytes to an O_APPEND file: lines never interleave.
    log.write_all(format!("{}\n", job.x).as_bytes())
        .expect("log the run");
    if job.x == job.bad {
        match job.fault {
            Fault::Abort => std::process::abort(),
            Fault::Exit => std::process::exit(EXIT_CODE),
            Fault::Hang => common::hang(),
        }
    }
    2 * job.x
}
buckshot::register!(run);

/// A run log that is removed with it.
struct Log(PathBuf);

impl Log {
    fn new(name: &str) -> Log {
        let path =
            std::env::temp_dir().join(format!("buckshot-batch-{}-{name}.log", std::process::id()));
        std::fs::write(&path, b"").unwrap();
        Log(path)
    }

    fn path(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }

    /// How many times each input ran.
    fn runs(&self) -> HashMap<u64, usize> {
        let mut runs = HashMap::new();
        for line in std::fs::read_to_string(&self.0).unwrap().lines() {
            *runs.entry(line.parse().unwrap()).or_default() += 1;
        }
        runs
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Whether `error` is what `fault` should yield for input `bad`.
fn expected_error(error: &Error, bad: usize, fault: Fault, timeout: Option<Duration>) -> bool {
    match (fault, error) {
        (Fault::Abort, Error::WorkerDied { index, status, .. }) => {
            *index == bad && status.and_then(|s| s.signal()) == Some(libc::SIGABRT)
        }
        (Fault::Exit, Error::WorkerDied { index, status, .. }) => {
            *index == bad && status.and_then(|s| s.code()) == Some(EXIT_CODE)
        }
        (
            Fault::Hang,
            Error::TaskTimeout {
                index, timeout: t, ..
            },
        ) => *index == bad && Some(*t) == timeout,
        _ => false,
    }
}

/// Maps `run` over inputs `0..n`, of which `bad` misbehaves as `fault`, and
/// checks that only `bad` fails, with the right error. Returns how long its
/// result took, from the start of the map.
fn only_the_bad_input_fails(
    name: &str,
    builder: buckshot::PoolBuilder,
    timeout: Option<Duration>,
    n: u64,
    bad: u64,
    fault: Fault,
) -> Duration {
    let builder = match timeout {
        Some(timeout) => builder.timeout(timeout),
        None => builder,
    };
    let pool = builder.processes(2).forward_stderr(false).build().unwrap();
    let log = Log::new(name);
    let jobs: Vec<Job> = (0..n)
        .map(|x| Job {
            x,
            bad,
            fault,
            log: log.path(),
        })
        .collect();
    let started = Instant::now();
    let mut results = pool.map(run, jobs).unwrap();
    // Stops at the first wrong result, so that a wrong blame fails at once
    // rather than after every input it then holds up.
    let (results, took) = common::within("the map", move || {
        let mut seen = Vec::new();
        let mut took = None;
        for (index, result) in results.by_ref().enumerate() {
            let right = match &result {
                Ok(value) => index as u64 != bad && *value == 2 * index as u64,
                Err(error) => index as u64 == bad && expected_error(error, index, fault, timeout),
            };
            if index as u64 == bad {
                took = Some(started.elapsed());
            }
            seen.push(result);
            if !right {
                break;
            }
        }
        (seen, took)
    });
    for (index, result) in results.iter().enumerate() {
        match result {
            Ok(value) if index as u64 != bad => {
                assert_eq!(*value, 2 * index as u64, "input {index}")
            }
            Err(error) if index as u64 == bad && expected_error(error, index, fault, timeout) => {}
            other => panic!("input {index} (input {bad} was to fail with {fault:?}): {other:?}"),
        }
    }
    assert_eq!(results.len(), n as usize, "one result per input");
    let runs = log.runs();
    assert_eq!(
        runs.get(&bad),
        Some(&2),
        "input {bad} should run twice, in its frame and alone; if it ran \
         once, it was alone in its frame and this test exercises no batch"
    );
    let reruns = runs.values().filter(|&&count| count > 1).count();
    assert!(
        runs.values().all(|&count| count <= 2),
        "an input ran more than twice: {runs:?}"
    );
    eprintln!("{name}: {reruns} inputs ran twice");
    took.expect("the bad input's result")
}

/// Checks the time a timeout inside a frame took to be reported: the frame
/// ran at least the timeout, and the input that hangs alone another one.
fn assert_timeout_reported_in_time(took: Duration, timeout: Duration) {
    assert!(
        took >= timeout,
        "reported after {took:?}, before {timeout:?}"
    );
    let bound = 2 * timeout + Duration::from_secs(2);
    assert!(
        took < bound,
        "reported after {took:?}, more than twice the timeout {timeout:?} and 2 s"
    );
}

#[test]
fn an_abort_in_a_batch_of_eight_fails_only_its_input() {
    // Input 100 is the fifth of the frame 96..104.
    let builder = Pool::builder().batch_size(8);
    only_the_bad_input_fails("abort-8", builder, None, 200, 100, Fault::Abort);
}

#[test]
fn an_exit_in_a_batch_of_eight_fails_only_its_input() {
    // Input 77 is the sixth of the frame 72..80.
    let builder = Pool::builder().batch_size(8);
    only_the_bad_input_fails("exit-8", builder, None, 200, 77, Fault::Exit);
}

#[test]
fn a_hang_in_a_batch_of_eight_times_out_alone() {
    // Input 45 is the sixth of the frame 40..48.
    let timeout = Duration::from_millis(300);
    let builder = Pool::builder().batch_size(8);
    let took = only_the_bad_input_fails("hang-8", builder, Some(timeout), 100, 45, Fault::Hang);
    assert_timeout_reported_in_time(took, timeout);
}

#[test]
fn an_abort_among_20000_tiny_inputs_fails_only_its_input() {
    only_the_bad_input_fails(
        "abort-adaptive",
        Pool::builder(),
        None,
        20_000,
        12_345,
        Fault::Abort,
    );
}

#[test]
fn an_exit_among_20000_tiny_inputs_fails_only_its_input() {
    only_the_bad_input_fails(
        "exit-adaptive",
        Pool::builder(),
        None,
        20_000,
        12_345,
        Fault::Exit,
    );
}

#[test]
fn a_hang_among_20000_tiny_inputs_times_out_alone() {
    let timeout = Duration::from_millis(500);
    let took = only_the_bad_input_fails(
        "hang-adaptive",
        Pool::builder(),
        Some(timeout),
        20_000,
        12_345,
        Fault::Hang,
    );
    assert_timeout_reported_in_time(took, timeout);
}
