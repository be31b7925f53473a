//! One pool, workers in several places: this machine, hosts reached with
//! `ssh`, and Slurm job steps. Every worker takes inputs of the same map;
//! results come back in input order whichever worker ran them.
//!
//! Run with `cargo run --release --example cluster`. On its own it mixes
//! local workers with workers started through a command prefix (`nice`).
//! On a real cluster:
//!
//! - `BUCKSHOT_SSH=me@node1,me@node2` adds 2 workers on each host, over
//!   ssh (key-based login, host keys known: `ssh me@node1 true` must work
//!   without a prompt). The binary is shipped to `~/.cache/buckshot/` on
//!   each host once; the hosts must run the same architecture and libc.
//! - Inside a Slurm allocation (`salloc -N2 cargo run --release --example
//!   cluster`), 4 workers run as job steps. The nodes must see this binary
//!   at the same path (a shared file system, or `sbcast`).

use std::collections::BTreeMap;

use buckshot::{Error, Launcher, Pool};

/// Where it ran, and a sum of `n` terms.
fn where_and_sum(n: u64) -> (String, f64) {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let place = match std::env::var("SLURM_JOB_ID") {
        Ok(job) => format!("{} (Slurm job {job})", host.trim()),
        Err(_) => format!("{} (pid {})", host.trim(), std::process::id()),
    };
    (place, (1..=n).map(|d| 1.0 / d as f64).sum())
}
buckshot::register!(where_and_sum);

fn main() -> Result<(), Error> {
    let mut builder = Pool::builder()
        .workers(Launcher::local(), 2)
        .workers(Launcher::command(["nice", "-n", "5"]), 1);
    if let Ok(hosts) = std::env::var("BUCKSHOT_SSH") {
        for host in hosts.split(',').filter(|h| !h.is_empty()) {
            builder = builder.workers(Launcher::ssh(host), 2);
        }
    }
    if std::env::var_os("SLURM_JOB_ID").is_some() {
        builder = builder.workers(Launcher::srun(), 4);
    }
    let pool = builder.build()?;
    println!("a pool of {} workers", pool.processes());

    let inputs: Vec<u64> = (1..=3000).map(|i| 1000 + i * 10).collect();
    let results = pool
        .map(where_and_sum, inputs.clone())?
        .collect::<Result<Vec<_>, _>>()?;
    let mut served: BTreeMap<String, usize> = BTreeMap::new();
    for (place, _) in &results {
        *served.entry(place.clone()).or_default() += 1;
    }
    for (place, count) in &served {
        println!("{count:>5} inputs ran on {place}");
    }
    // In input order, equal to the serial sums.
    let exact = inputs
        .iter()
        .zip(&results)
        .all(|(&n, (_, sum))| (1..=n).map(|d| 1.0 / d as f64).sum::<f64>() == *sum);
    println!("3000 results in input order, equal to serial: {exact}");
    assert!(exact);
    Ok(())
}
