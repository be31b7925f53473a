//! A replay runs confined as its worker was: the pool's sandbox, memory
//! limit, CPU limit and timeout, recorded in the replay file, apply in the
//! foreground too, unless `BUCKSHOT_REPLAY_UNCONFINED` lifts them (and
//! says so). A file of the first format, which recorded none of them, is
//! refused unless everything is lifted. The replays are this test binary.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use buckshot::{Error, Pool, Sandbox, SandboxRule};

const UNCONFINED: &str = "BUCKSHOT_REPLAY_UNCONFINED";

fn replay_command(file: &Path, unconfined: Option<&str>) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .env("BUCKSHOT_REPLAY", file)
        .env_remove(UNCONFINED)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(value) = unconfined {
        command.env(UNCONFINED, value);
    }
    command
}

/// Replays `file` to its end, within [`common::BOUND`].
fn replay(file: &Path, unconfined: Option<&str>) -> Output {
    let child = replay_command(file, unconfined).spawn().unwrap();
    common::within("a replay", move || child.wait_with_output().unwrap())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn kept(error: &Error) -> PathBuf {
    error
        .replay_file()
        .unwrap_or_else(|| panic!("no replay file for {error}"))
        .to_owned()
}

/// The failure of a call of `task` on `input` on `pool`, and its file.
fn kept_failure<M, F: buckshot::PlainTask<M>>(
    pool: &Pool,
    task: F,
    input: F::Input,
) -> (Error, PathBuf)
where
    F::Output: std::fmt::Debug,
{
    let error = pool.call(task, input).unwrap_err();
    let file = kept(&error);
    (error, file)
}

/// What an attacker's first moves got: an OS error each, `None` for
/// success.
fn escape(port: u16) -> String {
    let error = |result: std::io::Result<()>| result.err().map(|e| e.raw_os_error().unwrap_or(-1));
    let read = error(std::fs::read("/etc/hostname").map(drop));
    let connect = error(std::net::TcpStream::connect(("127.0.0.1", port)).map(drop));
    let exec = error(Command::new("/bin/true").status().map(drop));
    panic!("escape: read {read:?}, connect {connect:?}, exec {exec:?}")
}
buckshot::register!(escape);

/// Whether every rule of `sandbox` comes up here; says so if not.
fn supported(sandbox: &Sandbox) -> bool {
    let pool = Pool::builder()
        .processes(1)
        .sandbox(sandbox.clone().best_effort())
        .build()
        .expect("a best-effort sandbox always builds");
    let wanted = [
        (SandboxRule::NoNetwork, "userns"),
        (SandboxRule::Files, "landlock"),
        (SandboxRule::NoSubprocesses, "seccomp"),
    ];
    for (rule, feature) in wanted {
        if !pool.sandbox_rules().contains(&rule) {
            common::skip(feature, &format!("sandbox rule {rule} cannot come up here"));
            return false;
        }
    }
    true
}

#[test]
fn a_replay_runs_inside_its_pools_sandbox() {
    let dir = common::TempDir::new("replay-sandboxed");
    let sandbox = Sandbox::new()
        .no_network()
        .read_only(&dir.0)
        .no_subprocesses();
    if !supported(&sandbox) {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let pool = Pool::builder()
        .processes(1)
        .forward_stderr(false)
        .sandbox(sandbox)
        .keep_failures(dir.0.join("kept"))
        .build()
        .unwrap();
    let (error, file) = kept_failure(&pool, escape, port);
    let denied = format!(
        "escape: read Some({}), connect Some({}), exec Some({})",
        libc::EACCES,
        libc::ENETUNREACH,
        libc::EPERM
    );
    assert!(error.to_string().contains(&denied), "{error}");
    let output = replay(&file, None);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(101), "{stderr}");
    // Its own panic, not the pool's error it quotes.
    assert!(
        stderr.contains(&format!("the task panicked: {denied}")),
        "the replay got out: {stderr}"
    );
    assert!(
        stderr.contains("confined as its worker was: sandbox (no_network, files, no_subprocesses)"),
        "{stderr}"
    );
    // Lifted on purpose, and said so.
    let output = replay(&file, Some("sandbox"));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("the task panicked: escape: read None, connect None, exec None"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "WARNING: {UNCONFINED} is set: running WITHOUT its sandbox (no_network, files, no_subprocesses)"
        )),
        "{stderr}"
    );
}

fn allocate(bytes: usize) -> usize {
    let block = vec![1u8; bytes];
    std::hint::black_box(&block).len()
}
buckshot::register!(allocate);

#[test]
fn a_replay_runs_under_its_pools_memory_limit() {
    let dir = common::TempDir::new("replay-memory");
    let pool = Pool::builder()
        .processes(1)
        .memory_limit(512 << 20)
        .forward_stderr(false)
        .keep_failures(&dir.0)
        .build()
        .unwrap();
    let (error, file) = kept_failure(&pool, allocate, 1 << 30);
    assert!(
        matches!(error, Error::WorkerDied { ref stderr, .. } if stderr.contains("memory allocation of")),
        "{error}"
    );
    let output = replay(&file, None);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.signal(), Some(libc::SIGABRT), "{stderr}");
    assert!(
        stderr.contains("\nmemory allocation of 1073741824 bytes failed"),
        "{stderr}"
    );
    assert!(
        stderr.contains("memory limit of 536870912 bytes"),
        "{stderr}"
    );
    let output = replay(&file, Some("memory_limit"));
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(text(&output.stdout), "1073741824\n");
    assert!(
        stderr.contains("running WITHOUT its memory limit (536870912 bytes)"),
        "{stderr}"
    );
}

/// Starts `threads` threads that each allocate a little while all run
/// (the C library reserves address space for their arenas), then panics.
fn threads_then_panic(threads: usize) -> usize {
    let all_in = std::sync::Arc::new(std::sync::Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let all_in = std::sync::Arc::clone(&all_in);
            std::thread::spawn(move || {
                let block = std::hint::black_box(vec![1u8; 100_000]);
                all_in.wait();
                block.len()
            })
        })
        .collect();
    let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    panic!("deliberately, after {total} bytes");
}
buckshot::register!(threads_then_panic);

#[test]
fn a_replay_limits_memory_the_way_its_worker_did() {
    // Under an address-space limit of 256 MiB, 64 threads' stacks and
    // arenas do not fit; as data in use they do, in the worker and in its
    // replay alike.
    let dir = common::TempDir::new("replay-memory-kind");
    let pool = Pool::builder()
        .processes(1)
        .memory_limit(256 << 20)
        .forward_stderr(false)
        .keep_failures(&dir.0)
        .build()
        .unwrap();
    let (error, file) = kept_failure(&pool, threads_then_panic, 64);
    assert!(
        matches!(error, Error::TaskPanicked { ref message, .. } if message.starts_with("deliberately")),
        "{error}"
    );
    let output = replay(&file, None);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(101), "{stderr}");
    assert!(
        stderr.contains("the task panicked: deliberately, after 6400000 bytes"),
        "{stderr}"
    );
}

fn hang(_: u64) -> u64 {
    common::hang()
}
buckshot::register!(hang);

#[test]
fn a_replay_ends_at_its_pools_timeout() {
    let dir = common::TempDir::new("replay-timeout");
    let timeout = Duration::from_millis(300);
    let pool = Pool::builder()
        .processes(1)
        .timeout(timeout)
        .keep_failures(&dir.0)
        .build()
        .unwrap();
    let (error, file) = kept_failure(&pool, hang, 4);
    assert!(error.is_timeout(), "{error}");
    let started = Instant::now();
    let output = replay(&file, None);
    assert!(started.elapsed() >= timeout);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(124), "{stderr}");
    assert!(
        stderr.contains("confined as its worker was: timeout of 300ms\n"),
        "{stderr}"
    );
    assert!(
        stderr.contains("the replay ran past its pool's timeout of 300ms"),
        "{stderr}"
    );
    // Without it, a hang hangs (here, for three times the timeout).
    let mut child = replay_command(&file, Some("timeout")).spawn().unwrap();
    let started = Instant::now();
    while started.elapsed() < 3 * timeout {
        assert!(child.try_wait().unwrap().is_none(), "the replay ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.signal(), Some(libc::SIGKILL));
    assert!(text(&output.stderr).contains("running WITHOUT its timeout (300ms)"));
}

/// Spins until `seconds` of CPU time are used, lifting the CPU limit
/// first if `lift` (as far as it can: the soft limit up to the hard one,
/// and SIGXCPU ignored); then panics, so that it fails even where it got
/// away.
fn spin((seconds, lift): (u64, bool)) -> u64 {
    if lift {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit read and write the struct given;
        // ignoring SIGXCPU installs no handler code.
        unsafe {
            libc::getrlimit(libc::RLIMIT_CPU, &mut limit);
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_CPU, &limit);
            libc::signal(libc::SIGXCPU, libc::SIG_IGN);
        }
    }
    let used = || {
        let mut usage = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the struct given.
        unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut usage) };
        usage.tv_sec as u64
    };
    let mut x = 0u64;
    while used() < seconds {
        for _ in 0..10_000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
    panic!("spun {seconds}s of CPU time ({x})")
}
buckshot::register!(spin);

#[test]
fn a_replay_runs_under_its_pools_cpu_limit_even_once_lifted() {
    if common::portable_lacks("sandbox (its rules are Linux only)") {
        return;
    }
    let sandbox = Sandbox::new().cpu_time(Duration::from_secs(1));
    for lift in [false, true] {
        let dir = common::TempDir::new(&format!("replay-cpu-{lift}"));
        // A timeout too: the CPU budget is watched while it runs.
        let pool = Pool::builder()
            .processes(1)
            .forward_stderr(false)
            .sandbox(sandbox.clone())
            .timeout(Duration::from_secs(40))
            .keep_failures(&dir.0)
            .build()
            .unwrap();
        let (_, file) = kept_failure(&pool, spin, (5, lift));
        let started = Instant::now();
        let output = replay(&file, None);
        // It spins: a second of CPU time takes a second or more.
        assert!(started.elapsed() >= Duration::from_secs(1));
        let stderr = text(&output.stderr);
        let signal = output.status.signal();
        assert!(
            signal == Some(libc::SIGXCPU) || signal == Some(libc::SIGKILL),
            "lifted: {lift}: {:?}: {stderr}",
            output.status
        );
        assert!(stderr.contains("CPU time limit of 1s"), "{stderr}");
    }
}

fn panics(x: u64) -> u64 {
    panic!("no luck with {x}")
}
buckshot::register!(panics);

/// `file` as the first format wrote it: version 1, without what confined
/// its worker.
fn as_version_one(file: &Path) -> PathBuf {
    let bytes = std::fs::read(file).unwrap();
    let value: ciborium::Value = ciborium::de::from_reader(bytes.as_slice()).unwrap();
    let entries: Vec<(ciborium::Value, ciborium::Value)> = value
        .into_map()
        .unwrap()
        .into_iter()
        .filter(|(key, _)| {
            !matches!(
                key.as_text(),
                Some("sandbox" | "sandbox_rules" | "memory_limit" | "timeout")
            )
        })
        .map(|(key, value)| match key.as_text() {
            Some("version") => (key, ciborium::Value::Integer(1.into())),
            _ => (key, value),
        })
        .collect();
    let old = file.with_extension("v1");
    let mut out = Vec::new();
    ciborium::ser::into_writer(&ciborium::Value::Map(entries), &mut out).unwrap();
    std::fs::write(&old, out).unwrap();
    old
}

#[test]
fn a_file_of_the_first_format_replays_only_unconfined() {
    let dir = common::TempDir::new("replay-v1");
    let pool = Pool::builder()
        .processes(1)
        .forward_stderr(false)
        .keep_failures(&dir.0)
        .build()
        .unwrap();
    let (_, file) = kept_failure(&pool, panics, 9);
    let old = as_version_one(&file);
    let output = replay(&old, None);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "version 1, which does not record the sandbox and limits of its pool; to run it \
             without them, set {UNCONFINED}=all"
        )),
        "{stderr}"
    );
    let output = replay(&old, Some("all"));
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(101), "{stderr}");
    assert!(
        stderr.contains("the task panicked: no luck with 9"),
        "{stderr}"
    );
    assert!(
        stderr.contains("its file records no sandbox or limits: running unconfined"),
        "{stderr}"
    );
    // A word it does not know is refused, not ignored.
    let output = replay(&file, Some("sandbox,everything"));
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("holds `everything`"));
}
