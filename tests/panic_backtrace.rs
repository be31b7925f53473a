//! A panic's backtrace travels with its error only when the pool's process
//! runs with `RUST_BACKTRACE` set: symbolising costs a worker tens of
//! milliseconds per panic. This test re-runs itself as a program, with and
//! without the variable.

use std::process::Command;
use std::time::Duration;

use buckshot::{Error, Pool};

/// Set in the copies: they build a pool and print what a panic reported.
const ROLE_ENV: &str = "BUCKSHOT_TEST_PANIC_REPORT";

#[inline(never)]
fn fails_deep_inside(x: u64) -> u64 {
    if x == 1 {
        panic!("one is not allowed");
    }
    x
}
buckshot::register!(fails_deep_inside);

fn report() {
    let pool = Pool::new(1).unwrap();
    match pool.call(fails_deep_inside, 1) {
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

/// What a copy of this program printed, run with `backtrace` as
/// `RUST_BACKTRACE` (unset if `None`).
fn run_copy(backtrace: Option<&str>) -> String {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.env(ROLE_ENV, "1").env_remove("RUST_BACKTRACE");
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
    let text = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("copy {pid} did not finish within 60 s"));
    assert!(child.wait().unwrap().success());
    text
}

fn main() {
    if std::env::var_os(ROLE_ENV).is_some() {
        return report();
    }
    let location = "location: tests/panic_backtrace.rs:17:9";
    let without = run_copy(None);
    assert_eq!(without, format!("{location}\nbacktrace: none\n"));
    let off = run_copy(Some("0"));
    assert_eq!(off, format!("{location}\nbacktrace: none\n"));
    let with = run_copy(Some("1"));
    assert!(
        with.starts_with(&format!("{location}\nbacktrace: ")),
        "{with}"
    );
    assert!(with.ends_with(" lines, names the task: true\n"), "{with}");
    println!("panic_backtrace: ok");
}
