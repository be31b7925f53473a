//! Chaos: a long map while another thread SIGKILLs a random worker every few
//! milliseconds. Every input still yields exactly one result, the map ends,
//! and nothing is left behind. One test in this binary, so that every child
//! of this process is a worker of the pool under test.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use buckshot::{Error, Pool};

fn triple(x: u64) -> u64 {
    x * 3
}
buckshot::register!(triple);

#[test]
fn random_kills_lose_no_input() {
    const INPUTS: u64 = 100_000;
    let fds_before = common::open_fds();
    assert_eq!(common::children(), [], "children before the pool");
    let pool = Arc::new(Pool::new(2).unwrap());

    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicUsize::new(0));
    let killer = {
        let (stop, kills) = (Arc::clone(&stop), Arc::clone(&kills));
        std::thread::spawn(move || {
            let mut seed = 0x2545_f491_4f6c_dd1d_u64;
            while !stop.load(Ordering::Relaxed) {
                let workers: Vec<u32> = common::children()
                    .into_iter()
                    .filter(|&(_, state)| state != 'Z')
                    .map(|(pid, _)| pid)
                    .collect();
                if !workers.is_empty() {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let victim = workers[(seed % workers.len() as u64) as usize];
                    // SAFETY: kill has no memory-safety preconditions.
                    if unsafe { libc::kill(victim as i32, libc::SIGKILL) } == 0 {
                        kills.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // Pacing of the chaos, not a synchronisation.
                std::thread::sleep(Duration::from_millis(3));
            }
        })
    };

    let started = Instant::now();
    let results: Vec<Result<u64, Error>> = common::within("the chaos map", {
        let pool = Arc::clone(&pool);
        move || pool.map(triple, 0..INPUTS).unwrap().collect()
    });
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    killer.join().unwrap();

    assert_eq!(results.len(), INPUTS as usize);
    let mut died = 0;
    for (index, result) in results.iter().enumerate() {
        match result {
            Ok(value) => assert_eq!(*value, index as u64 * 3, "input {index}"),
            Err(Error::WorkerDied { index: i, .. }) => {
                assert_eq!(*i, index);
                died += 1;
            }
            Err(other) => panic!("input {index}: {other}"),
        }
    }
    let kills = kills.load(Ordering::Relaxed);
    eprintln!("{INPUTS} inputs in {elapsed:?}, {kills} kills, {died} inputs reported WorkerDied");
    assert!(kills > 0, "the map ended before any kill");

    drop(pool);
    assert_eq!(common::children(), [], "children after the pool");
    assert_eq!(common::open_fds(), fds_before, "file descriptors leaked");
}
