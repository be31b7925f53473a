//! Tasks of several arguments: their inputs are tuples of the arguments.
//!
//! Run with `cargo run --example multi_arg`.

use buckshot::{Error, Pool};

fn scale(x: f64, by: f64) -> f64 {
    x * by
}
buckshot::register!(scale);

fn label(name: String, count: u32, unit: String) -> String {
    format!("{count} {unit} of {name}")
}
buckshot::register!(label);

fn main() -> Result<(), Error> {
    let pool = Pool::new(2)?;
    let scaled = pool
        .map(scale, [(1.0, 2.0), (3.0, 4.0), (2.5, -2.0)])?
        .collect::<Result<Vec<f64>, Error>>()?;
    println!("scaled: {scaled:?} (expected [2.0, 12.0, -5.0])");
    let one = pool.call(label, ("flour".into(), 3, "cups".into()))?;
    println!("{one} (expected 3 cups of flour)");
    Ok(())
}
