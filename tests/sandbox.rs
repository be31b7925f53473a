//! Sandboxed workers, against the real kernel features: a rule the kernel
//! here lacks is skipped with a message saying so.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use buckshot::{Error, Launcher, Pool, Sandbox, SandboxRule};

/// Whether `rule` comes up here; says so if not.
fn supported(rule: SandboxRule, sandbox: Sandbox) -> bool {
    let pool = Pool::builder()
        .processes(1)
        .sandbox(sandbox.best_effort())
        .build()
        .expect("a best-effort sandbox always builds");
    let ok = pool.sandbox_rules().contains(&rule);
    if !ok {
        skip_rule(rule);
    }
    ok
}

/// Says that what needs `rule` is skipped: it cannot come up here.
fn skip_rule(rule: SandboxRule) {
    let feature = match rule {
        SandboxRule::NoNetwork => "userns",
        SandboxRule::Files => "landlock",
        // The CPU limit holds through a seccomp filter too.
        _ => "seccomp",
    };
    common::skip(
        feature,
        &format!("sandbox rule {rule} cannot come up on this kernel or in this environment"),
    );
}

/// An OS error as a task sees it: its raw code, or `None` for success.
fn os_error<T>(result: std::io::Result<T>) -> Option<i32> {
    result.err().map(|e| e.raw_os_error().unwrap_or(-1))
}

fn connect(port: u16) -> Option<i32> {
    os_error(std::net::TcpStream::connect(("127.0.0.1", port)))
}
buckshot::register!(connect);

#[test]
fn no_network_leaves_no_route_not_even_to_loopback() {
    if !supported(SandboxRule::NoNetwork, Sandbox::new().no_network()) {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let control = Pool::new(1).unwrap();
    assert_eq!(
        control.call(connect, port).unwrap(),
        None,
        "control connects"
    );
    let pool = Pool::builder()
        .processes(2)
        .sandbox(Sandbox::new().no_network())
        .build()
        .unwrap();
    assert_eq!(pool.sandbox_rules(), [SandboxRule::NoNetwork]);
    for result in pool.map(connect, [port; 4]).unwrap() {
        assert_eq!(result.unwrap(), Some(libc::ENETUNREACH));
    }
}

/// What a task did to the files it was given: each step's OS error, if any.
fn touch_files((allowed_ro, allowed_rw, name): (PathBuf, PathBuf, u32)) -> Vec<Option<i32>> {
    let inside = allowed_rw.join(format!("new-{name}"));
    vec![
        os_error(std::fs::read(allowed_ro.join("data"))),
        os_error(std::fs::write(allowed_ro.join("nope"), b"x")),
        os_error(std::fs::write(&inside, b"written")),
        os_error(std::fs::read(&inside)),
        os_error(std::fs::remove_file(&inside)),
        os_error(std::fs::read("/etc/hostname")),
        os_error(std::fs::write(
            std::env::temp_dir().join("buckshot-outside"),
            b"x",
        )),
        os_error(std::fs::File::open("/dev/null")),
    ]
}
buckshot::register!(touch_files);

// Never inlined, so that a backtrace names it in a release build too.
#[inline(never)]
fn shout_then_panic(x: u64) -> u64 {
    eprintln!("task {x} speaks through the sandbox");
    if x == 3 {
        panic!("panicked on {x}");
    }
    x
}
buckshot::register!(shout_then_panic);

fn shout_then_abort(x: u64) -> u64 {
    eprintln!("task {x} about to abort");
    std::process::abort();
}
buckshot::register!(shout_then_abort);

#[test]
fn files_outside_the_allowed_paths_are_denied_and_the_pool_keeps_working() {
    let scratch = common::TempDir::new("sandbox-files");
    let (ro, rw) = (scratch.0.join("ro"), scratch.0.join("rw"));
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::write(ro.join("data"), b"readable").unwrap();
    let sandbox = Sandbox::new().read_only(&ro).read_write(&rw);
    if !supported(SandboxRule::Files, sandbox.clone()) {
        return;
    }
    let stderr = common::StderrLines::default();
    let pool = stderr
        .builder()
        .processes(2)
        .sandbox(sandbox)
        .build()
        .unwrap();
    assert_eq!(pool.sandbox_rules(), [SandboxRule::Files]);
    let denied = Some(libc::EACCES);
    for result in pool
        .map(
            touch_files,
            (0..8).map(|name| (ro.clone(), rw.clone(), name)),
        )
        .unwrap()
    {
        assert_eq!(
            result.unwrap(),
            [None, denied, None, None, None, denied, denied, denied]
        );
    }
    // Panics, stderr and deaths still reach the pool.
    let results: Vec<_> = pool.map(shout_then_panic, 0..6u64).unwrap().collect();
    match &results[3] {
        Err(Error::TaskPanicked {
            message,
            location,
            backtrace,
            ..
        }) => {
            assert_eq!(message, "panicked on 3");
            assert!(location.as_ref().unwrap().file.ends_with("sandbox.rs"));
            // With RUST_BACKTRACE set, the worker still reads its own
            // binary to name the frames.
            if let Some(backtrace) = backtrace {
                assert!(backtrace.contains("shout_then_panic"), "{backtrace}");
            }
        }
        other => panic!("expected a panic, got {other:?}"),
    }
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 5);
    match pool.call(shout_then_abort, 9) {
        Err(Error::WorkerDied { stderr, status, .. }) => {
            assert!(stderr.contains("task 9 about to abort"), "{stderr:?}");
            assert_eq!(status.unwrap().signal(), Some(libc::SIGABRT));
        }
        other => panic!("expected a death, got {other:?}"),
    }
    assert_eq!(pool.call(shout_then_panic, 4).unwrap(), 4);
    drop(pool);
    let lines = stderr.lines();
    let said = |text: &str| lines.iter().filter(|line| line.ends_with(text)).count();
    assert_eq!(said("speaks through the sandbox"), 7, "{lines:#?}");
    assert_eq!(said("task 9 about to abort"), 1, "{lines:#?}");
    assert_eq!(said("panicked on 3"), 1, "{lines:#?}");
    // Control: the same task outside the sandbox.
    let control = Pool::new(1).unwrap();
    let done = control
        .call(touch_files, (ro.clone(), rw.clone(), 9))
        .unwrap();
    assert_eq!(done[5], None, "control reads /etc/hostname");
    let _ = std::fs::remove_file(std::env::temp_dir().join("buckshot-outside"));
}

fn spin(seconds: f64) -> f64 {
    let start = cpu_seconds();
    let mut x = 0u64;
    while cpu_seconds() - start < seconds {
        for _ in 0..10_000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
    cpu_seconds() - start
}
buckshot::register!(spin);

fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()), 0);
        usage.assume_init()
    };
    let t = usage.ru_utime;
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

#[test]
fn a_task_past_its_cpu_time_dies_with_a_message_naming_the_limit() {
    let sandbox = Sandbox::new().cpu_time(Duration::from_secs(1));
    if !supported(SandboxRule::CpuTime, sandbox.clone()) {
        return;
    }
    // The timeout is a safety net only.
    let pool = Pool::builder()
        .processes(1)
        .forward_stderr(false)
        .timeout(common::BOUND)
        .sandbox(sandbox)
        .build()
        .unwrap();
    let started = Instant::now();
    match pool.call(spin, 1e9) {
        Err(error @ Error::WorkerDied { .. }) => {
            let Error::WorkerDied { status, .. } = &error else {
                unreachable!()
            };
            assert_eq!(status.unwrap().signal(), Some(libc::SIGXCPU));
            assert!(
                error
                    .to_string()
                    .ends_with("killed by its CPU time limit of 1s (sandbox cpu_time)"),
                "{error}"
            );
        }
        other => panic!("expected the CPU limit to end the worker, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(900));
    // The pool goes on, with a fresh worker. (That each task gets its
    // whole budget: `sandbox_cpu.rs`.)
    assert_eq!(pool.call(double, 21).unwrap(), 42);
}

/// What a task sees when it signals its pool's process (with signal 0,
/// which checks only that it may).
fn signal_parent(_: ()) -> Option<i32> {
    // SAFETY: signal 0 sends nothing; getppid has no preconditions.
    let rc = unsafe { libc::kill(libc::getppid(), 0) };
    (rc != 0).then(|| std::io::Error::last_os_error().raw_os_error().unwrap())
}
buckshot::register!(signal_parent);

#[test]
fn any_sandbox_keeps_tasks_from_signalling_the_pool_where_landlock_can() {
    if common::portable_lacks("sandbox (its rules are Linux only)") {
        return;
    }
    let control = Pool::new(1).unwrap();
    assert_eq!(control.call(signal_parent, ()).unwrap(), None);
    if common::landlock_abi() < 6 {
        common::skip(
            "landlock",
            &format!(
                "Landlock scopes signals from ABI 6, this kernel has {}",
                common::landlock_abi()
            ),
        );
        return;
    }
    let pool = Pool::builder()
        .processes(1)
        .sandbox(Sandbox::new().cpu_time(Duration::from_secs(60)))
        .build()
        .unwrap();
    assert_eq!(pool.call(signal_parent, ()).unwrap(), Some(libc::EPERM));
}

/// What a task sees when it starts a program and when it forks, and
/// whether a thread works.
fn start_things(_: ()) -> (Option<i32>, Option<i32>, u64) {
    let program = os_error(std::process::Command::new("true").status());
    // SAFETY: a forked child exits at once, touching nothing.
    let forked = match unsafe { libc::fork() } {
        -1 => Some(std::io::Error::last_os_error().raw_os_error().unwrap()),
        // SAFETY: _exit is async-signal-safe.
        0 => unsafe { libc::_exit(0) },
        child => {
            // SAFETY: waits for the child just forked.
            unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
            None
        }
    };
    let thread = std::thread::spawn(|| 21 * 2).join().unwrap();
    (program, forked, thread)
}
buckshot::register!(start_things);

#[test]
fn no_subprocesses_fails_exec_with_eperm_and_threads_still_work() {
    if !supported(
        SandboxRule::NoSubprocesses,
        Sandbox::new().no_subprocesses(),
    ) {
        return;
    }
    let pool = Pool::builder()
        .processes(2)
        .sandbox(Sandbox::new().no_subprocesses())
        .build()
        .unwrap();
    for result in pool.map(start_things, [(); 4]).unwrap() {
        assert_eq!(result.unwrap(), (Some(libc::EPERM), Some(libc::EPERM), 42));
    }
    let control = Pool::new(1).unwrap();
    assert_eq!(control.call(start_things, ()).unwrap(), (None, None, 42));
}

fn double(x: u64) -> u64 {
    x * 2
}
buckshot::register!(double);

#[test]
fn a_pool_with_every_rule_maps_ten_thousand_inputs() {
    let scratch = common::TempDir::new("sandbox-all");
    let (ro, rw) = (scratch.0.join("ro"), scratch.0.join("rw"));
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::write(ro.join("data"), b"readable").unwrap();
    let sandbox = Sandbox::new()
        .no_network()
        .read_only(&ro)
        .read_write(&rw)
        .cpu_time(Duration::from_secs(30))
        .no_subprocesses();
    let pool = Pool::builder()
        .processes(2)
        .sandbox(sandbox.clone().best_effort())
        .build()
        .unwrap();
    let rules = pool.sandbox_rules().to_vec();
    for rule in [
        SandboxRule::NoNetwork,
        SandboxRule::Files,
        SandboxRule::CpuTime,
        SandboxRule::NoSubprocesses,
    ] {
        if !rules.contains(&rule) {
            skip_rule(rule);
        }
    }
    let doubled: Vec<u64> = pool
        .map(double, 0..10_000u64)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(doubled, (0..10_000).map(|x| x * 2).collect::<Vec<_>>());
    // In a user namespace of its own, a worker still creates files (its
    // uid is mapped), and they are ours.
    let done = pool.call(touch_files, (ro, rw.clone(), 0)).unwrap();
    let denied = rules.contains(&SandboxRule::Files).then_some(libc::EACCES);
    assert_eq!(
        done,
        [None, denied, None, None, None, denied, denied, denied],
        "{rules:?}"
    );
    let (program, forked, _) = pool.call(start_things, ()).unwrap();
    let forbidden = rules
        .contains(&SandboxRule::NoSubprocesses)
        .then_some(libc::EPERM);
    assert_eq!((program, forked), (forbidden, forbidden), "{rules:?}");
    let owner = pool.call(create_and_own, rw).unwrap();
    assert_eq!(owner, Some(own_uid()));
}

/// Creates a file under `dir` and says who owns it, as seen from here.
fn create_and_own(dir: PathBuf) -> Option<u32> {
    let path = dir.join("owned");
    std::fs::write(&path, b"x").ok()?;
    Some(std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata(path).ok()?,
    ))
}
buckshot::register!(create_and_own);

/// This process's uid, as the kernel shows it in /proc.
fn own_uid() -> u32 {
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap())
}

#[test]
fn a_rule_that_cannot_come_up_fails_the_build_unless_best_effort() {
    if common::portable_lacks("sandbox (its rules are Linux only)") {
        return;
    }
    let missing = Path::new("/nonexistent/buckshot-sandbox");
    let sandbox = Sandbox::new()
        .read_only(missing)
        .cpu_time(Duration::from_secs(5));
    match Pool::builder()
        .processes(1)
        .sandbox(sandbox.clone())
        .build()
    {
        Err(
            error @ Error::Sandbox {
                rule: SandboxRule::Files,
                ..
            },
        ) => assert_eq!(
            error.to_string(),
            "sandbox rule files cannot come up: \
             /nonexistent/buckshot-sandbox: No such file or directory (os error 2)"
        ),
        other => panic!("expected a sandbox error, got {other:?}"),
    }
    let pool = Pool::builder()
        .processes(1)
        .sandbox(sandbox.best_effort())
        .build()
        .unwrap();
    assert!(!pool.sandbox_rules().contains(&SandboxRule::Files));
    assert_eq!(pool.call(double, 4).unwrap(), 8);
}

fn pid(_: ()) -> u32 {
    std::process::id()
}
buckshot::register!(pid);

#[test]
fn a_worker_whose_sandbox_does_not_come_up_is_refused_and_nothing_hangs() {
    let scratch = common::TempDir::new("sandbox-vanishing");
    let dir = scratch.0.join("allowed");
    std::fs::create_dir_all(&dir).unwrap();
    let sandbox = Sandbox::new().read_only(&dir);
    if !supported(SandboxRule::Files, sandbox.clone()) {
        return;
    }
    // Its replacements fail on purpose, saying why on stderr.
    let pool = Pool::builder()
        .processes(1)
        .forward_stderr(false)
        .sandbox(sandbox)
        .build()
        .unwrap();
    let worker = pool.call(pid, ()).unwrap();
    // The path goes, then the worker: its replacement cannot come up.
    std::fs::remove_dir(&dir).unwrap();
    common::kill9(worker);
    // Dead before the map, so that it cannot take an input as it dies.
    common::assert_worker_gone(worker, "killed by the test");
    let results: Vec<_> = common::within("map on a refused worker", move || {
        let results: Vec<_> = match pool.map(double, 0..3u64) {
            Ok(map) => map.map(|r| r.map_err(|e| e.to_string())).collect(),
            Err(e) => vec![Err(e.to_string())],
        };
        results
    });
    assert!(!results.is_empty());
    // Refused by the pool: not run, and not counted as a death. Whether
    // the pool gave up before the map started or during it is a race.
    let why = format!(
        "sandbox rule files did not come up in a worker: {}: No such file or directory (os error 2)",
        dir.display()
    );
    let refused = |message: &str| {
        message == format!("workers fail to start: {why}")
            || message.ends_with(&format!("pool shut down before the task finished ({why})"))
    };
    for result in &results {
        let message = result.as_ref().unwrap_err();
        assert!(refused(message), "{message}");
    }
}

#[test]
fn a_sandbox_is_for_local_workers_only() {
    let built = Pool::builder()
        .workers(Launcher::command(["env"]), 1)
        .sandbox(Sandbox::new().no_subprocesses())
        .build();
    assert_eq!(
        built.unwrap_err().to_string(),
        "invalid pool configuration: a sandbox applies to local workers only, \
         not to those of `workers`"
    );
}

/// Where sandbox rules cannot come up at all (the portable backend: macOS,
/// FreeBSD), a sandbox fails the build, naming the platform, and with
/// `best_effort` the pool runs without it.
#[cfg(buckshot_portable)]
#[test]
fn the_portable_backend_refuses_a_sandbox_unless_best_effort() {
    let sandbox = Sandbox::new().no_network().cpu_time(Duration::from_secs(5));
    let refused = Pool::builder()
        .processes(1)
        .sandbox(sandbox.clone())
        .build()
        .unwrap_err();
    let Error::Sandbox { rule, reason, .. } = &refused else {
        panic!("{refused:?}");
    };
    assert!(
        [SandboxRule::NoNetwork, SandboxRule::CpuTime].contains(rule),
        "{rule}"
    );
    assert!(reason.contains("Linux only"), "{reason}");
    let pool = Pool::builder()
        .processes(1)
        .sandbox(sandbox.best_effort())
        .build()
        .unwrap();
    assert_eq!(pool.call(double, 21).unwrap(), 42);
}
