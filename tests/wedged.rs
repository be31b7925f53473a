//! A worker that stops reading its requests between two inputs: the input
//! sent to it next was never read, so it must not be blamed when that worker
//! is killed or times out, and it must not wait forever when its frame is
//! larger than the pipe. And a task that leaves its worker unable to go on
//! is the one that times out, not the input after it.
//!
//! The worker is stopped (SIGSTOP) while it waits for its next request, so
//! that the next input's frame stays in the pipe: in full if it is small,
//! in part if it is larger than the pipe.

mod common;

use std::time::Duration;

use buckshot::{Error, Pool};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

#[derive(Serialize, Deserialize)]
enum Job {
    Pid,
    /// Returns the number of bytes.
    Bytes(ByteBuf),
    /// Leaves a thread holding the stdout lock, then returns.
    LockStdout,
}

fn job(job: Job) -> u64 {
    match job {
        Job::Pid => u64::from(std::process::id()),
        Job::Bytes(bytes) => bytes.len() as u64,
        Job::LockStdout => {
            let (locked, wait) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _stdout = std::io::stdout().lock();
                locked.send(()).unwrap();
                common::hang()
            });
            wait.recv().unwrap();
            0
        }
    }
}
buckshot::register!(job);

/// Larger than any pipe buffer the pool can get (1 MiB without privileges).
const LARGE: usize = 8 << 20;
/// Fits in the request pipe.
const SMALL: usize = 1000;

/// The system call process `pid` is blocked in, if any.
fn blocked_in(pid: u32) -> Option<i64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

fn state_of(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rfind(')')
        .and_then(|i| stat[i + 2..].chars().next())
        .unwrap_or('?')
}

/// Bytes waiting in worker `pid`'s request pipe: the pipe it holds open
/// for reading besides fds 0 to 2.
fn unread_requests(pid: u32) -> u64 {
    let (fd, _) = common::pipes_of(pid)
        .into_iter()
        .find(|&(_, flags)| flags & libc::O_ACCMODE == libc::O_RDONLY)
        .unwrap_or_else(|| panic!("worker {pid} has no request pipe"));
    let pipe = std::fs::File::open(format!("/proc/{pid}/fd/{fd}")).unwrap();
    rustix::io::ioctl_fionread(&pipe).unwrap()
}

/// On a one-worker pool: stops the worker while it waits for a request,
/// maps one input of `bytes` bytes, then kills the worker from outside
/// (no timeout) or lets the timeout fire. Returns that input's result.
fn stop_the_worker_then_map(bytes: usize, timeout: Option<Duration>) -> Result<u64, Error> {
    let mut builder = Pool::builder().processes(1);
    if let Some(timeout) = timeout {
        builder = builder.timeout(timeout);
    }
    let pool = std::sync::Arc::new(builder.build().unwrap());
    let worker = pool.map(job, [Job::Pid]).unwrap().next().unwrap().unwrap() as u32;
    common::wait_until("the worker waits for its next request", || {
        blocked_in(worker) == Some(libc::SYS_read)
    });
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(worker as i32, libc::SIGSTOP) }, 0);
    common::wait_until("the worker stops", || state_of(worker) == 'T');
    let map = std::thread::spawn({
        let pool = std::sync::Arc::clone(&pool);
        move || {
            let input = Job::Bytes(ByteBuf::from(vec![7; bytes]));
            pool.map(job, [input]).unwrap().next().unwrap()
        }
    });
    if timeout.is_none() {
        common::wait_until("the input reaches the worker's pipe", || {
            unread_requests(worker) > 0
        });
        common::kill9(worker);
    }
    let result = common::within_for(
        "the input after the stop",
        Duration::from_secs(20),
        move || map.join().unwrap(),
    );
    drop(pool);
    assert!(!common::alive(worker), "the stopped worker survived");
    result
}

#[test]
fn an_unread_small_input_is_not_blamed_for_a_kill() {
    assert_eq!(stop_the_worker_then_map(SMALL, None).unwrap(), SMALL as u64);
}

#[test]
fn an_unread_large_input_is_not_blamed_for_a_kill() {
    assert_eq!(stop_the_worker_then_map(LARGE, None).unwrap(), LARGE as u64);
}

#[test]
fn an_unread_small_input_is_not_blamed_for_a_timeout() {
    let result = stop_the_worker_then_map(SMALL, Some(Duration::from_millis(300)));
    assert_eq!(result.unwrap(), SMALL as u64);
}

#[test]
fn an_input_larger_than_the_pipe_does_not_wait_forever() {
    let result = stop_the_worker_then_map(LARGE, Some(Duration::from_millis(300)));
    assert_eq!(result.unwrap(), LARGE as u64);
}

#[test]
fn a_task_that_wedges_its_worker_is_the_one_that_times_out() {
    let pool = Pool::builder()
        .processes(1)
        .batch_size(1)
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let jobs = vec![Job::LockStdout, Job::Bytes(ByteBuf::from(vec![1; SMALL]))];
    let results = common::within("the map", move || {
        pool.map(job, jobs).unwrap().collect::<Vec<_>>()
    });
    assert_eq!(results.len(), 2);
    assert!(
        matches!(results[0], Err(Error::TaskTimeout { index: 0, .. })),
        "{results:?}"
    );
    assert_eq!(
        results[1].as_ref().ok(),
        Some(&(SMALL as u64)),
        "{results:?}"
    );
}
