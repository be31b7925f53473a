//! The pool's scheduling promises, against real workers: no more than
//! `processes(n)` tasks run at once, recycled workers included; and no
//! worker idles while an input it could run waits behind a running one on
//! another worker (`batch_size(1)` keeps one input per worker; frames a
//! worker has not read are taken back).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use buckshot::Pool;
use serde_bytes::ByteBuf;

/// A directory of marker files that tasks share, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "buckshot-scheduling-{name}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn path(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| entries.count())
}

/// Holds a marker in `dir` while it runs, and returns the most markers it
/// saw: its own and those of the tasks running at the same time. A marker
/// goes before the task returns, so a task that starts after another
/// answered never sees it.
fn crowd((index, dir, ms): (u64, String, u64)) -> usize {
    let dir = Path::new(&dir);
    let marker = dir.join(format!("{}-{index}", std::process::id()));
    std::fs::write(&marker, b"").unwrap();
    let before = entries(dir);
    std::thread::sleep(Duration::from_millis(ms));
    let after = entries(dir);
    std::fs::remove_file(&marker).unwrap();
    before.max(after)
}
buckshot::register!(crowd);

fn pid_of(_: u64) -> u32 {
    std::process::id()
}
buckshot::register!(pid_of);

/// Runs `inputs` tasks of `ms` each on `processes` workers recycled after
/// every task; returns the most tasks seen running at once, and how long
/// the map took.
fn most_at_once(processes: usize, inputs: u64, ms: u64) -> (usize, Duration) {
    let dir = Dir::new("crowd");
    let pool = Pool::builder()
        .processes(processes)
        .max_tasks_per_worker(1)
        .build()
        .unwrap();
    let path = dir.path();
    let (seen, took) = common::within("a map on recycled workers", move || {
        let started = Instant::now();
        let seen: Vec<usize> = pool
            .map(crowd, (0..inputs).map(|i| (i, path.clone(), ms)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        (seen, started.elapsed())
    });
    assert_eq!(seen.len(), inputs as usize);
    assert_eq!(entries(&dir.0), 0, "every task removed its marker");
    (seen.into_iter().max().unwrap(), took)
}

#[test]
fn a_one_process_pool_runs_one_task_at_a_time_whatever_its_quota() {
    let (most, took) = most_at_once(1, 12, 30);
    assert_eq!(most, 1, "tasks ran at once in a one-process pool");
    assert!(took >= Duration::from_millis(12 * 30), "took {took:?}");
}

#[test]
fn a_two_process_pool_runs_at_most_two_tasks_at_once_whatever_its_quota() {
    let (most, took) = most_at_once(2, 24, 30);
    assert_eq!(most, 2, "more than two tasks ran at once, or never two");
    assert!(took >= Duration::from_millis(12 * 30), "took {took:?}");
}

/// What an input of [`hold_or_nap`] does.
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy)]
enum Job {
    /// Waits until the release file exists (at most [`common::BOUND`]).
    Hold,
    Nap(u64),
}

/// Holds until `release` exists, or naps; returns its worker's pid.
fn hold_or_nap((job, release): (Job, String)) -> u32 {
    match job {
        Job::Hold => {
            let deadline = Instant::now() + common::BOUND;
            while !Path::new(&release).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Job::Nap(ms) => std::thread::sleep(Duration::from_millis(ms)),
    }
    std::process::id()
}
buckshot::register!(hold_or_nap);

/// Maps `jobs` unordered and releases the held ones only once every other
/// input has come back: an input stuck behind a held one never comes
/// back, and the map fails after `bound` instead of finishing.
fn naps_pass_the_held(pool: Pool, jobs: Vec<Job>, bound: Duration) {
    let dir = Dir::new("held");
    let release = dir.file("release").to_string_lossy().into_owned();
    let held = jobs.iter().filter(|job| matches!(job, Job::Hold)).count();
    let total = jobs.len();
    let inputs: Vec<(Job, String)> = jobs.into_iter().map(|j| (j, release.clone())).collect();
    let (tx, rx) = std::sync::mpsc::channel();
    let mapper = std::thread::spawn(move || {
        let mut results = pool.map_unordered(hold_or_nap, inputs).unwrap();
        for _ in 0..total - held {
            let (index, result) = results.next().unwrap();
            result.unwrap();
            let _ = tx.send(index);
        }
        let rest: Vec<_> = results.collect();
        (rest, pool)
    });
    let deadline = Instant::now() + bound;
    for _ in 0..total - held {
        let left = deadline.saturating_duration_since(Instant::now());
        if rx.recv_timeout(left).is_err() {
            // Let the held ones go, so that the map ends, then fail.
            std::fs::write(&release, b"").unwrap();
            panic!("an input waited behind a held one for {bound:?} while a worker was free");
        }
    }
    std::fs::write(&release, b"").unwrap();
    let (rest, _pool) = common::within("the held inputs", move || mapper.join().unwrap());
    assert_eq!(rest.len(), held);
    assert!(rest.iter().all(|(_, result)| result.is_ok()), "{rest:?}");
}

/// A warm pool: every worker has said hello.
fn warm(pool: &Pool) {
    let served: std::collections::HashSet<u32> = pool
        .map(pid_of, 0..64)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(!served.is_empty());
}

#[test]
fn a_short_input_does_not_wait_behind_a_long_one_while_a_worker_is_free() {
    // Before anything is measured, a worker takes one input at a time: the
    // naps all go to the free worker.
    let pool = Pool::new(2).unwrap();
    warm(&pool);
    let jobs = vec![Job::Hold, Job::Nap(100), Job::Nap(100), Job::Nap(100)];
    naps_pass_the_held(pool, jobs, Duration::from_secs(20));
}

#[test]
fn batch_size_one_keeps_one_input_in_flight_per_worker() {
    // The inputs before the held one are measured as tiny, so a worker
    // would take many at a time; with `batch_size(1)` it takes one.
    let pool = Pool::builder().processes(2).batch_size(1).build().unwrap();
    warm(&pool);
    let mut jobs = vec![Job::Nap(0); 200];
    jobs.push(Job::Hold);
    jobs.extend([Job::Nap(5); 50]);
    naps_pass_the_held(pool, jobs, Duration::from_secs(20));
}

/// Waits until `n` tasks have arrived in `dir` (each leaves a marker), at
/// most `bound`: whether they all did.
fn barrier((dir, n, bound_ms): (String, usize, u64)) -> bool {
    let dir = Path::new(&dir);
    let marker = dir.join(std::process::id().to_string());
    std::fs::write(marker, b"").unwrap();
    let deadline = Instant::now() + Duration::from_millis(bound_ms);
    while entries(dir) < n {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}
buckshot::register!(barrier);

/// Maps `n` tasks that wait for each other on `pool`.
fn all_meet(pool: Pool, n: usize) {
    let dir = Dir::new("barrier");
    let path = dir.path();
    let met: Vec<bool> = common::within("tasks that wait for each other", move || {
        pool.map(barrier, (0..n).map(|_| (path.clone(), n, 20_000)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    });
    assert_eq!(met, vec![true; n], "the tasks never all ran at once");
}

#[test]
fn tasks_that_wait_for_each_other_all_run_at_once() {
    let pool = Pool::new(4).unwrap();
    warm(&pool);
    all_meet(pool, 4);
}

#[test]
fn a_wide_pool_gives_inputs_mapped_right_after_build_to_every_worker() {
    // Ten workers: the first eight are spawned by `build`, the others
    // while the inputs wait.
    let pool = Pool::new(10).unwrap();
    all_meet(pool, 10);
}

/// Holds until `release` exists if told to, and returns its index; the
/// padding makes each frame larger than the worker's read buffer.
fn held_or_quick((index, hold, release, _pad): (u64, bool, String, ByteBuf)) -> u64 {
    if hold {
        let deadline = Instant::now() + common::BOUND;
        while !Path::new(&release).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    index
}
buckshot::register!(held_or_quick);

#[test]
fn frames_a_stuck_worker_has_not_read_go_to_a_free_one() {
    if common::portable_lacks(
        "reading back of frames a worker has not read (it takes back only unwritten ones)",
    ) {
        return;
    }
    // Tiny inputs, measured: each worker takes many frames. One input
    // holds its worker; the frames queued behind it that the worker has
    // not read (all but at most 64 KiB after the held frame) are taken
    // back when the other worker runs out, so that every input but a few
    // comes back before the held one is released.
    const INPUTS: u64 = 600;
    const HELD: u64 = 301;
    // Frames of two inputs, each frame larger than 64 KiB.
    const PAD: usize = 40 << 10;
    let dir = Dir::new("stuck");
    let release = dir.file("release").to_string_lossy().into_owned();
    let pool = Pool::builder().processes(2).batch_size(2).build().unwrap();
    warm(&pool);
    let inputs: Vec<(u64, bool, String, ByteBuf)> = (0..INPUTS)
        .map(|i| (i, i == HELD, release.clone(), ByteBuf::from(vec![7u8; PAD])))
        .collect();
    let pool = Arc::new(pool);
    let (tx, rx) = std::sync::mpsc::channel();
    let mapper = {
        let pool = Arc::clone(&pool);
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            for (index, result) in pool.map_unordered(held_or_quick, inputs).unwrap() {
                assert_eq!(result.unwrap(), index as u64);
                seen.push(index);
                let _ = tx.send(index);
            }
            seen
        })
    };
    // The held input's frame-mate, and at most one frame read with it.
    let stuck_at_most = 4;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut back = 0;
    while back + stuck_at_most < INPUTS as usize {
        let left = deadline.saturating_duration_since(Instant::now());
        if rx.recv_timeout(left).is_err() {
            std::fs::write(&release, b"").unwrap();
            panic!("only {back} of {INPUTS} inputs came back while one was held");
        }
        back += 1;
    }
    std::fs::write(&release, b"").unwrap();
    let mut seen = common::within("the rest of the map", move || mapper.join().unwrap());
    seen.sort();
    assert_eq!(seen, (0..INPUTS as usize).collect::<Vec<_>>());
}
