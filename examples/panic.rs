//! A task that panics yields `Error::TaskPanicked` with the panic message for
//! that input; the worker survives and the other inputs succeed.
//!
//! Run with `cargo run --example panic`.

use buckshot::{Error, Pool};

/// Integer division of 100 by `x`; panics for 0.
fn hundred_over(x: u64) -> u64 {
    100 / x
}
buckshot::register!(hundred_over);

fn main() -> Result<(), Error> {
    let pool = Pool::new(2)?;
    let inputs = [1, 2, 0, 4, 5];
    for (x, result) in inputs.into_iter().zip(pool.map(hundred_over, inputs)?) {
        match result {
            Ok(q) => println!("100 / {x} = {q}"),
            Err(Error::TaskPanicked { index, message, .. }) if x == 0 => {
                println!("100 / {x}: input {index} panicked: {message}")
            }
            Err(e) => return Err(e), // any other failure is a bug
        }
    }
    Ok(())
}
