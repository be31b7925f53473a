//! The async calls on a single-threaded tokio runtime: while a map runs in
//! workers as a `Stream`, a ticker on the same thread keeps ticking, so the
//! thread was never blocked. Then `call_async`, and a call cancelled by
//! `tokio::time::timeout`: its worker is killed and the pool goes on.
//!
//! Run with `cargo run --release --example async_tokio`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use buckshot::{Error, Pool};
use futures::StreamExt;

/// A slow task: sleeps `ms` milliseconds, then returns `ms`.
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}
buckshot::register!(nap);

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let pool = Pool::new(2)?;

    // A ticker on this same thread, every 10 ms.
    let ticks = Arc::new(AtomicU64::new(0));
    let ticker = tokio::spawn({
        let ticks = ticks.clone();
        async move {
            let mut interval = tokio::time::interval(Duration::from_millis(10));
            loop {
                interval.tick().await;
                ticks.fetch_add(1, Ordering::Relaxed);
            }
        }
    });

    // 20 naps of 50 ms on 2 workers: about 500 ms.
    let start = Instant::now();
    let before = ticks.load(Ordering::Relaxed);
    let mut stream = pool.map_stream(nap, [50; 20])?;
    let mut total = 0;
    while let Some(result) = stream.next().await {
        total += result?;
    }
    let during = ticks.load(Ordering::Relaxed) - before;
    println!(
        "map_stream: 20 naps, {total} ms of sleep in {:.0?}; the ticker ticked {during} times meanwhile (about 1 per 10 ms if the thread was free)",
        start.elapsed()
    );
    ticker.abort();

    let slept = pool.call_async(nap, 30).await?;
    println!("call_async: nap(30) returned {slept}");

    // `timeout` drops the call's future when time is up, which cancels it:
    // the worker sleeping in nap(60000) is killed and replaced.
    let start = Instant::now();
    match tokio::time::timeout(Duration::from_millis(200), pool.call_async(nap, 60_000)).await {
        Ok(result) => println!("nap(60000) finished?! {result:?}"),
        Err(_) => println!(
            "nap(60000): timed out after {:.0?}, call cancelled",
            start.elapsed()
        ),
    }
    let slept = pool.call_async(nap, 10).await?;
    println!("afterwards: nap(10) returned {slept}, the pool still works");
    Ok(())
}
