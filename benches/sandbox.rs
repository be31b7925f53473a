//! What each sandbox rule costs: start-up (build a pool, get a first
//! result) and throughput (10,000 tiny inputs), each as a ratio to a pool
//! without a sandbox measured in the same run. Configurations take turns
//! round after round, and medians are compared, because the machine is
//! shared and noisy.
//!
//! `cargo bench --bench sandbox`.

use std::time::{Duration, Instant};

use buckshot::{Pool, Sandbox};

const PROCESSES: usize = 2;
const INPUTS: u64 = 10_000;
const ROUNDS: usize = 25;

fn double(x: u64) -> u64 {
    x * 2
}
buckshot::register!(double);

fn configurations() -> Vec<(&'static str, Option<Sandbox>)> {
    let all = Sandbox::new()
        .no_network()
        .read_only(std::env::temp_dir())
        .cpu_time(Duration::from_secs(60))
        .no_subprocesses();
    vec![
        ("none", None),
        ("no_network", Some(Sandbox::new().no_network())),
        (
            "files",
            Some(Sandbox::new().read_only(std::env::temp_dir())),
        ),
        (
            "cpu_time",
            Some(Sandbox::new().cpu_time(Duration::from_secs(60))),
        ),
        ("no_subprocesses", Some(Sandbox::new().no_subprocesses())),
        ("all four", Some(all)),
    ]
}

fn build(sandbox: &Option<Sandbox>) -> Pool {
    let builder = Pool::builder().processes(PROCESSES);
    let builder = match sandbox {
        Some(sandbox) => builder.sandbox(sandbox.clone()),
        None => builder,
    };
    builder.build().expect("the sandbox comes up here")
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let configurations = configurations();
    let mut startup = vec![Vec::new(); configurations.len()];
    let mut throughput = vec![Vec::new(); configurations.len()];
    let pools: Vec<Pool> = configurations.iter().map(|(_, s)| build(s)).collect();
    for _ in 0..ROUNDS {
        for (k, (_, sandbox)) in configurations.iter().enumerate() {
            let start = Instant::now();
            let pool = build(sandbox);
            assert_eq!(pool.call(double, 21).unwrap(), 42);
            startup[k].push(start.elapsed());
            drop(pool);

            let start = Instant::now();
            let sum: u64 = pools[k]
                .map(double, 0..INPUTS)
                .unwrap()
                .map(Result::unwrap)
                .sum();
            throughput[k].push(start.elapsed());
            assert_eq!(sum, INPUTS * (INPUTS - 1));
        }
    }
    let (startup_base, throughput_base) =
        (median(startup[0].clone()), median(throughput[0].clone()));
    println!(
        "{:<16} {:>12} {:>8} {:>14} {:>8}",
        "sandbox", "start-up", "ratio", "inputs/s", "ratio"
    );
    for (k, (name, _)) in configurations.iter().enumerate() {
        let (up, run) = (median(startup[k].clone()), median(throughput[k].clone()));
        println!(
            "{:<16} {:>10.2}ms {:>8.2} {:>14.0} {:>8.3}",
            name,
            up.as_secs_f64() * 1e3,
            up.as_secs_f64() / startup_base.as_secs_f64(),
            INPUTS as f64 / run.as_secs_f64(),
            throughput_base.as_secs_f64() / run.as_secs_f64(),
        );
    }
    println!("medians of {ROUNDS} rounds, {PROCESSES} workers, {INPUTS} inputs per map");
}
