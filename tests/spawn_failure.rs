//! A worker that cannot be spawned is an error from `build`, not a panic,
//! and the workers spawned before it are reaped. One test in this binary:
//! it lowers this process's file limit.

mod common;

use buckshot::{Error, Pool};
use rustix::process::{Resource, Rlimit};

fn pid_of(_: u64) -> u32 {
    std::process::id()
}
buckshot::register!(pid_of);

#[test]
fn running_out_of_file_descriptors_is_a_spawn_error() {
    let before = rustix::process::getrlimit(Resource::Nofile);
    // Room for the pool's own descriptors and a few workers, not for 50.
    let open = common::open_fds() as u64;
    let tight = Rlimit {
        current: Some(open + 16),
        maximum: before.maximum,
    };
    rustix::process::setrlimit(Resource::Nofile, tight).unwrap();
    let result = Pool::new(50);
    rustix::process::setrlimit(Resource::Nofile, before).unwrap();

    let error = result.unwrap_err();
    assert_eq!(error.to_string(), "could not start a worker process");
    let Error::Spawn { source } = &error else {
        panic!("{error:?}")
    };
    assert_eq!(source.raw_os_error(), Some(libc::EMFILE), "{source}");
    assert_eq!(
        common::children(),
        [],
        "workers spawned before the failure remain"
    );
    assert_eq!(common::open_fds() as u64, open, "file descriptors leaked");

    // With descriptors to spare, pools work again.
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.map(pid_of, 0..10).unwrap().count(), 10);
}
