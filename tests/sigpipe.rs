//! A program that restores the default action of SIGPIPE (many command-line
//! tools do) must not be killed when the pool writes to a worker that no
//! longer reads its requests.
//!
//! This binary runs twice: as the test, and (with the variable below set)
//! as that program.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_bytes::ByteBuf;

const HOST_ENV: &str = "BUCKSHOT_TEST_SIGPIPE_HOST";

/// The first input closes the worker's request pipe (fd 3) and hangs; the
/// others return their number.
fn close_requests_at_zero((x, _): (u32, ByteBuf)) -> u32 {
    if x == 0 {
        // SAFETY: closing a descriptor of this process; that is the point.
        unsafe { libc::close(3) };
        common::hang();
    }
    x
}
buckshot::register!(close_requests_at_zero);

fn host() {
    // SAFETY: setting a signal's default action runs no code of ours.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let pool = buckshot::Pool::builder()
        .processes(1)
        .batch_size(1)
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    // Larger than the pipe, so that the pool still writes when the worker
    // closes its end.
    let inputs = (0..4u32).map(|x| (x, ByteBuf::from(vec![0; 4 << 20])));
    let results: Vec<String> = pool
        .map(close_requests_at_zero, inputs)
        .unwrap()
        .map(|result| match result {
            Ok(x) => x.to_string(),
            Err(e) if e.is_timeout() => "timeout".into(),
            Err(e) => e.to_string(),
        })
        .collect();
    println!("{}", results.join(" "));
}

fn main() {
    if std::env::var_os(HOST_ENV).is_some() {
        host();
        return;
    }
    let started = Instant::now();
    let output = common::within("the program", || {
        Command::new(std::env::current_exe().unwrap())
            .env(HOST_ENV, "1")
            .output()
            .unwrap()
    });
    assert!(
        output.status.success(),
        "the program ended with {}; stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "timeout 1 2 3\n");
    println!(
        "test a_dead_reader_raises_no_sigpipe ... ok ({:?})",
        started.elapsed()
    );
    println!();
    println!("test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}
