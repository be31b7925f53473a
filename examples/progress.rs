//! A progress bar over a map. The results of a map know their length when
//! the inputs do, so `indicatif`'s `.progress()` shows a real bar with no
//! extra code (drawn on a terminal; hidden when stderr is not one).
//!
//! Run with `cargo run --example progress`.

use std::time::Duration;

use buckshot::{Error, Pool};
use indicatif::ProgressIterator;

/// A task that takes a while.
fn slow_square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(20));
    x * x
}
buckshot::register!(slow_square);

fn main() -> Result<(), Error> {
    let pool = Pool::new(4)?;
    let inputs: Vec<u64> = (1..=200).collect();
    let squares = pool
        .map(slow_square, inputs)?
        .progress()
        .collect::<Result<Vec<u64>, Error>>()?;
    let sum: u64 = squares.iter().sum();
    println!(
        "{} squares, summing to {sum} (200*201*401/6 = 2686700)",
        squares.len()
    );
    Ok(())
}
