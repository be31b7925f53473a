//! A worker that cannot be spawned is an error from `build`, not a panic,
//! and the workers spawned before it are reaped. (A pool past the limit
//! on open files no longer gets that far: see `fd_limit.rs`.)

mod common;

use buckshot::{Error, Launcher, Pool};

fn pid_of(_: u64) -> u32 {
    std::process::id()
}
buckshot::register!(pid_of);

#[test]
fn a_worker_that_cannot_be_spawned_is_a_spawn_error() {
    let open = common::open_fds();
    // Three local workers are spawned first, then one whose program does
    // not exist.
    let result = Pool::builder()
        .workers(Launcher::local(), 3)
        .workers(Launcher::command(["/nonexistent/buckshot-worker"]), 1)
        .build();

    let error = result.unwrap_err();
    assert_eq!(error.to_string(), "could not start a worker process");
    let Error::Spawn { source, .. } = &error else {
        panic!("{error:?}")
    };
    assert_eq!(source.raw_os_error(), Some(libc::ENOENT), "{source}");
    assert_eq!(
        common::children(),
        [],
        "workers spawned before the failure remain"
    );
    assert_eq!(common::open_fds(), open, "file descriptors leaked");

    // Without it, pools work.
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.map(pid_of, 0..10).unwrap().count(), 10);
}
