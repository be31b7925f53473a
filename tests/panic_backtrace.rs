//! What `RUST_BACKTRACE` changes. A panic's backtrace travels with its
//! error only when the pool's process runs with the variable set:
//! symbolising costs a worker tens of milliseconds per panic (hundreds
//! for the first one in a fresh worker), which must not count against the
//! task's timeout. And an allocation failure's backtrace, several KiB long,
//! must not hide the line that says what failed. This test re-runs itself
//! as a program, with and without the variable.

use std::process::Command;
use std::time::Duration;

use buckshot::{Error, Limit, Pool};

/// Set in the copies: which scenario they run and print the outcome of.
const ROLE_ENV: &str = "BUCKSHOT_TEST_PANIC_REPORT";

#[inline(never)]
fn fails_deep_inside(x: u64) -> u64 {
    if x == 1 {
        panic!("one is not allowed");
    }
    x
}
buckshot::register!(fails_deep_inside);

/// Allocates `bytes` under `depth` frames of its own: an allocation
/// failure's backtrace runs to several KiB.
#[inline(never)]
fn allocate_deep((depth, bytes): (u32, usize)) -> usize {
    if depth == 0 {
        let block = vec![1u8; bytes];
        return std::hint::black_box(&block).len();
    }
    // Used after the call, so that the frame stays.
    let mark = std::hint::black_box(depth);
    allocate_deep((depth - 1, bytes)) + std::hint::black_box(mark) as usize - depth as usize
}
buckshot::register!(allocate_deep);

/// Takes all the memory it can under its worker's limit and keeps it (a
/// leak: unwinding frees nothing) but `room` bytes, then panics: with no
/// room, too little is left to capture a backtrace; with a few MiB, enough
/// to capture one but not to symbolise it (the symboliser then deadlocks
/// in Rust's allocation failure handler).
fn panic_out_of_memory(room: u64) -> u64 {
    let mut hoard: Vec<Vec<u8>> = Vec::with_capacity(1 << 16);
    for size in [1 << 20, 64 << 10, 4 << 10] {
        while hoard.len() < hoard.capacity() {
            let mut block = Vec::new();
            if block.try_reserve_exact(size).is_err() {
                break;
            }
            hoard.push(block);
        }
    }
    // The first blocks are the large ones.
    let freed = (room as usize).div_ceil(1 << 20).min(hoard.len());
    hoard.drain(..freed);
    std::mem::forget(hoard);
    panic!("out of memory");
}
buckshot::register!(panic_out_of_memory);

/// Prints where the panic was reported and what its backtrace says.
fn print_panic(result: Result<u64, Error>) {
    match result {
        Err(Error::TaskPanicked {
            location,
            backtrace,
            ..
        }) => {
            println!(
                "location: {}",
                location.map_or("none".into(), |l| l.to_string())
            );
            match backtrace {
                None => println!("backtrace: none"),
                Some(text) => println!(
                    "backtrace: {} lines, names the task: {}",
                    text.lines().count(),
                    text.contains("fails_deep_inside")
                ),
            }
        }
        other => println!("unexpected: {other:?}"),
    }
}

/// A panic in a worker that has already served.
fn panic_report() {
    let pool = Pool::new(1).unwrap();
    print_panic(pool.call(fails_deep_inside, 1));
}

/// A panic in a fresh worker, under a short timeout: symbolising its
/// backtrace alone takes longer.
fn timeout_report() {
    let pool = Pool::builder()
        .processes(1)
        .timeout(Duration::from_millis(250))
        .build()
        .unwrap();
    print_panic(pool.call(fails_deep_inside, 1));
}

/// A panic whose backtrace cannot be made, in a pool with no timeout, with
/// `room` bytes left under the memory limit.
fn hung_report(room: u64) {
    let pool = Pool::builder()
        .processes(1)
        .memory_limit(64 << 20)
        .forward_stderr(false)
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    match pool.call(panic_out_of_memory, room) {
        Err(Error::TaskPanicked {
            message,
            location,
            backtrace,
            ..
        }) => println!(
            "{message} at {}, backtrace: {}",
            location.map_or("none".into(), |l| l.to_string()),
            backtrace.is_some()
        ),
        // Too little was left even to announce the panic (a few bytes):
        // the worker died of its limit, which is said instead.
        Err(Error::WorkerDied {
            limit: Some(Limit::Memory(bytes)),
            ..
        }) => println!("died at its memory limit of {bytes} bytes"),
        other => println!("unexpected: {other:?}"),
    }
    println!(
        "within 30 s: {}",
        started.elapsed() < Duration::from_secs(30)
    );
    // The pool goes on with a fresh worker.
    println!("then: {:?}", pool.call(fails_deep_inside, 2));
}

/// An allocation past the memory limit, deep in a stack.
fn memory_report() {
    let pool = Pool::builder()
        .processes(1)
        .memory_limit(512 << 20)
        .forward_stderr(false)
        .build()
        .unwrap();
    match pool.call(allocate_deep, (300, 2 << 30)) {
        Err(error @ Error::WorkerDied { .. }) => {
            println!("{error}");
            let Error::WorkerDied { stderr, .. } = &error else {
                unreachable!()
            };
            println!("first line: {}", stderr.lines().next().unwrap_or_default());
            println!(
                "cut: {}, under 9000 bytes: {}",
                stderr.contains(" left out]\n"),
                stderr.len() < 9000
            );
        }
        other => println!("unexpected: {other:?}"),
    }
}

/// What a copy of this program printed, run as `role` with `backtrace` as
/// `RUST_BACKTRACE` (unset if `None`).
fn run_copy(role: &str, backtrace: Option<&str>) -> String {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.env(ROLE_ENV, role).env_remove("RUST_BACKTRACE");
    if let Some(value) = backtrace {
        command.env("RUST_BACKTRACE", value);
    }
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).unwrap();
        let _ = tx.send(text);
    });
    let Ok(text) = rx.recv_timeout(Duration::from_secs(60)) else {
        // Its workers follow it (they watch their parent).
        let _ = child.kill();
        let _ = child.wait();
        panic!("copy {pid} did not finish within 60 s");
    };
    assert!(child.wait().unwrap().success());
    text
}

fn backtraces_travel_only_when_asked_for() {
    let location = "location: tests/panic_backtrace.rs:20:9";
    let without = run_copy("panic", None);
    assert_eq!(without, format!("{location}\nbacktrace: none\n"));
    let off = run_copy("panic", Some("0"));
    assert_eq!(off, format!("{location}\nbacktrace: none\n"));
    let with = run_copy("panic", Some("1"));
    assert!(
        with.starts_with(&format!("{location}\nbacktrace: ")),
        "{with}"
    );
    assert!(with.ends_with(" lines, names the task: true\n"), "{with}");
    println!("test backtraces_travel_only_when_asked_for ... ok");
}

fn a_panic_is_not_a_timeout_while_its_backtrace_is_made() {
    // The first backtrace of a fresh worker takes 100-500 ms to symbolise.
    let with = run_copy("timeout", Some("1"));
    assert!(
        with.starts_with("location: tests/panic_backtrace.rs:20:9\nbacktrace: "),
        "{with}"
    );
    assert!(with.ends_with(" lines, names the task: true\n"), "{with}");
    println!("test a_panic_is_not_a_timeout_while_its_backtrace_is_made ... ok");
}

fn a_backtrace_that_cannot_be_made_hangs_nothing() {
    let with = run_copy("hung", Some("1"));
    // Mostly the panic, without its backtrace; rarely the worker cannot
    // even announce it (measured once in 6 runs on a loaded machine).
    let (outcome, rest) = with.split_once('\n').unwrap_or((&with, ""));
    assert!(
        outcome == "out of memory at tests/panic_backtrace.rs:60:5, backtrace: false"
            || outcome == "died at its memory limit of 67108864 bytes",
        "{with}"
    );
    assert_eq!(rest, "within 30 s: true\nthen: Ok(2)\n", "{with}");
    // Room to capture the backtrace, not to symbolise it: the worker
    // announced the panic, and is replaced at the bound on symbolising.
    let with = run_copy("hung-symbolising", Some("1"));
    assert_eq!(
        with,
        "out of memory at tests/panic_backtrace.rs:60:5, backtrace: false\n\
         within 30 s: true\n\
         then: Ok(2)\n"
    );
    println!("test a_backtrace_that_cannot_be_made_hangs_nothing ... ok");
}

fn a_death_at_the_memory_limit_names_it_and_what_failed_first() {
    let with = run_copy("memory", Some("1"));
    assert_eq!(
        with,
        "input 0: worker died (signal: 6 (SIGABRT), past its memory limit of 512.0 MiB): \
         memory allocation of 2147483648 bytes failed\n\
         first line: memory allocation of 2147483648 bytes failed\n\
         cut: true, under 9000 bytes: true\n"
    );
    println!("test a_death_at_the_memory_limit_names_it_and_what_failed_first ... ok");
}

fn main() {
    match std::env::var(ROLE_ENV).as_deref() {
        Ok("panic") => return panic_report(),
        Ok("memory") => return memory_report(),
        Ok("timeout") => return timeout_report(),
        Ok("hung") => return hung_report(0),
        Ok("hung-symbolising") => return hung_report(8 << 20),
        Ok(other) => panic!("unknown role {other}"),
        Err(_) => {}
    }
    backtraces_travel_only_when_asked_for();
    a_panic_is_not_a_timeout_while_its_backtrace_is_made();
    a_backtrace_that_cannot_be_made_hangs_nothing();
    a_death_at_the_memory_limit_names_it_and_what_failed_first();
    println!();
    println!("test result: ok. 4 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}
