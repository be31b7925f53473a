//! What users see when something is wrong: exact messages.

mod common;

use std::time::Duration;

use buckshot::{Error, Pool};

fn registered(x: u64) -> u64 {
    x
}
buckshot::register!(registered);

/// Says why, then takes its worker down.
fn doomed(x: u64) -> u64 {
    eprintln!("input {x} is doomed");
    std::process::exit(3)
}
buckshot::register!(doomed);

fn never_registered(x: u64) -> u64 {
    x
}

#[test]
fn a_death_after_retries_says_how_many_times_the_input_ran() {
    for (retries, message) in [
        (
            0,
            "input 0: worker died (exit status: 3): input 7 is doomed",
        ),
        (
            2,
            "input 0: worker died (exit status: 3): input 7 is doomed (ran 3 times)",
        ),
    ] {
        let pool = Pool::builder()
            .processes(1)
            .retries(retries)
            .forward_stderr(false)
            .build()
            .unwrap();
        let error = common::within("a call", move || pool.call(doomed, 7).unwrap_err());
        assert_eq!(error.to_string(), message);
        assert!(matches!(error, Error::WorkerDied { runs, .. } if runs == retries + 1));
    }
}

fn config_error(builder: buckshot::PoolBuilder) -> String {
    match builder.build() {
        Err(e @ Error::Config { .. }) => e.to_string(),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[test]
fn zero_processes_is_an_error() {
    assert_eq!(
        config_error(Pool::builder().processes(0)),
        "invalid pool configuration: processes must be at least 1"
    );
    assert!(matches!(Pool::new(0), Err(Error::Config { .. })));
}

#[test]
fn other_invalid_settings() {
    assert_eq!(
        config_error(Pool::builder().timeout(Duration::ZERO)),
        "invalid pool configuration: timeout must be greater than zero"
    );
    assert_eq!(
        config_error(Pool::builder().batch_size(0)),
        "invalid pool configuration: batch_size must be at least 1"
    );
    assert_eq!(
        config_error(Pool::builder().max_tasks_per_worker(0)),
        "invalid pool configuration: max_tasks_per_worker must be at least 1"
    );
}

#[test]
fn unregistered_functions_are_named() {
    let pool = Pool::new(1).unwrap();
    let error = pool.map(never_registered, [1u64]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "task `errors::never_registered` is not registered (missing `buckshot::register!`?)"
    );
    assert!(
        matches!(&error, Error::NotRegistered { name, .. } if name == "errors::never_registered")
    );
    assert_eq!(error.index(), None);
}

#[test]
fn closures_and_fn_pointers_cannot_be_registered() {
    let pool = Pool::new(1).unwrap();
    let closure = |x: u64| x + 1;
    let Err(Error::NotRegistered { name, .. }) = pool.map(closure, [1u64]) else {
        panic!("a closure was accepted")
    };
    assert!(name.contains("{{closure}}"), "{name}");
    let pointer: fn(u64) -> u64 = registered;
    let Err(Error::NotRegistered { name, .. }) = pool.map(pointer, [1u64]) else {
        panic!("a fn pointer was accepted")
    };
    assert_eq!(name, "fn(u64) -> u64");
}

/// A path under a regular file, which no directory or file can be created
/// at (`ENOTDIR`); the file goes when the guard is dropped.
fn under_a_file(name: &str) -> (std::path::PathBuf, impl Drop) {
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let file = std::env::temp_dir().join(format!("buckshot-errors-{}-{name}", std::process::id()));
    std::fs::write(&file, "not a directory").unwrap();
    (file.join(name), Remove(file))
}

/// The error's `source()`, as the operating system's error.
fn os_source(error: &Error) -> Option<i32> {
    std::error::Error::source(error)?
        .downcast_ref::<std::io::Error>()?
        .raw_os_error()
}

#[test]
fn a_replay_directory_that_cannot_be_created_is_named_with_its_cause() {
    let (dir, _file) = under_a_file("replays");
    let error = Pool::builder()
        .processes(1)
        .keep_failures(&dir)
        .build()
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "cannot create the directory for replay files {}",
            dir.display()
        )
    );
    assert!(
        matches!(&error, Error::ReplayDir { path, .. } if *path == dir),
        "{error:?}"
    );
    assert_eq!(os_source(&error), Some(libc::ENOTDIR), "{error:?}");
    assert_eq!(error.index(), None);
}

#[test]
fn a_journal_that_cannot_be_opened_is_named_with_its_cause() {
    let (journal, _file) = under_a_file("journal.sqlite");
    let error = Pool::builder()
        .processes(1)
        .journal(&journal)
        .build()
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("cannot open the journal {}", journal.display())
    );
    assert!(
        matches!(&error, Error::Journal { path, .. } if *path == journal),
        "{error:?}"
    );
    // SQLite's own words, without the path again.
    let source = std::error::Error::source(&error).map(ToString::to_string);
    assert_eq!(
        source,
        Some(format!(
            "unable to open database file: {}",
            journal.display()
        )),
        "{error:?}"
    );
    assert!(!journal.exists());
}

/// Set in the copy of this binary whose epoll sets cannot be created.
const NO_POLLER_ENV: &str = "BUCKSHOT_TEST_NO_POLLER";

/// When the pool cannot create its own descriptors, `build` says so with
/// the operating system's error, and does not blame a worker. A copy of
/// this binary runs under a seccomp filter that fails `epoll_create1`,
/// which every pool needs (its event loop's set, with either backend)
/// before it starts a worker.
#[test]
fn a_pool_that_cannot_set_itself_up_says_so_with_the_cause() {
    let name = "a_pool_that_cannot_set_itself_up_says_so_with_the_cause";
    if std::env::var_os(NO_POLLER_ENV).is_some() {
        // The pool's event loop cannot have its set (epoll, either backend).
        let epoll = [(libc::SYS_epoll_create1, vec![])].into_iter().collect();
        if let Err(e) = common::fail_syscalls(epoll, libc::EMFILE) {
            common::skip("seccomp", &format!("no seccomp filter here: {e}"));
            return;
        }
        let error = Pool::new(1).unwrap_err();
        assert_eq!(error.to_string(), "could not set up the pool");
        assert!(matches!(error, Error::PoolSetup { .. }), "{error:?}");
        assert_eq!(os_source(&error), Some(libc::EMFILE), "{error:?}");
        assert_eq!(common::children(), [], "a worker was started");
        return;
    }
    let output = common::within(name, move || {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--nocapture", "--test-threads=1"])
            .env(NO_POLLER_ENV, "1")
            .output()
            .unwrap()
    });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    for skipped in stderr.lines().filter(|line| line.starts_with("SKIPPED")) {
        eprintln!("{skipped}");
    }
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{}\n{stdout}\n{stderr}",
        output.status
    );
}
