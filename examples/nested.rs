//! Nested pools: a task may build a pool of its own. Here the primes below
//! 1,000,000 are counted in 4 blocks on an outer pool; each block's task
//! builds an inner pool of 2 workers and splits its block among them.
//!
//! Run with `cargo run --release --example nested`.

use buckshot::{Error, Pool};

const LIMIT: u64 = 1_000_000;

/// The number of primes in `lo..hi`, by trial division, and the pid of the
/// process whose pool ran it (the inner worker's parent).
fn count_primes(lo: u64, hi: u64) -> (usize, u32) {
    let is_prime = |n: u64| n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0);
    let count = (lo..hi).filter(|&n| is_prime(n)).count();
    (count, std::os::unix::process::parent_id())
}
buckshot::register!(count_primes);

/// An outer task: counts the primes in `lo..hi` on an inner pool of its own,
/// in 8 pieces, and says whether that pool's workers were its children.
/// `Error` is not `Serialize`, so a failure here panics, and the outer map
/// reports it as `Error::TaskPanicked` with this message.
fn count_block(lo: u64, hi: u64) -> (usize, bool) {
    let inner = Pool::new(2).expect("an inner pool");
    let pieces = (0..8).map(|k| (lo + k * (hi - lo) / 8, lo + (k + 1) * (hi - lo) / 8));
    let mut total = 0;
    let mut children = true;
    for result in inner.map(count_primes, pieces).expect("an inner map") {
        let (count, parent) = result.expect("an inner task");
        total += count;
        children &= parent == std::process::id();
    }
    (total, children)
}
buckshot::register!(count_block);

fn main() -> Result<(), Error> {
    let outer = Pool::new(2)?;
    let blocks: Vec<(u64, u64)> = (0..4)
        .map(|i| (i * LIMIT / 4, (i + 1) * LIMIT / 4))
        .collect();
    let mut nested = 0;
    for ((lo, hi), result) in blocks.iter().zip(outer.map(count_block, blocks.clone())?) {
        let (count, children) = result?;
        println!(
            "block {lo}..{hi}: {count} primes (its inner workers were its outer worker's children: {children})"
        );
        nested += count;
    }
    let (serial, _) = count_primes(0, LIMIT);
    let verdict = if nested == serial {
        "equal"
    } else {
        "DIFFERENT"
    };
    println!(
        "nested: 4 outer tasks x 2 inner workers; primes below {LIMIT} = {nested} (serial: {serial}, {verdict})"
    );
    Ok(())
}
