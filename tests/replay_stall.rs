//! A replay directory that does not answer (a hung network file system,
//! made here with fanotify permission events that nobody answers) stalls
//! no timeout and no other input: replay files are written off the pool's
//! thread, and a failure waits for its file a bounded time only.

mod common;

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use buckshot::{Error, Pool, Replay};

fn panic_at_zero_hang_at_one(x: u64) -> u64 {
    match x {
        0 => panic!("zero is cursed"),
        1 => common::hang(),
        x => x,
    }
}
buckshot::register!(panic_at_zero_hang_at_one);

/// How long a failure waits for its file (the crate's bound).
const WRITE_BOUND: Duration = Duration::from_secs(10);

/// Holds every open of a file in `dir` (creations included) until the
/// returned descriptor is closed, which lets them all through; `None`
/// where fanotify permission events are not to be had.
fn hold_opens_in(dir: &std::path::Path) -> Option<OwnedFd> {
    // SAFETY: fanotify_init takes flags and returns a new descriptor or -1.
    let fd = unsafe {
        libc::fanotify_init(
            libc::FAN_CLASS_CONTENT | libc::FAN_CLOEXEC,
            libc::O_RDONLY as u32,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` was just returned to us and is owned by nobody else.
    let fan = unsafe { OwnedFd::from_raw_fd(fd) };
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid fanotify descriptor, flags, and a NUL-terminated path.
    let rc = unsafe {
        libc::fanotify_mark(
            fd,
            libc::FAN_MARK_ADD,
            libc::FAN_OPEN_PERM | libc::FAN_EVENT_ON_CHILD,
            libc::AT_FDCWD,
            path.as_ptr(),
        )
    };
    (rc == 0).then_some(fan)
}

#[test]
fn a_replay_directory_that_hangs_stalls_no_timeout_and_no_other_input() {
    let dir = common::TempDir::new("replay-stall");
    let Some(fan) = hold_opens_in(&dir.0) else {
        common::skip(
            "root",
            "fanotify permission events need CAP_SYS_ADMIN to hold the replay directory",
        );
        return;
    };
    let pool = Pool::builder()
        .processes(1)
        .forward_stderr(false)
        .batch_size(1)
        .timeout(Duration::from_millis(300))
        .keep_failures(&dir.0)
        .build()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for arrival in pool
                .map_unordered(panic_at_zero_hang_at_one, 0..6u64)
                .unwrap()
            {
                let _ = tx.send((arrival, started.elapsed()));
            }
        });
        // Input 0 panics and its file cannot be created; input 1 then hangs
        // in the only worker: the pool's thread must time it out and start
        // another worker for inputs 2 to 5, while the writer is stuck.
        let mut oks = Vec::new();
        while oks.len() < 4 {
            let Ok(((index, result), at)) = rx.recv_timeout(WRITE_BOUND * 3) else {
                drop(fan);
                panic!("the other inputs did not come while the replay directory hung");
            };
            assert!(
                at < WRITE_BOUND,
                "input {index} came after {at:?}: it waited for the replay writer"
            );
            oks.push((index, result.unwrap()));
        }
        oks.sort();
        assert_eq!(oks, [(2, 2), (3, 3), (4, 4), (5, 5)]);
        // The two failures come once their files are overdue, saying so.
        for _ in 0..2 {
            let Ok(((index, result), at)) = rx.recv_timeout(WRITE_BOUND * 3) else {
                drop(fan);
                panic!("a failure waited for its file past its bound");
            };
            let error = result.unwrap_err();
            assert!(at >= WRITE_BOUND, "input {index} came after {at:?}");
            let why = match &error {
                Error::TaskPanicked {
                    replay: Some(Replay::NotKept(why)),
                    ..
                } if index == 0 => why,
                Error::TaskTimeout {
                    replay: Some(Replay::NotKept(why)),
                    ..
                } if index == 1 => why,
                other => panic!("input {index}: {other:?}"),
            };
            assert!(
                why.starts_with("its file was not written within 10s"),
                "{why}"
            );
        }
        // Lets the writer through: its files appear late, whole.
        drop(fan);
    });
    drop(pool);
}
