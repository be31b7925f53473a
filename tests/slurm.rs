//! Workers as Slurm job steps, against a single-node Slurm on this machine
//! (`.ci/slurm-localhost.sh start`; the tests say they are skipped where
//! none answers): results equal to serial, a timed-out worker's step gone
//! afterwards, a busy worker's step gone with its dropped pool, and one
//! pool mixing local, ssh and srun workers.

mod common;
#[path = "common/sshd.rs"]
mod sshd;

use std::collections::HashSet;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use buckshot::{Error, Launcher, Pool};

/// The tests compare Slurm's queue before and after: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Whether Slurm answers with its node up. A controller that is there
/// but slow (a loaded machine) gets up to 30 s; one that is not there
/// fails at once.
fn slurm_answers() -> bool {
    let up = || {
        let out = Command::new("sinfo")
            .args(["-h", "-o", "%t"])
            .output()
            .ok()?;
        let states = String::from_utf8_lossy(&out.stdout);
        // Up: idle, mixed, allocated or completing, not down or drained.
        Some(
            out.status.success()
                && ["idle", "mix", "alloc", "comp"]
                    .iter()
                    .any(|s| states.contains(s)),
        )
    };
    let there = std::path::Path::new("/etc/slurm/slurm.conf").exists();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let answers = loop {
        match up() {
            Some(true) => break true,
            Some(false) if there && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            _ => break false,
        }
    };
    if !answers {
        common::skip(
            "slurm",
            "no Slurm answers here (run .ci/slurm-localhost.sh start as root)",
        );
    }
    answers
}

fn tagged(x: u64) -> (u64, u32, Option<String>) {
    (
        x * 7,
        std::process::id(),
        std::env::var("SLURM_JOB_ID").ok(),
    )
}
buckshot::register!(tagged);

/// [`tagged`], a little slower: inputs queue while slow workers start.
fn tagged_after_nap(x: u64) -> (u64, u32, Option<String>) {
    std::thread::sleep(Duration::from_millis(5));
    tagged(x)
}
buckshot::register!(tagged_after_nap);

/// Announces the Slurm job it runs in, then hangs.
fn announce_job_and_hang(path: String) -> u64 {
    let job: u32 = std::env::var("SLURM_JOB_ID").unwrap().parse().unwrap();
    common::announce_pid(&path, job);
    common::announce(&path);
    common::hang()
}
buckshot::register!(announce_job_and_hang);

/// Whether Slurm still runs job `job`.
fn job_runs(job: u32) -> bool {
    let out = Command::new("squeue")
        .args(["-h", "-o", "%i", "-j", &job.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == job.to_string()
}

#[test]
fn a_map_through_srun_equals_serial() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !slurm_answers() {
        return;
    }
    let pool = Pool::builder()
        .workers(Launcher::srun(), 2)
        .build()
        .unwrap();
    let results = common::within("the map through srun", move || {
        pool.map(tagged, 0..2000u64)
            .unwrap()
            .map(Result::unwrap)
            .collect::<Vec<_>>()
    });
    let outputs: Vec<u64> = results.iter().map(|r| r.0).collect();
    assert_eq!(outputs, (0..2000u64).map(|x| x * 7).collect::<Vec<_>>());
    assert!(
        results.iter().all(|r| r.2.is_some()),
        "every input ran in a Slurm job"
    );
}

#[test]
fn a_timed_out_workers_step_is_gone() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !slurm_answers() {
        return;
    }
    let pool = Pool::builder()
        .workers(Launcher::srun(), 1)
        .timeout(Duration::from_secs(1))
        .forward_stderr(false)
        .build()
        .unwrap();
    let rendezvous = common::Rendezvous::new();
    let path = rendezvous.path();
    let call = std::thread::spawn(move || (pool.call(announce_job_and_hang, path), pool));
    let (job, worker) = (rendezvous.wait(), rendezvous.wait());
    let (result, pool) = call.join().unwrap();
    assert!(
        matches!(result, Err(Error::TaskTimeout { .. })),
        "{result:?}"
    );
    assert!(
        common::exits_within(worker, common::KILL_BOUND),
        "worker {worker} still runs after its timeout"
    );
    common::wait_until_within(
        &format!("Slurm job {job} of the timed-out worker ends"),
        Duration::from_secs(15),
        || !job_runs(job),
    );
    // The pool goes on, on a fresh step.
    assert_eq!(pool.call(tagged, 3).unwrap().0, 21);
}

#[test]
fn a_dropped_pools_busy_step_is_gone() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !slurm_answers() {
        return;
    }
    let pool = Pool::builder()
        .workers(Launcher::srun(), 1)
        .forward_stderr(false)
        .build()
        .unwrap();
    let rendezvous = common::Rendezvous::new();
    let mut stream = pool
        .map_stream(announce_job_and_hang, vec![rendezvous.path()])
        .unwrap();
    let first = futures::executor::block_on(futures::future::poll_fn(|cx| {
        std::task::Poll::Ready(futures::StreamExt::poll_next_unpin(&mut stream, cx))
    }));
    assert!(first.is_pending());
    let (job, worker) = (rendezvous.wait(), rendezvous.wait());
    // Its srun is killed, which leaves the step running: the pool's drop
    // waits for its cancel.
    drop(pool);
    assert!(
        common::exits_within(worker, common::KILL_BOUND),
        "worker {worker} still runs after its pool was dropped"
    );
    common::wait_until_within(
        &format!("Slurm job {job} of the dropped pool ends"),
        Duration::from_secs(15),
        || !job_runs(job),
    );
    drop(stream);
}

#[test]
fn a_pool_of_local_ssh_and_srun_workers_runs_one_map() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !slurm_answers() {
        return;
    }
    let Some(sshd) = sshd::Sshd::start() else {
        return;
    };
    let pool = Pool::builder()
        .workers(Launcher::local(), 1)
        .workers(sshd.launcher(), 1)
        .workers(Launcher::srun(), 1)
        .build()
        .unwrap();
    // A worker that is still starting has its inputs taken by those that
    // are ready: maps of slower inputs until every one of them served.
    let (pool, served) = common::within("each launcher's worker serves", move || {
        let mut served = Vec::new();
        let mut workers = HashSet::new();
        while workers.len() < 3 {
            for result in pool.map(tagged_after_nap, 0..30u64).unwrap() {
                let result = result.unwrap();
                workers.insert(result.1);
                served.push(result);
            }
        }
        (pool, served)
    });
    assert!(
        served.iter().any(|r| r.2.is_some()),
        "the srun worker served"
    );
    let results = common::within("the mixed map", move || {
        pool.map(tagged, 0..3000u64)
            .unwrap()
            .map(Result::unwrap)
            .collect::<Vec<_>>()
    });
    let outputs: Vec<u64> = results.iter().map(|r| r.0).collect();
    assert_eq!(outputs, (0..3000u64).map(|x| x * 7).collect::<Vec<_>>());
}
