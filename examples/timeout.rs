//! A task that runs past the pool's timeout yields `Error::TaskTimeout` for
//! that input; its worker is killed and replaced, and the other inputs succeed.
//!
//! Run with `cargo run --example timeout`.

use std::time::Duration;

use buckshot::{Error, Pool};

/// Sleeps for `ms` milliseconds and returns it.
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}
buckshot::register!(nap);

fn main() -> Result<(), Error> {
    let pool = Pool::builder()
        .processes(2)
        .timeout(Duration::from_millis(500))
        .build()?;
    let inputs = [10, 20, 5_000, 30, 40];
    for (ms, result) in inputs.into_iter().zip(pool.map(nap, inputs)?) {
        match result {
            Ok(slept) => println!("nap({ms}): slept {slept} ms"),
            Err(Error::TaskTimeout { index, timeout, .. }) if ms > 500 => {
                println!("nap({ms}): input {index} timed out after {timeout:?}")
            }
            Err(e) => return Err(e), // any other failure is a bug
        }
    }
    Ok(())
}
