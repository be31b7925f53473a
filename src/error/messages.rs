//! The messages of errors that a pool makes, exactly as users read them.
//! Here, not in `tests/`: the struct variants are `#[non_exhaustive]`, so
//! only the crate builds them.

use std::time::Duration;

use crate::Error;

#[test]
fn per_input_messages_start_with_the_index() {
    let cases = [
        (
            Error::TaskTimeout {
                index: 4,
                timeout: Duration::from_millis(1500),
                replay: None,
            },
            "input 4: timed out after 1.5s",
        ),
        (
            Error::TaskPanicked {
                index: 0,
                message: "boom".into(),
                location: None,
                backtrace: None,
                replay: None,
            },
            "input 0: task panicked: boom",
        ),
        (
            Error::TaskPanicked {
                index: 3,
                message: "boom".into(),
                location: Some(crate::PanicLocation {
                    file: "src/parse.rs".into(),
                    line: 12,
                    column: 5,
                }),
                backtrace: Some("0: parse".into()),
                replay: None,
            },
            "input 3: task panicked at src/parse.rs:12:5: boom",
        ),
        (
            Error::Protocol {
                index: 2,
                message: "empty frame".into(),
                replay: None,
            },
            "input 2: worker broke the protocol: empty frame",
        ),
        (
            Error::PoolClosed {
                index: 9,
                reason: None,
            },
            "input 9: pool shut down before the task finished",
        ),
        (
            Error::PoolClosed {
                index: 9,
                reason: Some("no workers".into()),
            },
            "input 9: pool shut down before the task finished (no workers)",
        ),
        (
            Error::WorkerCodec {
                index: 1,
                message: "decode the input: bad".into(),
            },
            "input 1: worker could not decode the input: bad",
        ),
    ];
    for (error, message) in cases {
        assert_eq!(error.to_string(), message);
        assert!(error.index().is_some());
    }
}

#[test]
fn worker_died_names_the_status_and_the_last_stderr_line() {
    use std::os::unix::process::ExitStatusExt;
    let error = Error::WorkerDied {
        index: 3,
        status: Some(std::process::ExitStatus::from_raw(3 << 8)),
        limit: None,
        stderr: "warming up\nmemory allocation of 1024 bytes failed\n\n".into(),
        runs: 1,
        replay: None,
    };
    assert_eq!(
        error.to_string(),
        "input 3: worker died (exit status: 3): memory allocation of 1024 bytes failed"
    );
    assert!(error.is_worker_died() && !error.is_timeout() && !error.is_panic());
    let quiet = Error::WorkerDied {
        index: 0,
        status: Some(std::process::ExitStatus::from_raw(9)),
        limit: None,
        stderr: String::new(),
        runs: 1,
        replay: None,
    };
    assert_eq!(
        quiet.to_string(),
        "input 0: worker died (signal: 9 (SIGKILL))"
    );
    let backtrace_refused = Error::WorkerDied {
        index: 2,
        status: Some(std::process::ExitStatus::from_raw(6)),
        limit: None,
        stderr: "memory allocation of 8 bytes failed\n\
                 skipping backtrace printing to avoid potential recursion\n"
            .into(),
        runs: 1,
        replay: None,
    };
    assert_eq!(
        backtrace_refused.to_string(),
        "input 2: worker died (signal: 6 (SIGABRT)): memory allocation of 8 bytes failed"
    );
    let unknown = Error::WorkerDied {
        index: 1,
        status: None,
        limit: None,
        stderr: "bye\n".into(),
        runs: 1,
        replay: None,
    };
    assert_eq!(
        unknown.to_string(),
        "input 1: worker died (exit status unknown): bye"
    );
}

#[test]
fn worker_died_after_retries_says_how_many_times_the_input_ran() {
    use std::os::unix::process::ExitStatusExt;
    let retried = Error::WorkerDied {
        index: 4,
        status: Some(std::process::ExitStatus::from_raw(9)),
        limit: None,
        stderr: "out of luck\n".into(),
        runs: 3,
        replay: Some(crate::Replay::File("/tmp/r/4.replay".into())),
    };
    assert_eq!(
        retried.to_string(),
        "input 4: worker died (signal: 9 (SIGKILL)): out of luck (ran 3 times) \
         (replay: /tmp/r/4.replay)"
    );
    let quiet = Error::WorkerDied {
        index: 0,
        status: Some(std::process::ExitStatus::from_raw(6)),
        limit: Some(crate::Limit::CpuTime),
        stderr: String::new(),
        runs: 2,
        replay: None,
    };
    assert_eq!(
        quiet.to_string(),
        "input 0: worker died (signal: 6 (SIGABRT), past its CPU time limit) (ran 2 times)"
    );
}

#[test]
fn worker_died_names_the_limit_that_ended_it() {
    use std::os::unix::process::ExitStatusExt;
    let memory = Error::WorkerDied {
        index: 1,
        status: Some(std::process::ExitStatus::from_raw(6)),
        limit: Some(crate::Limit::Memory(512 << 20)),
        stderr: "memory allocation of 2147483648 bytes failed\n\
                 stack backtrace:\n   0: std::backtrace_rs::backtrace::trace\n\
                 [buckshot: 23.1 KiB left out]\n  61: main\n"
            .into(),
        runs: 1,
        replay: None,
    };
    assert_eq!(
        memory.to_string(),
        "input 1: worker died (signal: 6 (SIGABRT), past its memory limit of 512.0 MiB): \
         memory allocation of 2147483648 bytes failed"
    );
    let cpu = Error::WorkerDied {
        index: 0,
        status: Some(std::process::ExitStatus::from_raw(libc::SIGXCPU)),
        limit: Some(crate::Limit::CpuTime),
        stderr: String::new(),
        runs: 1,
        replay: None,
    };
    assert_eq!(
        cpu.to_string(),
        "input 0: worker died (signal: 24 (SIGXCPU), past its CPU time limit)"
    );
    assert_eq!(
        crate::Limit::Memory(3 << 30).to_string(),
        "memory limit of 3.0 GiB"
    );
}

#[test]
fn a_kept_input_names_its_replay_file() {
    let kept = Error::TaskTimeout {
        index: 4,
        timeout: Duration::from_secs(2),
        replay: Some(crate::Replay::File("failed/f-4.replay".into())),
    };
    assert_eq!(
        kept.to_string(),
        "input 4: timed out after 2s (replay: failed/f-4.replay)"
    );
    assert_eq!(
        kept.replay_file(),
        Some(std::path::Path::new("failed/f-4.replay"))
    );
    let not_kept = Error::Protocol {
        index: 1,
        message: "garbage".into(),
        replay: Some(crate::Replay::NotKept(
            "its map already kept 100 replay files".into(),
        )),
    };
    assert_eq!(
        not_kept.to_string(),
        "input 1: worker broke the protocol: garbage \
         (no replay file: its map already kept 100 replay files)"
    );
    assert_eq!(not_kept.replay_file(), None);
}

#[test]
fn pool_level_messages_say_what_failed_and_keep_the_cause_as_source() {
    use std::error::Error as _;
    let os = || std::io::Error::from_raw_os_error(libc::EMFILE);
    let cases = [
        (
            Error::Spawn { source: os() },
            "could not start a worker process",
            true,
        ),
        (
            Error::PoolSetup { source: os() },
            "could not set up the pool",
            true,
        ),
        (
            Error::Startup {
                message: "5 attempts in a row to spawn a worker failed".into(),
            },
            "workers fail to start: 5 attempts in a row to spawn a worker failed",
            false,
        ),
        (
            Error::Privileged,
            "this program runs with privileges (setuid, setgid or file capabilities), \
             and its copies refuse to serve as workers",
            false,
        ),
        (
            Error::Launcher {
                message: "ssh h: Connection refused".into(),
            },
            "a launcher could not get ready: ssh h: Connection refused",
            false,
        ),
        (
            Error::SandboxProbe {
                message: "could not start a probe: Resource temporarily unavailable".into(),
            },
            "could not probe the sandbox: could not start a probe: \
             Resource temporarily unavailable",
            false,
        ),
        (
            Error::ReplayDir {
                path: "kept/failures".into(),
                source: os(),
            },
            "cannot create the directory for replay files kept/failures",
            true,
        ),
        (
            Error::Journal {
                path: "runs.sqlite".into(),
                source: "disk I/O error".into(),
            },
            "cannot open the journal runs.sqlite",
            true,
        ),
        (
            Error::Internal {
                message: "the pool's thread panicked".into(),
            },
            "internal error: the pool's thread panicked",
            false,
        ),
        (
            Error::Config {
                message: "timeout must be greater than zero".into(),
            },
            "invalid pool configuration: timeout must be greater than zero",
            false,
        ),
    ];
    for (error, message, has_source) in cases {
        assert_eq!(error.to_string(), message);
        assert_eq!(error.source().is_some(), has_source, "{error:?}");
        assert_eq!(error.index(), None);
    }
}
