//! `on_worker_stderr`: every line workers write to stderr reaches the
//! callback, whole and without its newline (from several workers at once,
//! from a task's subprocess, from a worker that then dies, a last line
//! without a newline), and none reaches this program's stderr; a callback
//! that blocks delays no timeout and no shutdown.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use buckshot::{Error, Pool};
use serde::{Deserialize, Serialize};

/// What a task writes to stderr.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Job {
    /// `lines` lines with `eprintln!`, then one with `println!` (which a
    /// worker sends to stderr).
    Lines { input: u32, lines: u32 },
    /// A line written in two halves, with a pause between them (which
    /// does not end the line).
    Halves { input: u32 },
    /// Two lines written by a subprocess of the task.
    Subprocess { input: u32 },
    /// A line, then a last one without a newline, then the worker aborts.
    Die { input: u32 },
    /// This many bytes of 1 KiB lines.
    Flood { bytes: usize },
    /// Sleeps until its worker is killed.
    Hang,
}

fn write(job: Job) -> u32 {
    match job {
        Job::Lines { input, lines } => {
            for line in 0..lines {
                eprintln!(
                    "input {input} line {line} {}",
                    "x".repeat(line as usize % 200)
                );
            }
            println!("input {input} says hello through println");
            input
        }
        Job::Halves { input } => {
            let mut stderr = std::io::stderr().lock();
            write!(stderr, "input {input} first half,").unwrap();
            stderr.flush().unwrap();
            // The pool reads the first half meanwhile.
            std::thread::sleep(Duration::from_millis(100));
            writeln!(stderr, " second half").unwrap();
            input
        }
        Job::Subprocess { input } => {
            let script =
                format!("echo 'child of {input} line 0' >&2; echo 'child of {input} line 1' >&2");
            let status = Command::new("sh").args(["-c", &script]).status().unwrap();
            assert!(status.success());
            input
        }
        Job::Die { input } => {
            let mut stderr = std::io::stderr().lock();
            writeln!(stderr, "input {input} is about to die").unwrap();
            write!(stderr, "input {input} last words, no newline").unwrap();
            stderr.flush().unwrap();
            std::process::abort()
        }
        Job::Flood { bytes } => {
            let line = format!("{}\n", "f".repeat(1023));
            let mut stderr = std::io::stderr().lock();
            for _ in 0..bytes / line.len() {
                stderr.write_all(line.as_bytes()).unwrap();
            }
            0
        }
        Job::Hang => common::hang(),
    }
}
buckshot::register!(write);

/// The jobs of the first test, and the lines they write.
fn jobs() -> (Vec<Job>, Vec<String>) {
    let (mut jobs, mut expected) = (Vec::new(), Vec::new());
    for input in 0..40 {
        let job = match input % 8 {
            3 => Job::Subprocess { input },
            5 => Job::Halves { input },
            6 => Job::Die { input },
            _ => Job::Lines {
                input,
                lines: input * 7,
            },
        };
        match &job {
            Job::Lines { input, lines } => {
                for line in 0..*lines {
                    expected.push(format!(
                        "input {input} line {line} {}",
                        "x".repeat(line as usize % 200)
                    ));
                }
                expected.push(format!("input {input} says hello through println"));
            }
            Job::Halves { input } => {
                expected.push(format!("input {input} first half, second half"));
            }
            Job::Subprocess { input } => {
                expected.push(format!("child of {input} line 0"));
                expected.push(format!("child of {input} line 1"));
            }
            Job::Die { input } => {
                expected.push(format!("input {input} is about to die"));
                expected.push(format!("input {input} last words, no newline"));
            }
            Job::Flood { .. } | Job::Hang => unreachable!(),
        }
        jobs.push(job);
    }
    expected.sort();
    (jobs, expected)
}

/// A callback that keeps every line, and the lines it kept.
fn keeper() -> (
    impl Fn(&str) + Send + Sync + 'static,
    Arc<Mutex<Vec<String>>>,
) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&lines);
    (
        move |line: &str| kept.lock().unwrap().push(line.to_owned()),
        lines,
    )
}

/// Runs the jobs of [`jobs`] on 3 workers whose lines go to a keeper;
/// returns the results and the lines kept once the pool is dropped.
fn run_jobs() -> (Vec<Result<u32, Error>>, Vec<String>) {
    let (keep, lines) = keeper();
    let pool = Pool::builder()
        .processes(3)
        .batch_size(1)
        .on_worker_stderr(keep)
        .build()
        .unwrap();
    let results = common::within("the map", move || {
        let results: Vec<Result<u32, Error>> = pool.map(write, jobs().0).unwrap().collect();
        // Dropping the pool hands the callback what is left.
        drop(pool);
        results
    });
    let mut lines = lines.lock().unwrap().clone();
    lines.sort();
    (results, lines)
}

#[test]
fn every_line_of_every_worker_reaches_the_callback() {
    let (results, lines) = run_jobs();
    for (input, result) in results.iter().enumerate() {
        match result {
            Ok(output) => assert_eq!(*output as usize, input),
            // The excerpt is kept for the error all the same.
            Err(Error::WorkerDied { stderr, .. }) if input % 8 == 6 => assert!(
                stderr.ends_with(&format!(
                    "input {input} is about to die\ninput {input} last words, no newline"
                )),
                "{stderr}"
            ),
            Err(e) => panic!("input {input}: {e}"),
        }
    }
    let expected = jobs().1;
    assert_eq!(lines.len(), expected.len(), "lines in all");
    assert_eq!(lines, expected);
}

/// Set in a copy of this test binary whose stderr the test reads.
const COPY_ENV: &str = "BUCKSHOT_TEST_WORKER_STDERR_COPY";

#[test]
fn no_line_reaches_this_programs_stderr() {
    if std::env::var_os(COPY_ENV).is_some() {
        // The copy: says on stdout how many lines the callback got.
        let (_, lines) = run_jobs();
        println!("lines: {}", lines.len());
        return;
    }
    let name = "no_line_reaches_this_programs_stderr";
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(COPY_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output = common::within("the copy", move || child.wait_with_output().unwrap());
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("lines: {}\n", jobs().1.len())),
        "{stdout}"
    );
    assert_eq!(stderr, "", "the copy's stderr");
}

#[test]
fn a_dropped_pool_waits_for_a_slow_callback_that_makes_progress() {
    let (keep, lines) = keeper();
    let pool = Pool::builder()
        .processes(1)
        .on_worker_stderr(move |line| {
            // A slow consumer: 10 lines take it 200 ms.
            std::thread::sleep(Duration::from_millis(20));
            keep(line);
        })
        .build()
        .unwrap();
    let job = Job::Lines {
        input: 7,
        lines: 10,
    };
    common::within("a call and the pool's drop", move || {
        assert_eq!(pool.call(write, job).unwrap(), 7);
        drop(pool);
    });
    let lines = lines.lock().unwrap().clone();
    assert_eq!(lines.len(), 11, "{lines:?}");
}

#[test]
fn forward_stderr_false_silences_the_callback_too() {
    let (keep, lines) = keeper();
    let pool = Pool::builder()
        .processes(1)
        .forward_stderr(false)
        .on_worker_stderr(keep)
        .build()
        .unwrap();
    let job = Job::Lines { input: 5, lines: 3 };
    let result = common::within("a call", move || {
        let result = pool.call(write, job).unwrap();
        drop(pool);
        result
    });
    assert_eq!(result, 5);
    assert_eq!(*lines.lock().unwrap(), Vec::<String>::new());
}

#[test]
fn a_blocked_callback_delays_no_timeout_and_no_shutdown() {
    // The callback blocks on its first line until the test lets it go.
    let (release, released) = mpsc::channel::<()>();
    let released = Mutex::new(released);
    let (keep, lines) = keeper();
    let blocked = Arc::new(Mutex::new(false));
    let blocking = Arc::clone(&blocked);
    let pool = Pool::builder()
        .processes(2)
        .batch_size(1)
        .timeout(Duration::from_millis(300))
        .on_worker_stderr(move |line| {
            let first = !std::mem::replace(&mut *blocking.lock().unwrap(), true);
            if first {
                // A bound, so that a failed test does not leave it blocked.
                let _ = released
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(120));
            }
            keep(line);
        })
        .build()
        .unwrap();
    let bound = Duration::from_secs(20);
    let (results, took, pool) = common::within_for("the map", bound, move || {
        // The first line blocks the callback; 4 MiB more fill its queue.
        let first = pool.call(write, Job::Lines { input: 0, lines: 1 }).unwrap();
        assert_eq!(first, 0);
        common::wait_until("the callback is blocked", || *blocked.lock().unwrap());
        let jobs = [
            Job::Flood { bytes: 4 << 20 },
            Job::Hang,
            Job::Lines { input: 2, lines: 3 },
        ];
        let started = Instant::now();
        let results: Vec<Result<u32, Error>> = pool.map(write, jobs).unwrap().collect();
        (results, started.elapsed(), pool)
    });
    assert!(matches!(results[0], Ok(0)), "{:?}", results[0]);
    assert!(
        results[1].as_ref().is_err_and(Error::is_timeout),
        "{:?}",
        results[1]
    );
    assert!(matches!(results[2], Ok(2)), "{:?}", results[2]);
    assert!(
        took < Duration::from_secs(5),
        "the map took {took:?} behind a blocked callback"
    );
    // Dropping the pool waits for a callback that makes no progress only
    // for a moment.
    let dropped = Instant::now();
    common::within_for("the pool's drop", Duration::from_secs(10), move || {
        drop(pool)
    });
    assert!(
        dropped.elapsed() < Duration::from_secs(5),
        "the pool's drop took {:?}",
        dropped.elapsed()
    );
    assert!(lines.lock().unwrap().is_empty(), "the callback is blocked");
    // Let go, it gets what was queued, and a line for what was dropped.
    release.send(()).unwrap();
    let dropped_line = |lines: &[String]| {
        lines.iter().any(|line| {
            line.starts_with("[buckshot: ") && line.ends_with(" of worker stderr dropped]")
        })
    };
    common::wait_until("the callback says what was dropped", || {
        dropped_line(&lines.lock().unwrap())
    });
    let lines = lines.lock().unwrap().clone();
    assert_eq!(lines[0], "input 0 line 0 ", "the first line, once let go");
    assert!(lines.len() < 4096, "{} lines: none dropped", lines.len());
}
