//! What an idle timeout costs: the time from `map` to its first result on a
//! warm pool, on one whose workers left idle, and on a new pool.
//! `cargo run --release --example idle_timeout`
use std::time::{Duration, Instant};

use buckshot::Pool;

fn square(x: u64) -> u64 {
    x * x
}
buckshot::register!(square);

/// Time to the first result of a map of 100 inputs.
fn first_result(pool: &Pool) -> Duration {
    let started = Instant::now();
    let first = pool.map(square, 0..100).unwrap().next();
    assert_eq!(first.unwrap().unwrap(), 0);
    started.elapsed()
}

fn main() -> Result<(), buckshot::Error> {
    let idle = Duration::from_millis(100);
    let pool = Pool::builder().processes(4).idle_timeout(idle).build()?;
    let (mut warm, mut cold, mut fresh) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..21 {
        first_result(&pool); // the workers are there...
        warm.push(first_result(&pool)); // ...and ready.
        std::thread::sleep(3 * idle); // they leave
        cold.push(first_result(&pool));
        let started = Instant::now();
        let new = Pool::builder().processes(4).build()?;
        fresh.push(started.elapsed() + first_result(&new));
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (warm, cold, fresh) = (median(warm), median(cold), median(fresh));
    println!("first result, warm pool:             {warm:?}");
    println!(
        "first result, workers left idle:     {cold:?} ({:.0}x warm)",
        cold.as_secs_f64() / warm.as_secs_f64()
    );
    println!(
        "first result, new pool (build + map): {fresh:?} ({:.2}x idle)",
        fresh.as_secs_f64() / cold.as_secs_f64()
    );
    Ok(())
}
