//! A task that aborts its worker process fails only that input with
//! `Error::WorkerDied`; a fresh worker takes over and the other inputs succeed.
//!
//! Run with `cargo run --example crash_isolation`.

use buckshot::{Error, Pool};

/// Squares `x`, but takes the whole process down for 3, as a crashing C
/// library would.
fn square_or_abort(x: u64) -> u64 {
    if x == 3 {
        eprintln!("square_or_abort: aborting on input {x}");
        std::process::abort();
    }
    x * x
}
buckshot::register!(square_or_abort);

fn main() -> Result<(), Error> {
    let pool = Pool::new(2)?;
    for (x, result) in (1..=6).zip(pool.map(square_or_abort, 1..=6u64)?) {
        match result {
            Ok(square) => println!("{x}^2 = {square}"),
            Err(e @ Error::WorkerDied { .. }) if x == 3 => println!("{x}^2: {e}"),
            Err(e) => return Err(e), // any other failure is a bug
        }
    }
    Ok(())
}
