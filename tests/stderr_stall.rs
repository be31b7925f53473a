//! A parent whose stderr nobody reads (a stalled log consumer, a full
//! terminal), or reads slowly, must not freeze its pool: timeouts still
//! fire, results still arrive, dropping the pool returns, and worker output
//! that cannot be forwarded is dropped with a visible marker.
//!
//! This binary runs twice: as the test, and (with the variable below set)
//! as the host program whose stderr the test stalls.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use buckshot::{Error, Pool};
use serde::{Deserialize, Serialize};

const HOST_ENV: &str = "BUCKSHOT_TEST_STDERR_HOST";

/// What a task does.
#[derive(Serialize, Deserialize)]
enum Job {
    /// Writes this many bytes to stderr, then returns.
    Print(usize),
    /// Writes to stderr until it is killed.
    PrintForever,
    /// Sleeps until it is killed.
    Hang,
}

fn job(job: Job) -> usize {
    let line = [b'e'; 1023]
        .iter()
        .chain(b"\n")
        .copied()
        .collect::<Vec<u8>>();
    let mut stderr = std::io::stderr().lock();
    match job {
        Job::Print(bytes) => {
            for _ in 0..bytes / line.len() {
                stderr.write_all(&line).unwrap();
            }
            bytes
        }
        Job::PrintForever => loop {
            stderr.write_all(&line).unwrap();
        },
        Job::Hang => common::hang(),
    }
}
buckshot::register!(job);

/// The host: maps `jobs` with a 300 ms timeout, prints one line per result
/// and the time the map took, waits for its stdin to end, drops the pool
/// and exits.
fn host(jobs: Vec<Job>) {
    let pool = Pool::builder()
        .processes(2)
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let started = Instant::now();
    let results: Vec<Result<usize, Error>> = pool.map(job, jobs).unwrap().collect();
    let took = started.elapsed();
    let mut stdout = std::io::stdout().lock();
    for result in results {
        match result {
            Ok(bytes) => writeln!(stdout, "ok {bytes}").unwrap(),
            Err(e) if e.is_timeout() => writeln!(stdout, "timeout").unwrap(),
            Err(e) => writeln!(stdout, "error {e}").unwrap(),
        }
    }
    writeln!(stdout, "took {}", took.as_millis()).unwrap();
    stdout.flush().unwrap();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    let dropped = Instant::now();
    drop(pool);
    eprintln!("host: the pool dropped in {:?}", dropped.elapsed());
}

/// The host process, killed if the test fails before it exits.
struct Host(Child);

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_host(jobs: &str) -> Host {
    let child = Command::new(std::env::current_exe().unwrap())
        .env(HOST_ENV, jobs)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Host(child)
}

/// Reads the host's report: its result lines and how long the map took.
/// Fails if it does not come within `bound`. The host then waits for its
/// stdin to end.
fn report(host: &mut Host, bound: Duration) -> (Vec<String>, Duration) {
    let stdout = host.0.stdout.take().unwrap();
    let lines = common::within_for("the host's report", bound, move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let last = line.starts_with("took ");
            lines.push(line);
            if last {
                break;
            }
        }
        lines
    });
    let (took, results) = lines.split_last().expect("a report");
    let took = took.strip_prefix("took ").expect("the map's time");
    (
        results.to_vec(),
        Duration::from_millis(took.parse().unwrap()),
    )
}

/// Nobody reads the host's stderr until the map is over.
fn a_stalled_stderr() {
    let mut host = start_host("stalled");
    // Read the report while stderr is still stalled.
    let (results, _) = report(&mut host, Duration::from_secs(20));
    assert_eq!(results, ["ok 4194304", "timeout", "ok 0"]);
    drop(host.0.stdin.take());
    let mut stderr = host.0.stderr.take().unwrap();
    let text = common::within_for("the host's stderr", Duration::from_secs(20), move || {
        let mut text = Vec::new();
        stderr.read_to_end(&mut text).unwrap();
        String::from_utf8_lossy(&text).into_owned()
    });
    let status = host.0.wait().unwrap();
    assert!(status.success(), "host: {status}");
    let marker = text.lines().find(|line| {
        line.starts_with("[buckshot: ") && line.ends_with(" of worker stderr dropped]")
    });
    assert!(
        marker.is_some(),
        "no marker for dropped output in {} bytes of stderr; last line: {:?}",
        text.len(),
        text.lines().last()
    );
    println!("  marker: {}", marker.unwrap());
}

/// The host's stderr is drained at 320 KB/s while a task prints without
/// end: its timeout must still fire.
fn a_slow_stderr() {
    let mut host = start_host("slow");
    let mut stderr = host.0.stderr.take().unwrap();
    let drain = std::thread::spawn(move || {
        let mut buf = vec![0; 32 * 1024];
        let mut total = 0;
        loop {
            match stderr.read(&mut buf) {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
            // Pacing of the drain (10 reads of 32 KiB a second), not a
            // synchronisation.
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let (results, took) = report(&mut host, Duration::from_secs(20));
    assert_eq!(results, ["timeout", "ok 0"]);
    assert!(
        took < Duration::from_secs(5),
        "the timeout fired only after {took:?}"
    );
    drop(host.0.stdin.take());
    let status = common::within_for("the host's exit", Duration::from_secs(20), move || {
        host.0.wait().unwrap()
    });
    assert!(status.success(), "host: {status}");
    drain.join().unwrap();
}

fn main() {
    if let Ok(how) = std::env::var(HOST_ENV) {
        match how.as_str() {
            "stalled" => host(vec![Job::Print(4 << 20), Job::Hang, Job::Print(0)]),
            "slow" => host(vec![Job::PrintForever, Job::Print(0)]),
            other => panic!("unknown host mode {other}"),
        }
        return;
    }
    let tests: [(&str, fn()); 2] = [
        ("a_stalled_stderr_freezes_nothing", a_stalled_stderr),
        ("a_slow_stderr_delays_no_timeout", a_slow_stderr),
    ];
    for (name, test) in tests {
        let started = Instant::now();
        test();
        println!("test {name} ... ok ({:?})", started.elapsed());
    }
    println!();
    println!("test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}
