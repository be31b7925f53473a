//! One pool shared by several threads: 8 threads borrow the same `Pool`
//! and each runs its own map and call at the same time as the others.
//!
//! Run with `cargo run --release --example threads`.

use std::collections::BTreeSet;

use buckshot::{Error, Pool};

/// The sum of the squares of `lo..hi`, and the pid of the worker that ran it.
fn square_sum(lo: u64, hi: u64) -> (u64, u32) {
    ((lo..hi).map(|x| x * x).sum(), std::process::id())
}
buckshot::register!(square_sum);

/// One thread's work: a map over 100 ranges of its own, then one call.
fn thread_work(pool: &Pool, t: u64) -> Result<(u64, u64, BTreeSet<u32>), Error> {
    let ranges = (0..100).map(|i| (t * 100_000 + i * 1000, t * 100_000 + (i + 1) * 1000));
    let mut mapped = 0;
    let mut pids = BTreeSet::new();
    for result in pool.map(square_sum, ranges)? {
        let (sum, pid) = result?;
        mapped += sum;
        pids.insert(pid);
    }
    let (called, pid) = pool.call(square_sum, (1, t + 2))?;
    pids.insert(pid);
    Ok((mapped, called, pids))
}

fn main() -> Result<(), Error> {
    let pool = Pool::new(4)?;
    let outcomes = std::thread::scope(|s| {
        let pool = &pool; // each thread borrows the same pool
        let threads: Vec<_> = (0..8)
            .map(|t| s.spawn(move || thread_work(pool, t)))
            .collect();
        threads
            .into_iter()
            .map(|h| h.join().expect("no thread panics"))
            .collect::<Result<Vec<_>, Error>>()
    })?;
    let mut all_pids = BTreeSet::new();
    let mut all_equal = true;
    for (t, (mapped, called, pids)) in (0..8u64).zip(outcomes) {
        let serial = (
            square_sum(t * 100_000, (t + 1) * 100_000).0,
            square_sum(1, t + 2).0,
        );
        let equal = (mapped, called) == serial;
        all_equal &= equal;
        println!(
            "thread {t}: map sum = {mapped}, call = {called}, served by {} workers (serial: {})",
            pids.len(),
            if equal { "equal" } else { "DIFFERENT" }
        );
        all_pids.extend(pids);
    }
    println!(
        "all 8 threads equal to serial: {all_equal}; {} distinct worker pids served them (pool of {})",
        all_pids.len(),
        pool.processes()
    );
    Ok(())
}
