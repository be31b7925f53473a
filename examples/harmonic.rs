//! Exact harmonic sums H(1..=99) as fractions, computed on a pool of 4
//! worker processes, then timed against the same work done serially.
//!
//! Those 99 sums take a few milliseconds, too little for a pool to pay off.
//! A larger run follows, where it does: H(10), H(20), ..., H(1200) exactly,
//! about 1-2 s of work, once serially and once on a pool of one process per
//! core, in this same process. Each is timed once, so expect some noise.
//!
//! Run with `cargo run --release --example harmonic`.

use std::time::Instant;

use buckshot::{Error, Pool};
use num_rational::BigRational;

/// H(x) = 1/1 + 1/2 + ... + 1/x, exactly. `BigRational` is not `Serialize`,
/// so the task returns the reduced numerator and denominator as decimal strings.
fn harmonic_sum(x: u64) -> (String, String) {
    let sum: BigRational = (1..=x).map(|d| BigRational::new(1.into(), d.into())).sum();
    (sum.numer().to_string(), sum.denom().to_string())
}
buckshot::register!(harmonic_sum);

fn main() -> Result<(), Error> {
    let inputs = 1..100u64;

    let start = Instant::now();
    let pool = Pool::new(4)?;
    let started = start.elapsed();
    let parallel = pool
        .map(harmonic_sum, inputs.clone())?
        .collect::<Result<Vec<_>, _>>()?;
    let pool_time = start.elapsed();

    let start = Instant::now();
    let serial: Vec<_> = inputs.clone().map(harmonic_sum).collect();
    let serial_time = start.elapsed();

    assert_eq!(parallel, serial, "pool results differ from serial results");

    for (x, (numer, denom)) in inputs.zip(&parallel) {
        let sum = BigRational::new(numer.parse().unwrap(), denom.parse().unwrap());
        println!("H({x}) = {sum}");
    }
    println!();
    println!("pool of 4:  {pool_time:>10.2?}  (of which {started:.2?} starting the workers)");
    println!("serial:     {serial_time:>10.2?}");
    println!(
        "speed-up:   {:>9.2}x",
        serial_time.as_secs_f64() / pool_time.as_secs_f64()
    );
    drop(pool);

    larger_run()
}

/// The same task on bigger inputs, timed once serially and once on a pool
/// of the default size (one process per core), start-up included. The
/// inputs come in rising order, as above.
fn larger_run() -> Result<(), Error> {
    let inputs: Vec<u64> = (10..=1200).step_by(10).collect();
    println!();
    println!(
        "larger run: exact H(10), H(20), ..., H(1200), {} sums",
        inputs.len()
    );

    let start = Instant::now();
    let serial: Vec<_> = inputs.iter().copied().map(harmonic_sum).collect();
    let serial_time = start.elapsed();

    let start = Instant::now();
    let pool = Pool::builder().build()?;
    let parallel = pool
        .map(harmonic_sum, inputs)?
        .collect::<Result<Vec<_>, _>>()?;
    let pool_time = start.elapsed();

    assert_eq!(parallel, serial, "pool results differ from serial results");
    let (numer, denom) = parallel.last().expect("at least one sum");
    println!(
        "H(1200) = a fraction of {} / {} digits, equal to the serial one",
        numer.len(),
        denom.len()
    );
    let processes = pool.processes();
    println!("serial:     {serial_time:>10.2?}  (one run)");
    println!("pool of {processes}:  {pool_time:>10.2?}  (one run, starting the workers included)");
    println!(
        "speed-up:   {:>9.2}x  (at most {processes}x with {processes} processes)",
        serial_time.as_secs_f64() / pool_time.as_secs_f64()
    );
    Ok(())
}
