//! What a pool sets up in its workers, for workers on other machines: the
//! initializer runs there, the variables of `env` reach them, and an
//! initializer's panic comes back through the relay with its message.
//! Against a private sshd and a single-node Slurm on this machine (the
//! tests say they are skipped where either is missing).

mod common;
#[path = "common/sshd.rs"]
mod sshd;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use buckshot::{Error, Launcher, Pool};

/// The tests share the host's binary cache and Slurm's queue.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serialised() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// How many times the initializer ran in this process.
static INITIALIZED: AtomicU32 = AtomicU32::new(0);

/// Counts itself, and writes its worker's pid in the file that the pool
/// names in the workers' environment.
fn setup() {
    INITIALIZED.fetch_add(1, Ordering::SeqCst);
    let log = std::env::var("SETUP_LOG").expect("SETUP_LOG in a worker's environment");
    common::note(&log, u64::from(std::process::id()));
}
buckshot::register!(setup);

fn broken_setup() {
    panic!("no model at /nowhere");
}
buckshot::register!(broken_setup);

/// Its worker's pid, the initializer's runs there, and `SETUP_VALUE`.
fn what_a_worker_sees(_: u64) -> (u32, u32, Option<String>) {
    std::thread::sleep(Duration::from_millis(2));
    (
        std::process::id(),
        INITIALIZED.load(Ordering::SeqCst),
        std::env::var("SETUP_VALUE").ok(),
    )
}
buckshot::register!(what_a_worker_sees);

/// Quoted on the remote command line.
const VALUE: &str = "one two 'three' \"four\" $FIVE `six` = seven";

/// A log for one test, removed when dropped.
struct Log(PathBuf);

impl Log {
    fn new(name: &str) -> Log {
        let path = std::env::temp_dir().join(format!(
            "buckshot-setup-remote-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        Log(path)
    }

    fn pids(&self) -> Vec<u32> {
        common::runs(&self.0)
            .into_iter()
            .map(|pid| pid as u32)
            .collect()
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Maps on workers of `launcher`, set up with an initializer and
/// variables, and checks what each worker saw.
fn initializer_and_env_reach(launcher: impl Into<Launcher>, name: &str) {
    let log = Log::new(name);
    let pool = Pool::builder()
        .workers(launcher, 2)
        .initializer(setup)
        .env("SETUP_LOG", &log.0)
        .env("SETUP_VALUE", VALUE)
        .build()
        .unwrap();
    let seen: Vec<(u32, u32, Option<String>)> = common::within("the map", move || {
        pool.map(what_a_worker_sees, 0..200)
            .unwrap()
            .map(Result::unwrap)
            .collect()
    });
    let initialized = log.pids();
    assert!(!initialized.is_empty());
    for (pid, runs, value) in &seen {
        assert!(initialized.contains(pid), "worker {pid} did not initialize");
        assert_eq!(*runs, 1, "worker {pid} initialized {runs} times");
        assert_eq!(value.as_deref(), Some(VALUE));
    }
    assert!(initialized.len() <= 2, "initialized: {initialized:?}");
    assert_eq!(INITIALIZED.load(Ordering::SeqCst), 0, "not in this process");
    assert_eq!(std::env::var_os("SETUP_VALUE"), None, "not in this process");
}

#[test]
fn the_initializer_and_variables_reach_workers_over_ssh() {
    let _one = serialised();
    let Some(sshd) = sshd::Sshd::start() else {
        return;
    };
    initializer_and_env_reach(sshd.launcher(), "ssh");
}

#[test]
fn an_initializers_panic_comes_back_over_ssh() {
    let _one = serialised();
    let Some(sshd) = sshd::Sshd::start() else {
        return;
    };
    let pool = Pool::builder()
        .workers(sshd.launcher(), 1)
        .initializer(broken_setup)
        .forward_stderr(false)
        .build()
        .unwrap();
    let result = common::within("the call", move || pool.call(what_a_worker_sees, 0));
    let reason = match result {
        Err(Error::PoolClosed {
            reason: Some(reason),
            ..
        }) => reason,
        Err(error @ Error::Startup { .. }) => error.to_string(),
        other => panic!("{other:?}"),
    };
    // How the local `ssh` ended varies (it exits as the worker did, or
    // the pool kills it as the worker's stream ends); the worker's last
    // words come through either way.
    let expected = format!(
        "ssh {}@127.0.0.1: 5 workers in a row died before their handshake; last: ",
        sshd.user
    );
    assert!(reason.starts_with(&expected), "{reason}");
    assert!(
        reason.ends_with(
            ": buckshot worker: initializer `worker_setup_remote::broken_setup` \
             panicked: no model at /nowhere"
        ),
        "{reason}"
    );
}

/// Whether Slurm answers with its node up (a slow controller gets 30 s).
fn slurm_answers() -> bool {
    let up = || {
        let out = Command::new("sinfo")
            .args(["-h", "-o", "%t"])
            .output()
            .ok()?;
        let states = String::from_utf8_lossy(&out.stdout);
        Some(
            out.status.success()
                && ["idle", "mix", "alloc", "comp"]
                    .iter()
                    .any(|s| states.contains(s)),
        )
    };
    let there = std::path::Path::new("/etc/slurm/slurm.conf").exists();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let answers = loop {
        match up() {
            Some(true) => break true,
            Some(false) if there && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(500));
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

#[test]
fn the_initializer_and_variables_reach_workers_through_srun() {
    let _one = serialised();
    if !slurm_answers() {
        return;
    }
    initializer_and_env_reach(Launcher::srun(), "srun");
}
