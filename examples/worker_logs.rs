//! Logs from workers: `tracing` events that tasks emit in worker processes
//! reach this program's subscriber, at their level and with their fields,
//! plus `input` (the index of the input) and `worker` (the worker's pid).
//! The subscriber's filter applies: here `info` for everything, and the
//! `debug` events of the task's module too. `log` records are forwarded the
//! same way. The pool's own life-cycle (spawn, death, respawn) is logged at
//! debug under the `buckshot` target: try `RUST_LOG=info,buckshot=debug`.
//!
//! Run with `cargo run --example worker_logs`.

use buckshot::{Error, Pool};
use tracing_subscriber::EnvFilter;

/// Checks one line of a CSV file; logs what it finds.
fn check_line(line: String) -> usize {
    let fields = line.split(',').count();
    tracing::debug!(fields, "split the line");
    if fields != 3 {
        tracing::warn!(fields, expected = 3, line = %line, "a malformed line");
    }
    if line.starts_with('#') {
        tracing_log::log::info!("a comment line, through the log crate");
    }
    fields
}
buckshot::register!(check_line);

fn main() -> Result<(), Error> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,worker_logs=debug"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();

    let lines = ["a,b,c", "d,e", "# comment,x,y", "f,g,h,i"].map(String::from);
    let pool = Pool::new(2)?;
    let counts: Vec<usize> = pool.map(check_line, lines)?.collect::<Result<_, _>>()?;
    println!("fields per line: {counts:?}");
    assert_eq!(counts, [3, 2, 3, 4]);
    Ok(())
}
