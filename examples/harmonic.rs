//! Exact harmonic sums H(1..=99) as fractions, computed on a pool of 4
//! worker processes, then timed against the same work done serially.
//!
//! Those 99 sums take a few milliseconds: the map beats serial code, but
//! starting the workers takes about as long as the sums. A larger run
//! follows, where that no longer matters: H(10), H(20), ..., H(1200)
//! exactly, about 1-2 s of work, once serially and once on a pool of one
//! process per core, in this same process. Each is timed once, so expect
//! some noise.
//!
//! Each run prints the map's speed-up against serial first, then, on a
//! line of its own, what starting the workers cost: a pool pays that once,
//! and serves any number of maps after it.
//!
//! Run with `cargo run --release --example harmonic`.

use std::time::{Duration, Instant};

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
    let inputs: Vec<u64> = (1..100).collect();
    let (parallel, timing) = timed_run(Pool::builder().processes(4), &inputs)?;
    for (x, (numer, denom)) in inputs.iter().zip(&parallel) {
        let sum = BigRational::new(numer.parse().unwrap(), denom.parse().unwrap());
        println!("H({x}) = {sum}");
    }
    println!();
    timing.print();

    println!();
    let inputs: Vec<u64> = (10..=1200).step_by(10).collect();
    println!(
        "larger run: exact H(10), H(20), ..., H(1200), {} sums",
        inputs.len()
    );
    let (parallel, timing) = timed_run(Pool::builder(), &inputs)?;
    let (numer, denom) = parallel.last().expect("at least one sum");
    println!(
        "H(1200) = a fraction of {} / {} digits, equal to the serial one",
        numer.len(),
        denom.len()
    );
    timing.print();
    Ok(())
}

/// How long the sums took serially and on a pool, and the pool's start-up.
struct Timing {
    processes: usize,
    serial: Duration,
    map: Duration,
    startup: Duration,
}

impl Timing {
    fn print(&self) {
        let Timing {
            processes,
            serial,
            map,
            startup,
        } = *self;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let best = processes.min(cores);
        println!(
            "speed-up: {:.2}x, the map on {processes} processes against serial ({map:.2?} against {serial:.2?}; at most {best}x here)",
            serial.as_secs_f64() / map.as_secs_f64()
        );
        println!(
            "start-up: {startup:.2?} before that, to start the workers and get a first result (once per pool)"
        );
    }
}

/// The sums serially, then on a pool built from `builder`, in input order:
/// checks that both agree and times each. The pool's start-up (building it
/// and getting a first result back) is timed on its own.
fn timed_run(
    builder: buckshot::PoolBuilder,
    inputs: &[u64],
) -> Result<(Vec<(String, String)>, Timing), Error> {
    let start = Instant::now();
    let serial: Vec<_> = inputs.iter().copied().map(harmonic_sum).collect();
    let serial_time = start.elapsed();

    let start = Instant::now();
    let pool = builder.build()?;
    pool.call(harmonic_sum, 1)?;
    let startup = start.elapsed();

    let start = Instant::now();
    let parallel = pool
        .map(harmonic_sum, inputs.iter().copied())?
        .collect::<Result<Vec<_>, _>>()?;
    let map = start.elapsed();

    assert_eq!(parallel, serial, "pool results differ from serial results");
    let timing = Timing {
        processes: pool.processes(),
        serial: serial_time,
        map,
        startup,
    };
    Ok((parallel, timing))
}
