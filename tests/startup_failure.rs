//! Workers that die during start-up, every time: the pool gives up with a
//! clear error instead of respawning forever. One test in this binary: the
//! switch below breaks every worker this test process starts.

mod common;

use std::path::PathBuf;

use buckshot::{Error, Pool};

fn pid_of(_: u64) -> u32 {
    std::process::id()
}
buckshot::register!(pid_of);

/// The file whose existence makes this process's workers fail at start-up.
fn switch(parent: u32) -> PathBuf {
    std::env::temp_dir().join(format!("buckshot-break-workers-{parent}"))
}

// Runs before buckshot's worker hook, like a program's own static
// initialiser: in a worker of ours, while the switch is on, fail as the
// switch says (exit, or print to stdout, which is still the reply pipe).
#[ctor::ctor(unsafe)]
fn fail_in_workers() {
    let is_worker = std::env::var_os("__BUCKSHOT_WORKER").is_some();
    let switch = switch(std::os::unix::process::parent_id());
    let how = std::fs::read_to_string(&switch);
    if is_worker && how.is_ok() {
        // Counts the workers started while the switch is on.
        use std::io::Write;
        let mut started = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(started(&switch))
            .unwrap();
        writeln!(started, "{}", std::process::id()).unwrap();
    }
    match how.as_deref() {
        Ok("exit") if is_worker => {
            eprintln!("static initialiser failed");
            std::process::exit(7);
        }
        Ok("print") if is_worker => {
            use std::io::Write;
            let _ = std::io::stdout().write_all(b"hello from a static initialiser\n");
            let _ = std::io::stdout().flush();
        }
        _ => {}
    }
}

/// The file in which failing workers write their pids.
fn started(switch: &std::path::Path) -> PathBuf {
    switch.with_extension("started")
}

/// Turns the switch on for as long as it lives, even if the test panics.
struct Switch(PathBuf);

impl Switch {
    fn on(how: &str) -> Switch {
        let path = switch(std::process::id());
        let _ = std::fs::remove_file(started(&path));
        std::fs::write(&path, how).unwrap();
        Switch(path)
    }

    /// How many workers were started while it was on.
    fn workers_started(&self) -> usize {
        std::fs::read_to_string(started(&self.0))
            .unwrap_or_default()
            .lines()
            .count()
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_file(started(&self.0));
    }
}

/// Maps on a pool whose workers all fail as `how` says, and checks that
/// the pool gives up with `reason`.
fn gives_up(how: &str, reason: &str) {
    let switch = Switch::on(how);
    let pool = std::sync::Arc::new(
        Pool::builder()
            .processes(4)
            .forward_stderr(false)
            .build()
            .unwrap(),
    );
    // The pool may give up before or after the map starts: either the map
    // is refused, or each of its inputs fails with the reason.
    let first = common::within("the first map", {
        let pool = std::sync::Arc::clone(&pool);
        move || {
            pool.map(pid_of, 0..3)
                .map(|results| results.collect::<Vec<_>>())
        }
    });
    match first {
        Ok(results) => {
            assert_eq!(results.len(), 3);
            for (index, result) in results.iter().enumerate() {
                match result {
                    Err(Error::PoolClosed {
                        index: i,
                        reason: Some(r),
                        ..
                    }) => assert_eq!((*i, r.as_str()), (index, reason)),
                    other => panic!("input {index}: {other:?}"),
                }
            }
        }
        Err(error) => assert_eq!(
            error.to_string(),
            format!("workers fail to start: {reason}")
        ),
    }
    let error = pool.map(pid_of, [0]).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("workers fail to start: {reason}")
    );
    drop(pool);
    // Four at first, then one replacement: no more start than could fail
    // before the limit.
    assert_eq!(switch.workers_started(), 5, "workers started");
    drop(switch);
    assert_eq!(common::children(), [], "workers remain");
}

#[test]
fn a_pool_whose_workers_cannot_start_says_so() {
    gives_up(
        "exit",
        "5 workers in a row died before their handshake; last: exit status: 7: static initialiser failed",
    );
    // "hell" read as a length prefix: 1819043176 bytes.
    gives_up(
        "print",
        "5 workers in a row died before their handshake; last: broke the protocol: \
         frame of 1819043176 bytes is over the limit of 1073741824",
    );
}
