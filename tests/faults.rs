//! Tasks that misbehave in every way we can produce: each fault fails its
//! own input with a clear error, or does no harm at all, and the map goes on.

mod common;

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use buckshot::{Error, Pool};

fn segfault_at_two(x: u64) -> u64 {
    if x == 2 {
        // SAFETY: none; this is the point. Volatile so it is not optimised out.
        unsafe { std::ptr::null_mut::<u64>().write_volatile(x) };
    }
    x
}
buckshot::register!(segfault_at_two);

fn exit_at_two(x: u64) -> u64 {
    if x == 2 {
        std::process::exit(3);
    }
    x
}
buckshot::register!(exit_at_two);

/// Writes a 4 GiB length prefix and garbage into the worker's reply stream.
fn garbage_at_zero(x: u64) -> u64 {
    if x == 0 {
        let fd = common::reply_fd();
        // SAFETY: writing a byte buffer to a raw fd.
        unsafe { libc::write(fd, b"\xff\xff\xff\xffgarbage".as_ptr().cast(), 11) };
    }
    x
}
buckshot::register!(garbage_at_zero);

/// Writes the start of a frame and exits before the rest.
fn truncated_frame_at_zero(x: u64) -> u64 {
    if x == 0 {
        let fd = common::reply_fd();
        // SAFETY: as above.
        unsafe { libc::write(fd, [0x40, 0, 0, 0, 3, 0].as_ptr().cast(), 6) };
        // SAFETY: _exit skips the worker's own shutdown, as a crash would.
        unsafe { libc::_exit(0) };
    }
    x
}
buckshot::register!(truncated_frame_at_zero);

fn close_stdout_and_print(x: u64) -> u64 {
    // SAFETY: closing fd 1 affects only this worker's prints.
    unsafe { libc::close(1) };
    println!("printed to a closed stdout");
    x
}
buckshot::register!(close_stdout_and_print);

fn flood_stderr(x: u64) -> u64 {
    let line = "e".repeat(1023) + "\n";
    let mut stderr = std::io::stderr().lock();
    for _ in 0..8 * 1024 {
        stderr.write_all(line.as_bytes()).unwrap();
    }
    x
}
buckshot::register!(flood_stderr);

fn read_stdin(x: u64) -> (u64, usize) {
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text).unwrap();
    (x, text.len())
}
buckshot::register!(read_stdin);

fn subprocess_reads_stdin(x: u64) -> u64 {
    let status = Command::new("head")
        .args(["-c", "64"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    x
}
buckshot::register!(subprocess_reads_stdin);

/// What an fd of this process points to (`pipe:[1234]`, a path, ...).
fn fd_target(pid: u32, fd: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Starts `sleep` with the worker's stdio; returns its pid (it outlives the
/// task) and the pipes the worker holds close-on-exec, its protocol pipes.
fn start_sleeper(_: u64) -> (u32, Vec<String>) {
    let me = std::process::id();
    let private: Vec<String> = common::fds_of(me)
        .into_iter()
        .filter(|&fd| fd > 2)
        // SAFETY: F_GETFD only reads the descriptor's flags.
        .filter(|&fd| unsafe { libc::fcntl(fd as i32, libc::F_GETFD) } & libc::FD_CLOEXEC != 0)
        .map(|fd| fd_target(me, fd))
        .filter(|target| target.starts_with("pipe:"))
        .collect();
    (
        Command::new("sleep").arg("600").spawn().unwrap().id(),
        private,
    )
}
buckshot::register!(start_sleeper);

fn start_sleeper_then_abort((_, rendezvous): (u64, String)) -> u32 {
    let child = Command::new("sleep").arg("600").spawn().unwrap();
    std::fs::write(&rendezvous, child.id().to_string()).unwrap();
    std::process::abort();
}
buckshot::register!(start_sleeper_then_abort);

fn make_bytes(len: usize) -> Vec<u8> {
    vec![7; len]
}
buckshot::register!(make_bytes);

fn count_bytes(bytes: Vec<u8>) -> usize {
    bytes.len()
}
buckshot::register!(count_bytes);

fn pid_of(_: u64) -> u32 {
    std::process::id()
}
buckshot::register!(pid_of);

fn collect<O>(
    what: &str,
    results: impl Iterator<Item = Result<O, Error>> + Send + 'static,
) -> Vec<Result<O, Error>>
where
    O: Send + 'static,
{
    common::within(what, move || results.collect())
}

/// Exactly `len` results; input `bad` failed as `check` expects, and every
/// other input `x` yielded `x`.
fn assert_only_failure(
    results: &[Result<u64, Error>],
    len: usize,
    bad: usize,
    check: impl Fn(&Error) -> bool,
) {
    assert_eq!(results.len(), len, "one result per input: {results:?}");
    for (index, result) in results.iter().enumerate() {
        match result {
            Ok(x) if index != bad => assert_eq!(*x, index as u64),
            Err(e) if index == bad => assert!(check(e), "input {index}: unexpected error {e}"),
            other => panic!("input {index}: {other:?}"),
        }
    }
}

#[test]
fn a_segfault_fails_its_input_with_the_signal() {
    let pool = Pool::new(2).unwrap();
    let results = collect("segfault map", pool.map(segfault_at_two, 0..6u64).unwrap());
    assert_only_failure(
        &results,
        6,
        2,
        |e| matches!(e, Error::WorkerDied { index: 2, status, .. } if status.and_then(|s| s.signal()) == Some(libc::SIGSEGV)),
    );
}

#[test]
fn an_exit_fails_its_input_with_the_code() {
    let pool = Pool::new(2).unwrap();
    let results = collect("exit map", pool.map(exit_at_two, 0..6u64).unwrap());
    assert_only_failure(
        &results,
        6,
        2,
        |e| matches!(e, Error::WorkerDied { index: 2, status, .. } if status.and_then(|s| s.code()) == Some(3)),
    );
    assert!(
        results[2]
            .as_ref()
            .unwrap_err()
            .to_string()
            .starts_with("input 2: worker died (exit status: 3)")
    );
}

#[test]
fn garbage_on_the_reply_stream_is_a_protocol_error() {
    let pool = Pool::new(1).unwrap();
    let results = collect(
        "garbage map",
        pool.map(garbage_at_zero, [0u64, 1, 2]).unwrap(),
    );
    assert_only_failure(&results, 3, 0, |e| {
        e.to_string()
            == "input 0: worker broke the protocol: frame of 4294967295 bytes is over the limit of 1073741824"
    });
    // A fresh worker took over.
    let results = collect(
        "map after garbage",
        pool.map(garbage_at_zero, [1u64, 2, 3]).unwrap(),
    );
    assert_eq!(
        results.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
        [1, 2, 3]
    );
}

#[test]
fn a_truncated_frame_is_a_death() {
    let pool = Pool::new(1).unwrap();
    let results = collect(
        "truncated frame map",
        pool.map(truncated_frame_at_zero, [0u64, 1, 2]).unwrap(),
    );
    assert_only_failure(
        &results,
        3,
        0,
        |e| matches!(e, Error::WorkerDied { index: 0, status, .. } if status.and_then(|s| s.code()) == Some(0)),
    );
}

#[test]
fn closing_stdout_is_harmless() {
    let pool = Pool::new(1).unwrap();
    let results = collect(
        "closed stdout map",
        pool.map(close_stdout_and_print, 0..5u64).unwrap(),
    );
    assert_eq!(
        results.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
}

#[test]
fn flooding_stderr_is_harmless() {
    let pool = Pool::builder()
        .processes(2)
        .forward_stderr(false)
        .build()
        .unwrap();
    let results = collect("stderr flood map", pool.map(flood_stderr, 0..4u64).unwrap());
    assert_eq!(
        results.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
}

#[test]
fn a_task_reading_stdin_sees_end_of_file() {
    let pool = Pool::new(1).unwrap();
    let results = collect("stdin map", pool.map(read_stdin, 0..20u64).unwrap());
    let expected: Vec<(u64, usize)> = (0..20).map(|x| (x, 0)).collect();
    assert_eq!(
        results.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
        expected
    );
}

#[test]
fn a_subprocess_reading_stdin_swallows_no_requests() {
    let pool = Pool::new(1).unwrap();
    let results = collect(
        "head -c 64 map",
        pool.map(subprocess_reads_stdin, 0..20u64).unwrap(),
    );
    assert_eq!(
        results.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
        (0..20).collect::<Vec<_>>()
    );
}

#[test]
fn subprocesses_inherit_no_protocol_pipe() {
    let pool = Pool::new(1).unwrap();
    let (sleeper, protocol_pipes) = pool
        .map(start_sleeper, [0u64])
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let inherited: Vec<String> = common::fds_of(sleeper)
        .into_iter()
        .map(|fd| fd_target(sleeper, fd))
        .collect();
    common::kill9(sleeper);
    // The request pipe may be there twice: a worker's watchdog (where it
    // has no parent-death signal) holds a copy.
    let distinct: std::collections::HashSet<&String> = protocol_pipes.iter().collect();
    assert_eq!(
        distinct.len(),
        2,
        "the worker's request and reply pipes: {protocol_pipes:?}"
    );
    for pipe in &protocol_pipes {
        assert!(
            !inherited.contains(pipe),
            "the subprocess inherited {pipe}: {inherited:?}"
        );
    }
}

#[test]
fn a_worker_dies_promptly_even_if_its_subprocess_holds_its_pipes() {
    let dir = std::env::temp_dir().join(format!("buckshot-sleeper-{}", std::process::id()));
    let pool = Pool::new(1).unwrap();
    let path = dir.to_string_lossy().into_owned();
    let results = collect(
        "abort with a live subprocess",
        pool.map(start_sleeper_then_abort, [(0u64, path)]).unwrap(),
    );
    let sleeper: u32 = std::fs::read_to_string(&dir).unwrap().parse().unwrap();
    let _ = std::fs::remove_file(&dir);
    // It went with its worker's process group.
    assert!(common::exits_within(sleeper, common::BOUND));
    assert_eq!(results.len(), 1, "one result per input: {results:?}");
    assert!(
        matches!(&results[0], Err(Error::WorkerDied { status, .. }) if status.and_then(|s| s.signal()) == Some(libc::SIGABRT)),
        "{results:?}"
    );
}

#[test]
fn outputs_and_inputs_over_the_frame_limit_fail_alone() {
    let pool = Pool::builder()
        .processes(1)
        .max_frame_bytes(1 << 20)
        .build()
        .unwrap();
    let results = collect(
        "large outputs",
        pool.map(make_bytes, [10, 2 << 20, 20]).unwrap(),
    );
    assert_eq!(results.len(), 3, "one result per input");
    assert_eq!(results[0].as_ref().unwrap().len(), 10);
    let message = results[1].as_ref().unwrap_err().to_string();
    assert!(
        message.starts_with("input 1: worker could not encode the output: 20971"),
        "{message}"
    );
    assert!(
        message.ends_with(" bytes is over the frame limit of 1048576"),
        "{message}"
    );
    assert_eq!(results[2].as_ref().unwrap().len(), 20);

    let results = collect(
        "large inputs",
        pool.map(count_bytes, [vec![1; 5], vec![2; 2 << 20], vec![3; 7]])
            .unwrap(),
    );
    assert_eq!(results.len(), 3, "one result per input: {results:?}");
    assert_eq!(*results[0].as_ref().unwrap(), 5);
    let Err(error) = &results[1] else {
        panic!("{:?}", results[1])
    };
    assert_eq!(error.to_string(), "input 1: could not encode the input");
    assert_eq!(
        std::error::Error::source(error).unwrap().to_string(),
        "input encodes to 2097157 bytes, over the frame limit of 1048576"
    );
    assert_eq!(*results[2].as_ref().unwrap(), 7);
}

#[test]
fn a_pool_outlives_the_thread_that_built_it() {
    let pool = std::thread::spawn(|| {
        Pool::builder()
            .processes(2)
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap()
    })
    .join()
    .unwrap();
    // Replacements are spawned too, after the first workers die.
    let results = collect(
        "map after the builder thread ended",
        pool.map(exit_at_two, 0..6u64).unwrap(),
    );
    assert_only_failure(&results, 6, 2, |e| e.is_worker_died());
    let results = collect("second map", pool.map(exit_at_two, 0..6u64).unwrap());
    assert_only_failure(&results, 6, 2, |e| e.is_worker_died());
    let pids: Vec<u32> = pool
        .map(pid_of, 0..100)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(pids.iter().all(|&pid| common::alive(pid)));
}

#[test]
fn an_idle_worker_that_dies_is_reaped_at_once() {
    let pool = Pool::new(1).unwrap();
    let pid = pool.map(pid_of, [0]).unwrap().next().unwrap().unwrap();
    common::kill9(pid);
    // No map runs: the pool must notice and reap it by itself.
    common::wait_until("the killed idle worker is reaped", || !common::alive(pid));
    let next = pool.map(pid_of, [0]).unwrap().next().unwrap().unwrap();
    assert_ne!(next, pid);
}
