//! What a thread of a task, or a child it forked, writes into the worker's
//! reply pipe must not keep a hanging task alive or stall the pool: a reply
//! that answers nothing is a protocol error, and what keeps coming after
//! the worker died is read only up to what the worker could have written.

mod common;

use std::time::Duration;

use buckshot::{Error, Pool};

/// A REPLY frame (kind 3) for zero items: length 22, first sequence 0,
/// count 0, busy time 0, no flags.
fn empty_reply() -> Vec<u8> {
    // Kind, first_seq:u64, count:u32 = 0, busy_ns:u64, flags:u8.
    let mut frame = 22u32.to_le_bytes().to_vec();
    frame.push(3);
    frame.extend_from_slice(&[0; 21]);
    frame
}

/// Writes an empty reply every 20 ms into `fd` (the worker's reply pipe)
/// until the process dies.
fn keep_writing_empty_replies(fd: i32) -> ! {
    let frame = empty_reply();
    loop {
        // SAFETY: writing a byte buffer to a descriptor; errors are ignored.
        unsafe { libc::write(fd, frame.as_ptr().cast(), frame.len()) };
        // SAFETY: usleep has no preconditions (and is safe after fork).
        unsafe { libc::usleep(20_000) };
    }
}

fn hang_with_a_writing_thread(x: u64) -> u64 {
    if x == 1 {
        let fd = common::reply_fd();
        std::thread::spawn(move || keep_writing_empty_replies(fd));
        common::hang();
    }
    x
}
buckshot::register!(hang_with_a_writing_thread);

fn hang_with_a_writing_child((x, rendezvous): (u64, String)) -> u64 {
    if x == 1 {
        let fd = common::reply_fd();
        // The child starts writing once its pid is announced: the pool
        // kills this worker at the first empty reply.
        let (go_read, go_write) = rustix::pipe::pipe().unwrap();
        // SAFETY: the child calls only async-signal-safe functions (read,
        // write, usleep) until it is killed.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork failed");
        if child == 0 {
            let _ = rustix::io::read(&go_read, &mut [0u8; 1]);
            keep_writing_empty_replies(fd);
        }
        common::announce_pid(&rendezvous, child as u32);
        rustix::io::write(&go_write, b"x").unwrap();
        common::hang();
    }
    x
}
buckshot::register!(hang_with_a_writing_child);

fn assert_protocol_error_at_one(results: &[Result<u64, Error>]) {
    assert_eq!(results.len(), 3, "{results:?}");
    assert_eq!(results[0].as_ref().ok(), Some(&0));
    assert!(
        matches!(&results[1], Err(Error::Protocol { index: 1, message, .. }) if message == "a reply that answers no input"),
        "{:?}",
        results[1]
    );
    assert_eq!(results[2].as_ref().ok(), Some(&2));
}

// The timeouts below are what empty replies every 20 ms kept from ever
// firing; they are generous so that the protocol error comes first even on
// a loaded machine.

#[test]
fn empty_replies_from_a_thread_are_a_protocol_error() {
    let pool = Pool::builder()
        .processes(1)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let results = common::within_for("the map", Duration::from_secs(10), move || {
        pool.map(hang_with_a_writing_thread, 0..3)
            .unwrap()
            .collect::<Vec<_>>()
    });
    assert_protocol_error_at_one(&results);
}

/// Maps inputs 0 to 2 with `task` on a one-worker pool; the task forks a
/// child and announces its pid. Returns the results and the child's pid,
/// once the map is over and while the pool still lives.
fn map_with_a_forked_child(
    task: impl Fn((u64, String)) -> u64 + Send + 'static,
    timeout: Option<Duration>,
) -> (Vec<Result<u64, Error>>, u32) {
    let rendezvous = common::Rendezvous::new();
    let mut builder = Pool::builder().processes(1).forward_stderr(false);
    if let Some(timeout) = timeout {
        builder = builder.timeout(timeout);
    }
    let pool = builder.build().unwrap();
    let inputs: Vec<(u64, String)> = (0..3).map(|x| (x, rendezvous.path())).collect();
    let map = std::thread::spawn(move || {
        let results = pool.map(task, inputs).unwrap().collect::<Vec<_>>();
        (pool, results)
    });
    let child = rendezvous.wait();
    let (pool, results) = common::within_for("the map", Duration::from_secs(10), move || {
        map.join().unwrap()
    });
    // The forked child was in the worker's process group: it went too.
    assert!(
        common::exits_within(child, Duration::from_secs(5)),
        "the forked child outlived its worker"
    );
    drop(pool);
    (results, child)
}

#[test]
fn empty_replies_from_a_forked_child_are_a_protocol_error() {
    let (results, _) =
        map_with_a_forked_child(hang_with_a_writing_child, Some(Duration::from_secs(2)));
    assert_protocol_error_at_one(&results);
}

/// Forks a child that writes the start of a frame it never finishes, and
/// keeps writing, into the worker's reply pipe; then the worker aborts.
fn abort_with_a_streaming_child((x, rendezvous): (u64, String)) -> u64 {
    if x == 1 {
        let fd = common::reply_fd();
        // SAFETY: as above: the child only writes until it is killed.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork failed");
        if child == 0 {
            let prefix = 1_000_000_000u32.to_le_bytes();
            let zeros = [0u8; 64 * 1024];
            // SAFETY: writing byte buffers to a descriptor.
            unsafe { libc::write(fd, prefix.as_ptr().cast(), prefix.len()) };
            loop {
                // SAFETY: as above.
                unsafe { libc::write(fd, zeros.as_ptr().cast(), zeros.len()) };
            }
        }
        common::announce_pid(&rendezvous, child as u32);
        std::process::abort();
    }
    x
}
buckshot::register!(abort_with_a_streaming_child);

/// The peak resident memory of this process, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[test]
fn a_stream_after_the_workers_death_is_not_read_to_its_end() {
    let before = peak_rss();
    let (results, _) = map_with_a_forked_child(abort_with_a_streaming_child, None);
    assert_eq!(results.len(), 3, "{results:?}");
    assert_eq!(results[0].as_ref().ok(), Some(&0));
    assert!(
        matches!(&results[1], Err(Error::WorkerDied { index: 1, .. })),
        "{:?}",
        results[1]
    );
    assert_eq!(results[2].as_ref().ok(), Some(&2));
    let grew = peak_rss().saturating_sub(before);
    assert!(
        grew < 64 << 20,
        "the pool read {} MiB of what came after the death",
        grew >> 20
    );
}
