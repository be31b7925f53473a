//! Throughput, start-up, payload and memory of buckshot, side by side with
//! serial code, rayon and procspawn, measured in one run. Every figure comes
//! with its ratio to a baseline measured in the same run, because the machine
//! is shared and noisy.
//!
//! `cargo bench` runs every section; `cargo bench -- NAME...` runs some
//! (tiny, sizes, uneven, startup, payload, streaming, isolation; and
//! context, which is only run when named, for it takes minutes). With
//! `--csv PATH` the task-size sweep is also written as CSV for the chart.

use std::time::{Duration, Instant};

use buckshot::Pool;
use serde_bytes::ByteBuf;

const PROCESSES: usize = 2;

fn identity(x: u64) -> u64 {
    x
}
buckshot::register!(identity);

/// Spins for about `nanos` nanoseconds: a task of a chosen size.
fn spin(nanos: u64) -> u64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_nanos() < u128::from(nanos) {
        n = std::hint::black_box(n + 1);
    }
    n
}
buckshot::register!(spin);

/// Cost grows with `x`: the uneven workload.
fn harmonic(x: u64) -> f64 {
    (1..=x).map(|d| 1.0 / d as f64).sum()
}
buckshot::register!(harmonic);

fn echo_bytes(bytes: ByteBuf) -> ByteBuf {
    bytes
}
buckshot::register!(echo_bytes);

/// Resident memory of the calling process, in bytes.
fn rss_of_self(_: u64) -> u64 {
    status_kib("VmRSS") * 1024
}
buckshot::register!(rss_of_self);

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|line| line.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn main() {
    procspawn::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let csv = args
        .iter()
        .position(|a| a == "--csv")
        .map(|i| args[i + 1].clone());
    let only: Vec<&String> = args
        .iter()
        .filter(|a| !a.starts_with('-') && Some(*a) != csv.as_ref())
        .collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o.as_str() == name);
    println!(
        "buckshot comparison, {PROCESSES} processes/threads, {} cores",
        num_cores()
    );
    println!(
        "{:<44} {:>14} {:>10}  baseline",
        "measurement", "value", "ratio"
    );
    if wanted("tiny") {
        tiny();
    }
    if wanted("sizes") {
        sizes(csv.as_deref());
    }
    if wanted("uneven") {
        uneven();
    }
    if wanted("startup") {
        startup();
    }
    if wanted("payload") {
        payload();
    }
    if wanted("streaming") {
        streaming();
    }
    if wanted("isolation") {
        isolation();
    }
    // A minute or two: only when asked for by name.
    if only.iter().any(|o| o.as_str() == "context") {
        context();
    }
}

fn num_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn row(what: &str, value: String, ratio: f64, baseline: &str) {
    println!("{what:<44} {value:>14} {ratio:>9.2}x  {baseline}");
}

fn per_sec(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

fn millions(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.2}M/s", rate / 1e6)
    } else {
        format!("{:.1}k/s", rate / 1e3)
    }
}

fn time<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

fn buckshot_rate<F, M>(pool: &Pool, f: F, inputs: &[u64]) -> f64
where
    F: buckshot::PlainTask<M, Input = u64> + Copy,
{
    // Warm up: workers started, chunk size learnt.
    let _ = pool
        .map(f, inputs.iter().copied().take(10_000))
        .unwrap()
        .count();
    let (count, elapsed) = time(|| {
        pool.map(f, inputs.iter().copied())
            .unwrap()
            .map(Result::unwrap)
            .count()
    });
    assert_eq!(count, inputs.len());
    per_sec(count, elapsed)
}

fn procspawn_rate(inputs: &[u64], work: fn(u64) -> u64) -> f64 {
    let pool = procspawn::Pool::new(PROCESSES).unwrap();
    let (count, elapsed) = time(|| {
        // Submitted in waves: procspawn runs out of file descriptors with
        // thousands of handles queued.
        let mut count = 0;
        for wave in inputs.chunks(1000) {
            let handles: Vec<_> = wave.iter().map(|&x| pool.spawn(x, work)).collect();
            for handle in handles {
                handle.join().unwrap();
                count += 1;
            }
        }
        count
    });
    pool.shutdown();
    per_sec(count, elapsed)
}

fn tiny() {
    const N: usize = 1_000_000;
    let inputs: Vec<u64> = (0..N as u64).collect();
    let (sum, elapsed) = time(|| {
        inputs
            .iter()
            .map(|&x| std::hint::black_box(identity(x)))
            .sum::<u64>()
    });
    let serial = per_sec(N, elapsed);
    assert_eq!(sum, inputs.iter().sum::<u64>());

    let pool = Pool::new(PROCESSES).unwrap();
    let default = buckshot_rate(&pool, identity, &inputs);
    let single = Pool::builder()
        .processes(PROCESSES)
        .batch_size(1)
        .build()
        .unwrap();
    let single = buckshot_rate(&single, identity, &inputs);
    let procspawn = procspawn_rate(&inputs[..5_000], identity);
    let python = python_pool_rate();

    row(
        "tiny tasks: serial, in process",
        millions(serial),
        1.0,
        "serial",
    );
    row(
        "tiny tasks: buckshot, default",
        millions(default),
        default / procspawn,
        "procspawn",
    );
    row(
        "tiny tasks: buckshot, batch_size(1)",
        millions(single),
        single / procspawn,
        "procspawn",
    );
    row(
        "tiny tasks: procspawn pool (5,000 tasks)",
        millions(procspawn),
        1.0,
        "procspawn",
    );
    if let Some(python) = python {
        row(
            "tiny tasks: Python Pool.map, default chunks",
            millions(python),
            python / procspawn,
            "procspawn",
        );
        row(
            "tiny tasks: buckshot default / Python",
            millions(default),
            default / python,
            "Python Pool.map",
        );
    }
}

/// Python's `multiprocessing.Pool.map` on the same identity workload, if
/// `python3` is there.
fn python_pool_rate() -> Option<f64> {
    let script = "import multiprocessing as mp, time\n\
                  def f(x): return x\n\
                  if __name__ == '__main__':\n\
                  \x20   with mp.Pool(2) as p:\n\
                  \x20       p.map(f, range(10000))\n\
                  \x20       t = time.perf_counter(); r = p.map(f, range(1000000)); d = time.perf_counter() - t\n\
                  \x20   print(len(r) / d)\n";
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .ok()?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

/// Throughput against task size, for the chart: buckshot, procspawn and
/// rayon on the same spinning tasks.
fn sizes(csv: Option<&str>) {
    let pool = Pool::new(PROCESSES).unwrap();
    let threads = rayon::ThreadPoolBuilder::new()
        .num_threads(PROCESSES)
        .build()
        .unwrap();
    let mut lines = vec!["task_us,buckshot,procspawn,rayon".to_owned()];
    for micros in [1u64, 10, 100, 1000] {
        let n = (400_000 / micros).clamp(200, 100_000) as usize;
        let inputs = vec![micros * 1000; n];
        let buckshot = buckshot_rate(&pool, spin, &inputs);
        let procspawn = procspawn_rate(&inputs[..n.min(3000)], spin);
        let (_, elapsed) = time(|| {
            use rayon::prelude::*;
            threads.install(|| inputs.par_iter().map(|&x| spin(x)).count())
        });
        let rayon = per_sec(n, elapsed);
        row(
            &format!("{micros} us tasks: buckshot"),
            millions(buckshot),
            buckshot / rayon,
            "rayon",
        );
        row(
            &format!("{micros} us tasks: procspawn"),
            millions(procspawn),
            procspawn / rayon,
            "rayon",
        );
        lines.push(format!("{micros},{buckshot:.0},{procspawn:.0},{rayon:.0}"));
    }
    if let Some(path) = csv {
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }
}

fn uneven() {
    // About 2 s of serial work, cost growing with x.
    let (_, probe) = time(|| std::hint::black_box(harmonic(std::hint::black_box(20_000_000))));
    let terms_per_sec = 2e7 / probe.as_secs_f64();
    let n = ((2.0 * 2.0 * terms_per_sec).sqrt() as u64).max(1000);
    let inputs: Vec<u64> = (1..=n).collect();

    let (serial, serial_time) = time(|| inputs.iter().map(|&x| harmonic(x)).collect::<Vec<_>>());
    let pool = Pool::new(PROCESSES).unwrap();
    let _ = pool.map(harmonic, [1u64]).unwrap().count();
    let (ours, ours_time) = time(|| {
        pool.map(harmonic, inputs.iter().copied())
            .unwrap()
            .map(Result::unwrap)
            .collect::<Vec<_>>()
    });
    assert_eq!(ours, serial);
    let threads = rayon::ThreadPoolBuilder::new()
        .num_threads(PROCESSES)
        .build()
        .unwrap();
    let (theirs, rayon_time) = time(|| {
        use rayon::prelude::*;
        threads.install(|| inputs.par_iter().map(|&x| harmonic(x)).collect::<Vec<_>>())
    });
    assert_eq!(theirs, serial);
    let speedup = serial_time.as_secs_f64() / ours_time.as_secs_f64();
    let rayon = serial_time.as_secs_f64() / rayon_time.as_secs_f64();
    row(
        &format!("uneven harmonic, {n} tasks: serial"),
        format!("{serial_time:.2?}"),
        1.0,
        "serial",
    );
    row(
        "uneven harmonic: buckshot speed-up",
        format!("{ours_time:.2?}"),
        speedup,
        "serial",
    );
    row(
        "uneven harmonic: rayon speed-up",
        format!("{rayon_time:.2?}"),
        rayon,
        "serial",
    );
    row(
        "uneven harmonic: buckshot / rayon",
        format!("{:.3}", speedup / rayon),
        speedup / rayon,
        "rayon",
    );
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// From creating a pool to holding the first result; the pool is dropped
/// after the clock stops.
fn startup() {
    const RUNS: usize = 50;
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..RUNS {
        let start = Instant::now();
        let pool = Pool::new(PROCESSES).unwrap();
        let one = pool.map(identity, [1u64]).unwrap().next().unwrap().unwrap();
        ours.push(start.elapsed());
        assert_eq!(one, 1);
        drop(pool);

        let start = Instant::now();
        let pool = procspawn::Pool::new(PROCESSES).unwrap();
        let one = pool.spawn(1u64, identity).join().unwrap();
        theirs.push(start.elapsed());
        assert_eq!(one, 1);
        pool.shutdown();
    }
    let (ours, theirs) = (median(ours), median(theirs));
    let ratio = ours.as_secs_f64() / theirs.as_secs_f64();
    row(
        "start-up to first result: buckshot",
        format!("{ours:.2?}"),
        ratio,
        "procspawn",
    );
    row(
        "start-up to first result: procspawn",
        format!("{theirs:.2?}"),
        1.0,
        "procspawn",
    );
}

fn payload() {
    let pool = Pool::new(1).unwrap();
    for (label, size) in [("1 MiB", 1usize << 20), ("64 MiB", 64 << 20)] {
        let bytes = ByteBuf::from(vec![7u8; size]);
        let rounds = (256 << 20) / size;
        let (_, copy) = time(|| {
            for _ in 0..rounds {
                std::hint::black_box(bytes.clone());
            }
        });
        // Inputs are made before the clock starts: copying them is the
        // caller's business, not the pool's.
        let inputs: Vec<ByteBuf> = (0..rounds).map(|_| bytes.clone()).collect();
        let (_, elapsed) = time(|| {
            for back in pool.map(echo_bytes, inputs).unwrap() {
                assert_eq!(back.unwrap().len(), size);
            }
        });
        let rate = (size * rounds) as f64 / elapsed.as_secs_f64();
        let copy_rate = (size * rounds) as f64 / copy.as_secs_f64();
        row(
            &format!("payload round trip, {label}"),
            format!("{:.2} GB/s", rate / 1e9),
            rate / copy_rate,
            "clone of the same bytes",
        );
    }
}

fn streaming() {
    const N: u64 = 10_000_000;
    let pool = Pool::new(PROCESSES).unwrap();
    let _ = pool.map(identity, 0..1000u64).unwrap().count();
    // Reset the peak so that it measures this map alone.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = status_kib("VmRSS");
    let count = pool
        .map(identity, 0..N)
        .unwrap()
        .filter(Result::is_ok)
        .count();
    assert_eq!(count, N as usize);
    let growth = status_kib("VmHWM").saturating_sub(before) * 1024;
    let input_bytes = N * 8;
    row(
        "streaming 10M inputs: parent peak RSS growth",
        format!("{:.1} MiB", growth as f64 / (1 << 20) as f64),
        growth as f64 / input_bytes as f64,
        "the inputs as a Vec<u64>",
    );
}

fn isolation() {
    let mut heap = vec![0u8; 2 << 30];
    for page in heap.chunks_mut(4096) {
        page[0] = 1;
    }
    let parent = status_kib("VmRSS") * 1024;
    let pool = Pool::new(1).unwrap();
    let worker = pool.map(rss_of_self, [0]).unwrap().next().unwrap().unwrap();
    std::hint::black_box(&heap);
    row(
        "fresh worker RSS, parent holding 2 GiB",
        format!("{:.1} MiB", worker as f64 / (1 << 20) as f64),
        worker as f64 / parent as f64,
        "parent RSS",
    );
}

fn table_byte(table: &ByteBuf, i: u64) -> u8 {
    table[i as usize % table.len()]
}
buckshot::register!(table_byte);

fn table_byte_inline(table: ByteBuf, i: u64) -> u8 {
    table[i as usize % table.len()]
}
buckshot::register!(table_byte_inline);

/// A 32 MiB table read by 4,000 inputs: sent once per worker in a context,
/// against the same map with the table in every input.
fn context() {
    const INPUTS: u64 = 4000;
    let table = ByteBuf::from((0..32usize << 20).map(|i| i as u8).collect::<Vec<u8>>());
    let expected: u64 = (0..INPUTS)
        .map(|i| u64::from(table[i as usize % table.len()]))
        .sum();
    let pool = Pool::new(PROCESSES).unwrap();
    let (sum, with_context) = time(|| {
        let ctx = pool.with_context(&table);
        ctx.map(table_byte, 0..INPUTS)
            .unwrap()
            .map(|r| u64::from(r.unwrap()))
            .sum::<u64>()
    });
    assert_eq!(sum, expected);
    let (sum, inline) = time(|| {
        pool.map(table_byte_inline, (0..INPUTS).map(|i| (table.clone(), i)))
            .unwrap()
            .map(|r| u64::from(r.unwrap()))
            .sum::<u64>()
    });
    assert_eq!(sum, expected);
    row(
        "32 MiB context, 4,000 inputs",
        format!("{with_context:.2?}"),
        inline.as_secs_f64() / with_context.as_secs_f64(),
        "the table in every input",
    );
    row(
        "32 MiB table in every input, 4,000 inputs",
        format!("{inline:.2?}"),
        1.0,
        "the table in every input",
    );
}
