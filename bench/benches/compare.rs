//! Throughput, start-up, payload and memory of buckshot, side by side with
//! serial code, rayon, procspawn, Python's `multiprocessing` and the floor
//! (plain `std::process::Command` spawns), measured in one run. Every figure
//! comes with its ratio to a baseline measured in the same run, on the same
//! workload with the same number of processes (2), because the machine is
//! shared and noisy.
//!
//! `cargo bench -p buckshot-bench` runs every section;
//! `cargo bench -p buckshot-bench -- NAME...` runs some (tiny, sizes,
//! uneven, startup, fresh, wide, payload, streaming, isolation, ssh; and
//! context, which is only run when named, for it takes minutes;
//! wide-context runs its first row alone). With
//! `--csv PATH` the task-size sweep is also written as CSV for the chart
//! (cargo runs benchmarks in `bench/`: give an absolute path).

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use buckshot::Pool;
use serde_bytes::ByteBuf;

mod ssh;

const PROCESSES: usize = 2;

/// Set in the floor's children: they answer one byte and exit.
const FLOOR_ENV: &str = "BUCKSHOT_BENCH_FLOOR";

fn identity(x: u64) -> u64 {
    x
}
buckshot::register!(identity);

/// Naps a millisecond and says which worker ran it: every worker of a
/// wide pool gets some.
fn nap_pid(_: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(1));
    std::process::id()
}
buckshot::register!(nap_pid);

/// A fixed amount of CPU work: `loops` rounds of a multiply-add that the
/// compiler cannot skip. Unlike spinning against the clock, time spent
/// descheduled is not counted as work.
fn work(loops: u64) -> u64 {
    let mut x = loops;
    for _ in 0..loops {
        x = std::hint::black_box(
            x.wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407),
        );
    }
    x
}
buckshot::register!(work);

/// Loops of [`work`] per microsecond on one core of this machine: the
/// fastest of five calibration runs (the least disturbed).
fn loops_per_micro() -> u64 {
    static LOOPS: OnceLock<u64> = OnceLock::new();
    *LOOPS.get_or_init(|| {
        let loops = 20_000_000;
        let fastest = (0..5)
            .map(|_| time(|| work(std::hint::black_box(loops))).1)
            .min()
            .unwrap();
        (loops as f64 / (fastest.as_secs_f64() * 1e6)).round() as u64
    })
}

/// Cost grows with `x`: the uneven workload.
fn harmonic(x: u64) -> f64 {
    (1..=x).map(|d| 1.0 / d as f64).sum()
}
buckshot::register!(harmonic);

fn echo_bytes(bytes: ByteBuf) -> ByteBuf {
    bytes
}
buckshot::register!(echo_bytes);

/// A large input in, a number out.
fn byte_count(bytes: ByteBuf) -> u64 {
    bytes.len() as u64
}
buckshot::register!(byte_count);

/// A number in, a large output back.
fn bytes_of_len(len: u64) -> ByteBuf {
    ByteBuf::from(vec![7u8; len as usize])
}
buckshot::register!(bytes_of_len);

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
    if std::env::var_os(FLOOR_ENV).is_some() {
        // The floor's child: the least a worker could do.
        std::process::exit(i32::from(
            std::io::Write::write_all(&mut std::io::stdout(), b"x").is_err(),
        ));
    }
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
        "{:<48} {:>14} {:>10}  baseline",
        "measurement", "value", "ratio"
    );
    if wanted("tiny") {
        tiny();
    }
    if wanted("sizes") {
        sizes(csv.as_deref());
    }
    let sections: [(&str, fn()); 9] = [
        ("uneven", uneven),
        ("startup", startup),
        ("fresh", fresh),
        ("wide", wide),
        ("payload", payload),
        ("codec", codec),
        ("streaming", streaming),
        ("isolation", isolation),
        ("ssh", ssh::ssh),
    ];
    for (name, section) in sections {
        if wanted(name) {
            section();
        }
    }
    // A minute or two: only when asked for by name. `wide-context` runs
    // its first row alone.
    if only
        .iter()
        .any(|o| o.as_str() == "context" || o.as_str() == "wide-context")
    {
        wide_context();
    }
    if only.iter().any(|o| o.as_str() == "context") {
        context();
    }
}

fn num_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn row(what: &str, value: String, ratio: f64, baseline: &str) {
    println!("{what:<48} {value:>14} {ratio:>9.2}x  {baseline}");
}

fn per_sec(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

fn millions(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.2}M/s", rate / 1e6)
    } else if rate >= 1e4 {
        format!("{:.1}k/s", rate / 1e3)
    } else {
        format!("{rate:.0}/s")
    }
}

fn time<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Tasks per second of one map over `inputs`, whose outputs are collected
/// (as Python's `Pool.map` does), after a warm-up map of up to 10,000 of
/// them (workers started, their code paged in; chunk sizes are learnt per
/// map, so the warm-up teaches the timed map nothing).
fn buckshot_rate<F, M>(pool: &Pool, f: F, inputs: &[u64]) -> f64
where
    F: buckshot::PlainTask<M, Input = u64> + Copy,
{
    let _ = pool
        .map(f, inputs.iter().copied().take(10_000))
        .unwrap()
        .count();
    let (outputs, elapsed) = time(|| {
        pool.map(f, inputs.iter().copied())
            .unwrap()
            .map(Result::unwrap)
            .collect::<Vec<_>>()
    });
    assert_eq!(outputs.len(), inputs.len());
    per_sec(inputs.len(), elapsed)
}

/// The median rate of `rounds` timed maps, after the same warm-up: one
/// map of a million tiny tasks lasts a tenth of a second, which one
/// descheduling on a shared machine can stretch by half.
fn buckshot_median_rate<F, M>(pool: &Pool, f: F, inputs: &[u64], rounds: usize) -> f64
where
    F: buckshot::PlainTask<M, Input = u64> + Copy,
{
    let mut rates: Vec<f64> = (0..rounds)
        .map(|_| buckshot_rate(pool, f, inputs))
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[rounds / 2]
}

/// The same for rayon, with the same warm-up.
fn rayon_rate(threads: &rayon::ThreadPool, f: fn(u64) -> u64, inputs: &[u64]) -> f64 {
    use rayon::prelude::*;
    let warm_up = &inputs[..inputs.len().min(10_000)];
    let _ = threads.install(|| warm_up.par_iter().map(|&x| f(x)).collect::<Vec<_>>());
    let (outputs, elapsed) =
        time(|| threads.install(|| inputs.par_iter().map(|&x| f(x)).collect::<Vec<_>>()));
    assert_eq!(outputs.len(), inputs.len());
    per_sec(inputs.len(), elapsed)
}

/// The same for procspawn, after a warm-up of 200 tasks.
fn procspawn_rate(inputs: &[u64], work: fn(u64) -> u64) -> f64 {
    let pool = procspawn::Pool::new(PROCESSES).unwrap();
    let run = |inputs: &[u64]| {
        // Submitted in waves: procspawn runs out of file descriptors with
        // thousands of handles queued.
        let mut outputs = Vec::with_capacity(inputs.len());
        for wave in inputs.chunks(1000) {
            let handles: Vec<_> = wave.iter().map(|&x| pool.spawn(x, work)).collect();
            outputs.extend(handles.into_iter().map(|handle| handle.join().unwrap()));
        }
        outputs
    };
    let _ = run(&inputs[..inputs.len().min(200)]);
    let (outputs, elapsed) = time(|| run(inputs));
    assert_eq!(outputs.len(), inputs.len());
    pool.shutdown();
    per_sec(inputs.len(), elapsed)
}

/// Runs a Python snippet that prints one number; says why when it cannot.
fn python(script: &str) -> Result<f64, String> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .map_err(|e| format!("python3 did not start: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "python3 failed ({}): {}",
            out.status,
            stderr.lines().last().unwrap_or("")
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .map_err(|_| format!("python3 printed {:?}, not a number", text.trim()))
}

fn python_missing(what: &str, why: &str) {
    println!("{what:<48} {:>14} {:>10}  {why}", "-", "-");
}

/// Timed maps of a million tiny tasks per side, of which the median counts.
const TINY_ROUNDS: usize = 5;

fn tiny() {
    const N: usize = 1_000_000;
    const PROCSPAWN_N: usize = 20_000;
    let inputs: Vec<u64> = (0..N as u64).collect();
    let (outputs, elapsed) = time(|| {
        inputs
            .iter()
            .map(|&x| std::hint::black_box(identity(x)))
            .collect::<Vec<_>>()
    });
    let serial = per_sec(N, elapsed);
    assert_eq!(outputs, inputs);

    let pool = Pool::new(PROCESSES).unwrap();
    let default = buckshot_median_rate(&pool, identity, &inputs, TINY_ROUNDS);
    let single = Pool::builder()
        .processes(PROCESSES)
        .batch_size(1)
        .build()
        .unwrap();
    let single = buckshot_rate(&single, identity, &inputs);
    let few = &inputs[..PROCSPAWN_N];
    let ours_few = buckshot_rate(&pool, identity, few);
    let procspawn = procspawn_rate(few, identity);
    // Python's default chunksize for 1,000,000 inputs on 2 processes is
    // ceil(1,000,000 / (4 x 2)) = 125,000.
    let python = python(
        "import multiprocessing as mp, time\n\
         def f(x): return x\n\
         if __name__ == '__main__':\n\
         \x20   with mp.Pool(2) as p:\n\
         \x20       rates = []\n\
         \x20       for _ in range(5):\n\
         \x20           p.map(f, range(10000))\n\
         \x20           t = time.perf_counter(); r = p.map(f, range(1000000)); d = time.perf_counter() - t\n\
         \x20           assert len(r) == 1000000\n\
         \x20           rates.append(len(r) / d)\n\
         \x20   print(sorted(rates)[2])\n",
    );

    row(
        "tiny tasks (1M): serial, in process",
        millions(serial),
        1.0,
        "serial",
    );
    match python {
        Ok(python) => {
            row(
                "tiny tasks (1M): Python Pool.map, chunksize 125k",
                millions(python),
                1.0,
                "Python Pool.map",
            );
            row(
                "tiny tasks (1M): buckshot, default",
                millions(default),
                default / python,
                "Python Pool.map",
            );
        }
        Err(why) => {
            python_missing("tiny tasks (1M): Python Pool.map", &why);
            row(
                "tiny tasks (1M): buckshot, default",
                millions(default),
                default / serial,
                "serial",
            );
        }
    }
    row(
        "tiny tasks (1M): buckshot, batch_size(1)",
        millions(single),
        single / default,
        "buckshot, default",
    );
    row(
        "tiny tasks (20k): procspawn",
        millions(procspawn),
        procspawn / ours_few,
        "buckshot, same 20k",
    );
}

/// Throughput against task size, for the chart: buckshot, procspawn and
/// rayon on the same tasks of fixed CPU work.
fn sizes(csv: Option<&str>) {
    let pool = Pool::new(PROCESSES).unwrap();
    let threads = rayon::ThreadPoolBuilder::new()
        .num_threads(PROCESSES)
        .build()
        .unwrap();
    let loops = loops_per_micro();
    let mut lines = vec!["task_us,buckshot,procspawn,rayon".to_owned()];
    for micros in [1u64, 10, 100, 1000] {
        let n = (400_000 / micros).clamp(200, 100_000) as usize;
        let inputs = vec![micros * loops; n];
        let buckshot = buckshot_rate(&pool, work, &inputs);
        let procspawn = procspawn_rate(&inputs[..n.min(3000)], work);
        let rayon = rayon_rate(&threads, work, &inputs);
        row(
            &format!("{micros} us tasks ({n}): buckshot"),
            millions(buckshot),
            buckshot / rayon,
            "rayon",
        );
        row(
            &format!("{micros} us tasks ({}): procspawn", n.min(3000)),
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
    let _ = pool.map(harmonic, [1u64, 2]).unwrap().count();
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
    let _ = threads.install(|| {
        use rayon::prelude::*;
        [1u64, 2].par_iter().map(|&x| harmonic(x)).count()
    });
    let (theirs, rayon_time) = time(|| {
        use rayon::prelude::*;
        threads.install(|| inputs.par_iter().map(|&x| harmonic(x)).collect::<Vec<_>>())
    });
    assert_eq!(theirs, serial);
    let speedup = serial_time.as_secs_f64() / ours_time.as_secs_f64();
    let rayon = serial_time.as_secs_f64() / rayon_time.as_secs_f64();
    row(
        "uneven harmonic (about 2 s): serial",
        format!("{serial_time:.2?}"),
        1.0,
        "serial",
    );
    row(
        "uneven harmonic: buckshot",
        format!("{ours_time:.2?}"),
        speedup,
        "serial",
    );
    row(
        "uneven harmonic: rayon",
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

    // The same, while a third thread of this process spins on the same
    // two cores: the side that leaves a core idle while the other holds
    // unstarted inputs loses more.
    let spin = std::sync::atomic::AtomicBool::new(true);
    let (ours_busy, theirs_busy) = std::thread::scope(|s| {
        s.spawn(|| {
            let mut x = 0u64;
            while spin.load(std::sync::atomic::Ordering::Relaxed) {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        });
        let (ours, ours_time) = time(|| {
            pool.map(harmonic, inputs.iter().copied())
                .unwrap()
                .map(Result::unwrap)
                .collect::<Vec<_>>()
        });
        let (theirs, rayon_time) = time(|| {
            use rayon::prelude::*;
            threads.install(|| inputs.par_iter().map(|&x| harmonic(x)).collect::<Vec<_>>())
        });
        spin.store(false, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(ours, serial);
        assert_eq!(theirs, serial);
        (ours_time, rayon_time)
    });
    row(
        "uneven, a third thread spinning: buckshot",
        format!("{ours_busy:.2?}"),
        serial_time.as_secs_f64() / ours_busy.as_secs_f64(),
        "serial",
    );
    row(
        "uneven, a third thread spinning: buckshot/rayon",
        format!("{:.3}", theirs_busy.as_secs_f64() / ours_busy.as_secs_f64()),
        theirs_busy.as_secs_f64() / ours_busy.as_secs_f64(),
        "rayon, same spinning",
    );
}

/// Spawns a copy of this binary as the floor's child and waits for its
/// one byte; returns the child to reap.
fn floor_child() -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .env(FLOOR_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn floor_answer(child: &mut std::process::Child) {
    let mut byte = [0u8];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut byte)
        .unwrap();
    assert_eq!(&byte, b"x");
}

/// The floor of start-up: two copies of this binary spawned with
/// `std::process::Command`, one byte read back from each.
fn floor_startup() -> Duration {
    let start = Instant::now();
    let mut children: Vec<_> = (0..PROCESSES).map(|_| floor_child()).collect();
    for child in &mut children {
        floor_answer(child);
    }
    let elapsed = start.elapsed();
    for mut child in children {
        child.wait().unwrap();
    }
    elapsed
}

/// From creating a pool to holding the first result; the pool is dropped
/// after the clock stops.
fn startup() {
    const RUNS: usize = 50;
    let (mut ours, mut floor, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        floor.push(floor_startup());

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
    let python = python(
        "import multiprocessing as mp, statistics, time\n\
         def f(x): return x\n\
         if __name__ == '__main__':\n\
         \x20   times = []\n\
         \x20   for _ in range(50):\n\
         \x20       t = time.perf_counter()\n\
         \x20       with mp.Pool(2) as p:\n\
         \x20           p.apply(f, (1,))\n\
         \x20           times.append(time.perf_counter() - t)\n\
         \x20   print(statistics.median(times))\n",
    );
    let floor = median(floor);
    let ratio = |d: Duration| d.as_secs_f64() / floor.as_secs_f64();
    let label = "floor (Command, 1 byte each)";
    row(
        "start-up, median of 50: floor (2 x Command)",
        format!("{floor:.2?}"),
        1.0,
        label,
    );
    let ours = median(ours);
    row(
        "start-up to first result: buckshot",
        format!("{ours:.2?}"),
        ratio(ours),
        label,
    );
    let theirs = median(theirs);
    row(
        "start-up to first result: procspawn",
        format!("{theirs:.2?}"),
        ratio(theirs),
        label,
    );
    match python {
        Ok(seconds) => {
            let python = Duration::from_secs_f64(seconds);
            row(
                "start-up to first result: Python Pool",
                format!("{python:.2?}"),
                ratio(python),
                label,
            );
        }
        Err(why) => python_missing("start-up to first result: Python Pool", &why),
    }
}

/// A fresh process for every input (`max_tasks_per_worker(1)`), against
/// the floor: two threads, each spawning copies of this binary one after
/// another and reading one byte back from each.
fn fresh() {
    const N: usize = 2000;
    let (_, floor) = time(|| {
        std::thread::scope(|scope| {
            for _ in 0..PROCESSES {
                scope.spawn(|| {
                    for _ in 0..N / PROCESSES {
                        let mut child = floor_child();
                        floor_answer(&mut child);
                        child.wait().unwrap();
                    }
                });
            }
        });
    });
    let floor = per_sec(N, floor);
    let pool = Pool::builder()
        .processes(PROCESSES)
        .max_tasks_per_worker(1)
        .build()
        .unwrap();
    let _ = pool.map(identity, 0..PROCESSES as u64).unwrap().count();
    let inputs: Vec<u64> = (0..N as u64).collect();
    let (outputs, elapsed) = time(|| {
        pool.map(identity, inputs.iter().copied())
            .unwrap()
            .map(Result::unwrap)
            .collect::<Vec<_>>()
    });
    assert_eq!(outputs, inputs);
    let ours = per_sec(N, elapsed);
    let label = "floor (Command, 1 byte each)";
    row(
        "fresh process per input (2k): floor",
        millions(floor),
        1.0,
        label,
    );
    row(
        "fresh process per input (2k): buckshot",
        millions(ours),
        ours / floor,
        label,
    );
}

/// Tiny tasks on wide pools (more processes than cores, as a pool of
/// remote workers would be), against 2 processes in the same run.
fn wide() {
    const N: usize = 1_000_000;
    const FIRST: u64 = 8_000;
    let inputs: Vec<u64> = (0..N as u64).collect();
    // From nothing to the first results: a fresh pool and one map.
    let first_results = |processes: usize| {
        time(|| {
            let pool = Pool::new(processes).unwrap();
            let answered = pool.map(identity, 0..FIRST).unwrap().count();
            assert_eq!(answered, FIRST as usize);
            pool
        })
        .1
    };
    let narrow_first = median((0..5).map(|_| first_results(PROCESSES)).collect());
    let narrow = Pool::new(PROCESSES).unwrap();
    let narrow = buckshot_rate(&narrow, identity, &inputs);
    row(
        "tiny tasks (1M), 2 processes",
        millions(narrow),
        1.0,
        "2 processes",
    );
    row(
        "Pool::new(2) to 8,000 results",
        format!("{narrow_first:.2?}"),
        1.0,
        "2 processes",
    );
    for processes in [64, 256, 1000] {
        let (pool, started) = time(|| Pool::new(processes).unwrap());
        // Every worker up and answering before the clock starts: a wide
        // pool's last workers are spawned after `Pool::new` returns.
        let mut seen = std::collections::HashSet::new();
        while seen.len() < processes {
            seen.extend(
                pool.map(nap_pid, 0..(processes * 2) as u64)
                    .unwrap()
                    .map(Result::unwrap),
            );
        }
        let _ = pool
            .map(identity, 0..(processes * 64) as u64)
            .unwrap()
            .count();
        let rate = buckshot_rate(&pool, identity, &inputs);
        drop(pool);
        row(
            &format!("tiny tasks (1M), {processes} processes"),
            millions(rate),
            rate / narrow,
            "2 processes",
        );
        row(
            &format!("Pool::new({processes}) returns"),
            format!("{started:.2?}"),
            started.as_secs_f64() / processes as f64 * 1e3,
            "ms per worker",
        );
        let wide_first = median((0..3).map(|_| first_results(processes)).collect());
        row(
            &format!("Pool::new({processes}) to 8,000 results"),
            format!("{wide_first:.2?}"),
            wide_first.as_secs_f64() / narrow_first.as_secs_f64(),
            "2 processes",
        );
    }
}

/// Large byte strings to a worker, back from one, and both, with 2
/// processes; against a copy of the same bytes into a fresh buffer (what
/// the receiving side has to do at least).
fn payload() {
    let pool = Pool::new(PROCESSES).unwrap();
    for (label, size) in [("1 MiB", 1usize << 20), ("64 MiB", 64 << 20)] {
        let bytes = ByteBuf::from(vec![7u8; size]);
        let rounds = (512 << 20) / size;
        let (_, copy) = time(|| {
            for _ in 0..rounds {
                std::hint::black_box(std::hint::black_box(&bytes[..]).to_vec());
            }
        });
        let copy_rate = (size * rounds) as f64 / copy.as_secs_f64();
        let rate = |elapsed: Duration| (size * rounds) as f64 / elapsed.as_secs_f64();
        let report = |what: &str, elapsed: Duration| {
            row(
                &format!("payload {label}, {what}"),
                format!("{:.2} GB/s", rate(elapsed) / 1e9),
                rate(elapsed) / copy_rate,
                "copy into a fresh buffer",
            );
        };
        row(
            &format!("payload {label}, copy into a fresh buffer"),
            format!("{:.2} GB/s", copy_rate / 1e9),
            1.0,
            "copy into a fresh buffer",
        );
        // Warm-up: both workers up.
        let _ = pool
            .map(byte_count, vec![bytes.clone(); 2])
            .unwrap()
            .count();
        // Inputs are made before the clock starts: copying them is the
        // caller's business, not the pool's.
        let inputs: Vec<ByteBuf> = (0..rounds).map(|_| bytes.clone()).collect();
        let (_, elapsed) = time(|| {
            for len in pool.map(byte_count, inputs).unwrap() {
                assert_eq!(len.unwrap(), size as u64);
            }
        });
        report("in (to the worker)", elapsed);
        let (_, elapsed) = time(|| {
            for back in pool.map(bytes_of_len, vec![size as u64; rounds]).unwrap() {
                assert_eq!(back.unwrap().len(), size);
            }
        });
        report("out (from the worker)", elapsed);
        let inputs: Vec<ByteBuf> = (0..rounds).map(|_| bytes.clone()).collect();
        let (_, elapsed) = time(|| {
            for back in pool.map(echo_bytes, inputs).unwrap() {
                assert_eq!(back.unwrap().len(), size);
            }
        });
        report("round trip", elapsed);
    }
}

/// What ciborium alone costs on 64 MiB, encoding into and decoding from
/// fresh buffers, as the pool does: the codec's share of a payload row.
fn codec() {
    let size = 64usize << 20;
    let bytes = ByteBuf::from(vec![7u8; size]);
    let (mut encode, mut decode, mut copy) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        let (encoded, elapsed) = time(|| {
            let mut out = Vec::new();
            ciborium::into_writer(&bytes, &mut out).unwrap();
            out
        });
        encode.push(elapsed);
        let (decoded, elapsed) = time(|| {
            let mut scratch = vec![0u8; 4096];
            ciborium::de::from_reader_with_buffer::<ByteBuf, _>(&encoded[..], &mut scratch).unwrap()
        });
        decode.push(elapsed);
        assert_eq!(decoded.len(), size);
        let (_, elapsed) = time(|| std::hint::black_box(std::hint::black_box(&bytes[..]).to_vec()));
        copy.push(elapsed);
    }
    let copy = median(copy);
    let label = "copy into a fresh buffer";
    row(
        "64 MiB: copy into a fresh buffer, median of 5",
        format!("{copy:.2?}"),
        1.0,
        label,
    );
    for (what, times) in [("encode", encode), ("decode", decode)] {
        let t = median(times);
        row(
            &format!("64 MiB: ciborium {what}"),
            format!("{t:.2?}"),
            t.as_secs_f64() / copy.as_secs_f64(),
            label,
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
    let pool = Pool::new(PROCESSES).unwrap();
    let workers: Vec<u64> = pool
        .map(rss_of_self, vec![0; PROCESSES])
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let worker = *workers.iter().max().unwrap();
    std::hint::black_box(&heap);
    row(
        "fresh worker RSS (larger of 2), parent at 2 GiB",
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

/// Workers of the wide-context row: each holds the context at once.
const HOLDERS: usize = 16;
/// How long the inputs of one round wait for each other: far more than a
/// round takes, so that only a lost worker trips it.
const MEET_BOUND: Duration = Duration::from_secs(120);

/// Inputs that meet: each tells the bench, listening at `path`, its pid,
/// then waits (bounded) until the bench has heard from all of them. With
/// `batch_size(1)` no worker holds two of them, so they run on as many
/// workers.
fn meet_at(path: &str) -> u32 {
    use std::io::Write;
    let mut stream = std::os::unix::net::UnixStream::connect(path).expect("reach the bench");
    stream
        .write_all(&std::process::id().to_le_bytes())
        .expect("announce");
    stream.set_read_timeout(Some(MEET_BOUND)).unwrap();
    let mut go = [0];
    stream
        .read_exact(&mut go)
        .expect("the others met within the bound");
    std::process::id()
}

fn meet(path: String) -> u32 {
    meet_at(&path)
}
buckshot::register!(meet);

/// Reads the context (its worker decoded it to call this), then meets.
fn hold_table(table: &ByteBuf, path: String) -> u32 {
    std::hint::black_box(table.len());
    meet_at(&path)
}
buckshot::register!(hold_table);

fn table_len(table: ByteBuf) -> u64 {
    table.len() as u64
}
buckshot::register!(table_len);

/// The bench's end of a meeting of `n` inputs: when the last one arrived,
/// and the pids they told.
struct Meeting {
    path: std::path::PathBuf,
    done: std::sync::mpsc::Receiver<(Instant, Vec<u32>)>,
}

impl Meeting {
    fn new(n: usize) -> Meeting {
        static ROUND: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let round = ROUND.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "buckshot-bench-meet-{}-{round}",
            std::process::id()
        ));
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let (tx, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut met = Vec::new();
            let mut pids = Vec::new();
            while met.len() < n {
                let (mut stream, _) = listener.accept().unwrap();
                let mut pid = [0; 4];
                stream.read_exact(&mut pid).unwrap();
                pids.push(u32::from_le_bytes(pid));
                met.push(stream);
            }
            let all_there = Instant::now();
            for mut stream in met {
                std::io::Write::write_all(&mut stream, b"!").unwrap();
            }
            let _ = tx.send((all_there, pids));
        });
        Meeting { path, done }
    }

    fn path(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    /// When the last input arrived, and the distinct pids, after at most
    /// [`MEET_BOUND`].
    fn wait(self) -> (Instant, usize) {
        let (at, mut pids) = self
            .done
            .recv_timeout(MEET_BOUND)
            .expect("every input met within the bound");
        let _ = std::fs::remove_file(&self.path);
        pids.sort_unstable();
        pids.dedup();
        (at, pids.len())
    }
}

/// A 32 MiB context to 16 workers: from `with_context` to all 16 holding
/// it decoded (each runs one input that reads it and waits for the
/// others), against the same table sent as one input to one worker of the
/// same pool. Medians of several rounds, each with a fresh context.
fn wide_context() {
    const ROUNDS: usize = 5;
    let table = ByteBuf::from((0..32usize << 20).map(|i| i as u8).collect::<Vec<u8>>());
    let pool = Pool::builder()
        .processes(HOLDERS)
        .batch_size(1)
        .build()
        .unwrap();
    // Every worker up, and the one-input path warm.
    let meeting = Meeting::new(HOLDERS);
    let paths = vec![meeting.path(); HOLDERS];
    let waiter = std::thread::spawn(move || meeting.wait());
    let pids: Vec<u32> = pool.map(meet, paths).unwrap().map(Result::unwrap).collect();
    assert_eq!(waiter.join().unwrap().1, HOLDERS, "{pids:?}");
    assert_eq!(pool.call(table_len, table.clone()).unwrap(), 32 << 20);
    let mut wide = Vec::new();
    let mut one = Vec::new();
    for _ in 0..ROUNDS {
        let meeting = Meeting::new(HOLDERS);
        let paths = vec![meeting.path(); HOLDERS];
        // Waited for beside the map, which may need its results read to
        // send more inputs.
        let waiter = std::thread::spawn(move || meeting.wait());
        let start = Instant::now();
        let ctx = pool.with_context(&table);
        let results = ctx.map(hold_table, paths).unwrap();
        assert_eq!(results.map(Result::unwrap).count(), HOLDERS);
        let (all_hold, distinct) = waiter.join().unwrap();
        wide.push(all_hold - start);
        assert_eq!(distinct, HOLDERS, "one input per worker");
        drop(ctx);
        let input = table.clone();
        let (len, took) = time(|| pool.call(table_len, input).unwrap());
        assert_eq!(len, 32 << 20);
        one.push(took);
    }
    let (wide, one) = (median(wide), median(one));
    row(
        "32 MiB context to 16 workers, median of 5",
        format!("{wide:.2?}"),
        wide.as_secs_f64() / one.as_secs_f64(),
        "the table as one input to one worker",
    );
    row(
        "32 MiB as one input to one worker, median of 5",
        format!("{one:.2?}"),
        1.0,
        "the table as one input to one worker",
    );
}

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
