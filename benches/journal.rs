//! What a journal costs: tiny tasks, tasks of about 1 ms and an uneven
//! CPU-bound map, each with and without a journal, in alternating runs of one process (the machine
//! is shared and noisy), reported as medians and ratios. Also the rate of a
//! map answered entirely from its journal (a resumed run).
//!
//! `cargo bench --bench journal` (about a minute and a half).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use buckshot::Pool;

const PROCESSES: usize = 2;
const ROUNDS: usize = 5;

fn identity(x: u64) -> u64 {
    x
}
buckshot::register!(identity);

/// Wakes the workers up: another task, so that a measured map starts with
/// no output of its task in the journal, as a first run does (one that
/// has any looks every input up).
fn warm_up(x: u64) -> u64 {
    x
}
buckshot::register!(warm_up);

/// About a millisecond of work (busy, as a computation is: the journal's
/// writer competes with it for the cores).
fn one_ms(x: u64) -> u64 {
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1) {
        std::hint::spin_loop();
    }
    x
}
buckshot::register!(one_ms);

/// Cost grows with `x`: the uneven workload.
fn harmonic(x: u64) -> f64 {
    (1..=x).map(|d| 1.0 / d as f64).sum()
}
buckshot::register!(harmonic);

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// A fresh journal path, with its WAL files removed.
fn fresh(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    for end in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{end}", path.display()));
    }
    path
}

/// Maps `inputs` on a new pool, with a journal at `journal` if given;
/// returns the time from the first input to the last result (the pool's
/// start and drop, which commits the journal, excluded but for the drop
/// when `with_drop`).
fn run<F, M>(f: F, inputs: &[u64], journal: Option<&Path>, with_drop: bool) -> Duration
where
    F: buckshot::PlainTask<M, Input = u64> + Copy,
{
    let mut builder = Pool::builder().processes(PROCESSES);
    if let Some(path) = journal {
        builder = builder.journal(path);
    }
    let pool = builder.build().unwrap();
    let _ = pool.call(warm_up, 1).unwrap();
    let start = Instant::now();
    let count = pool
        .map(f, inputs.iter().copied())
        .unwrap()
        .map(Result::unwrap)
        .count();
    assert_eq!(count, inputs.len());
    if with_drop {
        drop(pool);
    }
    start.elapsed()
}

fn compare<F, M>(label: &str, f: F, inputs: &[u64], dir: &Path)
where
    F: buckshot::PlainTask<M, Input = u64> + Copy,
{
    let (mut plain, mut journalled, mut resumed) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let path = fresh(dir, &format!("{label}-{round}.db"));
        if round % 2 == 0 {
            plain.push(run(f, inputs, None, true));
            journalled.push(run(f, inputs, Some(&path), true));
        } else {
            journalled.push(run(f, inputs, Some(&path), true));
            plain.push(run(f, inputs, None, true));
        }
        // Every input is in the journal now: nothing runs.
        resumed.push(run(f, inputs, Some(&path), true));
        fresh(dir, &format!("{label}-{round}.db"));
    }
    let n = inputs.len() as f64;
    let (plain, journalled, resumed) = (median(plain), median(journalled), median(resumed));
    let rate = |d: Duration| n / d.as_secs_f64();
    println!(
        "{label:<28} {:>12.0}/s plain  {:>12.0}/s journal ({:.3}x)  {:>12.0}/s resumed ({:.3}x)",
        rate(plain),
        rate(journalled),
        plain.as_secs_f64() / journalled.as_secs_f64(),
        rate(resumed),
        plain.as_secs_f64() / resumed.as_secs_f64(),
    );
}

fn main() {
    let dir = std::env::temp_dir().join(format!("buckshot-bench-journal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    println!(
        "medians of {ROUNDS} alternating runs, {PROCESSES} processes; ratio = plain time / that time"
    );
    let tiny: Vec<u64> = (0..200_000).collect();
    compare("tiny tasks (u64 identity)", identity, &tiny, &dir);
    let millis: Vec<u64> = (0..1000).collect();
    compare("1 ms tasks, 1000 tasks", one_ms, &millis, &dir);
    // About 1 s of serial work, cost growing with x.
    let start = Instant::now();
    std::hint::black_box(harmonic(std::hint::black_box(20_000_000)));
    let terms_per_sec = 2e7 / start.elapsed().as_secs_f64();
    let n = ((2.0 * terms_per_sec).sqrt() as u64).max(1000);
    let uneven: Vec<u64> = (1..=n).collect();
    compare(
        &format!("uneven harmonic, {n} tasks"),
        harmonic,
        &uneven,
        &dir,
    );
    let _ = std::fs::remove_dir_all(&dir);
}
