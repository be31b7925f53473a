//! `cpu_time` holds against tasks that try to lift it, and a thread that a
//! task leaves behind does not spend the next input's budget.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::Duration;

use buckshot::{Error, Pool, Sandbox, SandboxRule};

/// A pool of one worker whose tasks get `seconds` of CPU time each, if
/// that comes up here; the timeout is a safety net only.
fn limited(seconds: u64) -> Option<Pool> {
    let sandbox = Sandbox::new().cpu_time(Duration::from_secs(seconds));
    let pool = Pool::builder()
        .processes(1)
        .forward_stderr(false)
        .batch_size(1)
        .timeout(common::BOUND)
        .sandbox(sandbox.best_effort())
        .build()
        .unwrap();
    if pool.sandbox_rules() != [SandboxRule::CpuTime] {
        common::skip("seccomp", "sandbox rule cpu_time cannot come up here");
        return None;
    }
    Some(pool)
}

/// The CPU time this process was charged, as `RLIMIT_CPU` counts it: user
/// plus system time sampled at each tick (the kernel's `CPUCLOCK_PROF`
/// clock of the calling process). On a loaded virtual machine it runs
/// ahead of `CLOCK_PROCESS_CPUTIME_ID`.
fn cpu_seconds() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the struct it is given.
    assert_eq!(unsafe { libc::clock_gettime(!0 << 3, &mut t) }, 0);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// Burns `seconds` of CPU time, as charged, on the calling thread.
fn burn(seconds: f64) {
    let start = cpu_seconds();
    let mut x = 0u64;
    while cpu_seconds() - start < seconds {
        for _ in 0..10_000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

/// Raises the CPU limit as far as it goes (the soft limit to the hard
/// one) every way there is: `setrlimit` (which the C library makes a
/// `prlimit64`), the raw `setrlimit` call, and `prlimit64` on itself by
/// pid. Their errors, `None` for success.
fn raise_the_limit(_: ()) -> Vec<Option<i32>> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let errno = |rc: libc::c_long| {
        (rc != 0).then(|| std::io::Error::last_os_error().raw_os_error().unwrap())
    };
    // SAFETY: getrlimit writes the struct it is given; each call after it
    // reads it and writes nothing.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_CPU, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        vec![
            errno(libc::setrlimit(libc::RLIMIT_CPU, &limit).into()),
            errno(libc::syscall(libc::SYS_setrlimit, libc::RLIMIT_CPU, &limit)),
            errno(libc::syscall(
                libc::SYS_prlimit64,
                libc::getpid(),
                libc::RLIMIT_CPU,
                &limit,
                std::ptr::null_mut::<libc::rlimit>(),
            )),
        ]
    }
}
buckshot::register!(raise_the_limit);

/// Lifts its CPU limit (if it can), then burns `seconds`.
fn lift_then_burn(seconds: f64) -> f64 {
    raise_the_limit(());
    burn(seconds);
    seconds
}
buckshot::register!(lift_then_burn);

/// Ignores SIGXCPU and blocks it, then burns `seconds`.
fn ignore_xcpu_then_burn(seconds: f64) -> f64 {
    // SAFETY: SIG_IGN installs no handler code; the set is initialised
    // before use.
    unsafe {
        libc::signal(libc::SIGXCPU, libc::SIG_IGN);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGXCPU);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    burn(seconds);
    seconds
}
buckshot::register!(ignore_xcpu_then_burn);

/// Expects `result` to be the death of a worker by its CPU limit of
/// `seconds`, of `signal`.
fn assert_killed_by_the_limit<T: std::fmt::Debug>(
    result: Result<T, Error>,
    seconds: u64,
    signal: i32,
) {
    match result {
        Err(error @ Error::WorkerDied { .. }) => {
            let Error::WorkerDied { status, limit, .. } = &error else {
                unreachable!()
            };
            assert_eq!(status.unwrap().signal(), Some(signal), "{error}");
            assert_eq!(*limit, Some(buckshot::Limit::CpuTime), "{error}");
            assert!(
                error.to_string().ends_with(&format!(
                    "killed by its CPU time limit of {seconds}s (sandbox cpu_time)"
                )),
                "{error}"
            );
        }
        other => panic!("expected the CPU limit to end the worker, got {other:?}"),
    }
}

#[test]
fn a_task_cannot_raise_its_cpu_limit() {
    let Some(pool) = limited(1) else { return };
    let control = Pool::new(1).unwrap();
    assert_eq!(
        control.call(raise_the_limit, ()).unwrap(),
        [None, None, None]
    );
    let denied = Some(libc::EPERM);
    assert_eq!(
        pool.call(raise_the_limit, ()).unwrap(),
        [denied, denied, denied]
    );
    // Twenty seconds, were the limit lifted; the timeout is a minute.
    assert_killed_by_the_limit(pool.call(lift_then_burn, 20.0), 1, libc::SIGXCPU);
    assert_eq!(pool.call(lift_then_burn, 0.1).unwrap(), 0.1);
}

#[test]
fn a_task_that_ignores_sigxcpu_is_killed_a_second_later_and_told_why() {
    let Some(pool) = limited(1) else { return };
    assert_killed_by_the_limit(pool.call(ignore_xcpu_then_burn, 20.0), 1, libc::SIGKILL);
    // The next task gets a fresh worker, and its whole budget.
    assert_eq!(pool.call(ignore_xcpu_then_burn, 0.5).unwrap(), 0.5);
}

/// Burns `seconds` and says which worker it ran on.
fn burn_on(seconds: f64) -> u32 {
    burn(seconds);
    std::process::id()
}
buckshot::register!(burn_on);

#[test]
fn each_task_gets_its_whole_budget_whatever_ran_before_it() {
    let Some(pool) = limited(1) else { return };
    // 6.6 s on one worker, past any limit that counted the worker's life,
    // and each task under its own: tasks of 0.9 s after 1.2 s of short
    // ones, and after one of 0.9 s.
    let burns = [0.3, 0.3, 0.3, 0.3, 0.9, 0.3, 0.3, 0.3, 0.3, 0.9, 0.9, 0.9];
    let workers: Vec<u32> = pool
        .map(burn_on, burns)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(workers.len(), burns.len());
}

/// Appends `index` to the file `log`; starts a thread that spins forever
/// if `leave_a_thread`, else sleeps for `sleep_ms`. Says which worker it
/// ran on.
fn step((log, index, leave_a_thread, sleep_ms): (PathBuf, u32, bool, u64)) -> u32 {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)
        .unwrap();
    writeln!(file, "{index}").unwrap();
    if leave_a_thread {
        std::thread::spawn(|| burn(f64::INFINITY));
    } else {
        std::thread::sleep(Duration::from_millis(sleep_ms));
    }
    std::process::id()
}
buckshot::register!(step);

#[test]
fn a_thread_left_running_does_not_spend_the_next_inputs_budget() {
    let Some(pool) = limited(1) else { return };
    let scratch = common::TempDir::new("sandbox-cpu-threads");
    let log = scratch.0.join("log");
    // One call at a time: input 1 sleeps 3 s while the thread input 0
    // left would burn 3 s of CPU time in its worker.
    let first = pool.call(step, (log.clone(), 0, true, 0)).unwrap();
    let second = pool.call(step, (log.clone(), 1, false, 3000)).unwrap();
    assert_ne!(first, second, "the worker that kept a thread was reused");
    // Inputs queued behind one that leaves a thread, as a map queues them
    // (the worker may have read them already): none is blamed, lost or
    // run twice.
    let inputs: Vec<_> = (2..14)
        .map(|index| (log.clone(), index, index % 5 == 2, 300))
        .collect();
    let workers: Vec<u32> = pool
        .map(step, inputs)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (k, pair) in workers.windows(2).enumerate() {
        if (k + 2) % 5 == 2 {
            assert_ne!(pair[0], pair[1], "input {} kept its worker", k + 2);
        }
    }
    let mut ran: Vec<u32> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|line| line.parse().unwrap())
        .collect();
    ran.sort();
    assert_eq!(ran, (0..14).collect::<Vec<_>>());
}

#[test]
fn a_limit_the_programs_own_hard_limit_cannot_give_is_refused() {
    if limited(1).is_none() {
        return;
    }
    // This test process's own hard limit, inherited by its workers: far
    // above what the tests here use, far below what is asked.
    let own = libc::rlimit {
        rlim_cur: 10_000,
        rlim_max: 10_000,
    };
    // SAFETY: reads the struct it is given.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_CPU, &own) }, 0);
    // A worker starts with under a second used: its limits are that
    // second plus the budget (soft), plus one (hard).
    let with = |seconds| {
        Pool::builder()
            .processes(1)
            .sandbox(Sandbox::new().cpu_time(Duration::from_secs(seconds)))
            .build()
    };
    match with(9_999) {
        Err(error @ Error::Sandbox { .. }) => assert_eq!(
            error.to_string(),
            "sandbox rule cpu_time cannot come up: the program's own RLIMIT_CPU hard \
             limit (10000s) leaves tasks less than 9999s"
        ),
        other => panic!("expected cpu_time to be refused, got {other:?}"),
    }
    // Up to the program's own hard limit, it comes up.
    let pool = with(9_998).unwrap();
    assert_eq!(pool.sandbox_rules(), [SandboxRule::CpuTime]);
    assert_eq!(
        pool.call(burn_on, 0.0).unwrap(),
        pool.call(burn_on, 0.0).unwrap()
    );
}

#[test]
fn a_worker_serves_many_short_tasks() {
    let Some(pool) = limited(1) else { return };
    // Far from a second of CPU time in all: one worker serves them.
    let workers: std::collections::HashSet<u32> =
        (0..200).map(|_| pool.call(burn_on, 0.0).unwrap()).collect();
    assert_eq!(workers.len(), 1, "{workers:?}");
}

/// Input 0 leaves a spinning thread behind, then panics: with backtraces
/// on, the panic's answer goes out before the rest of its frame. The
/// others sleep a little and say which worker ran them.
fn panic_leaving_a_thread(index: u32) -> u32 {
    if index == 0 {
        std::thread::spawn(|| burn(f64::INFINITY));
        panic!("left a thread");
    }
    std::thread::sleep(Duration::from_millis(50));
    std::process::id()
}
buckshot::register!(panic_leaving_a_thread);

/// Run by the test below, in a copy of this binary with backtraces on.
#[test]
#[ignore = "run by a_worker_that_panics_after_leaving_a_thread_retires_with_backtraces_on"]
fn panic_leaving_a_thread_then_go_on() {
    let Some(pool) = limited(1) else { return };
    let results: Vec<_> = pool.map(panic_leaving_a_thread, 0..8).unwrap().collect();
    assert!(
        matches!(results[0], Err(Error::TaskPanicked { .. })),
        "{:?}",
        results[0]
    );
    for (index, result) in results.iter().enumerate().skip(1) {
        assert!(result.is_ok(), "input {index} was blamed: {result:?}");
    }
}

#[test]
fn a_worker_that_panics_after_leaving_a_thread_retires_with_backtraces_on() {
    if limited(1).is_none() {
        return;
    }
    let mut copy = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "panic_leaving_a_thread_then_go_on",
            "--ignored",
            "--test-threads=1",
        ])
        .env("RUST_BACKTRACE", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    if !common::exits_within(copy.id(), common::BOUND) {
        let _ = copy.kill();
        let _ = copy.wait();
        panic!("the copy did not finish within {:?}", common::BOUND);
    }
    assert!(copy.wait().unwrap().success(), "the copy's test failed");
}
