#!/usr/bin/env python3
"""Python's process pools on buckshot's benchmark workloads, for comparison.

Runs multiprocessing.Pool.map (default chunksize) and
concurrent.futures.ProcessPoolExecutor.map with 2 processes on:
  1. tiny tasks: identity on 1,000,000 ints (tasks/s; serial in-process as
     the baseline);
  2. CPU-bound, uneven: harmonic sums whose cost grows with x, about 2 s
     serial (speed-up over serial);
  3. start-up: pool creation to the first result, median of 50;
and, with --csv PATH, throughput against task size (tasks of fixed CPU work
taking 1, 10, 100 and 1000 us on one core) for the chart.

Pool.map's default chunksize is ceil(len / (4 * processes)): 125,000 for the
tiny tasks. `cargo bench -p buckshot-bench` runs the tiny-task and start-up
rows itself, in the same run as buckshot; this script adds the other pools
and the chart's line.

Usage: python3 bench/python_peers.py [--csv target/python_sizes.csv]
"""

import concurrent.futures as cf
import multiprocessing as mp
import statistics
import sys
import time

PROCESSES = 2


def identity(x):
    return x


def harmonic(x):
    total = 0.0
    for d in range(1, x + 1):
        total += 1.0 / d
    return total


def work(loops):
    """A fixed amount of CPU work (the Rust bench's multiply-add, here in
    Python): time spent descheduled does not count as work."""
    x = loops
    for _ in range(loops):
        x = (x * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
    return x


def loops_per_micro():
    """Loops of work() per microsecond on one core: the fastest of five."""
    loops = 200_000
    fastest = min(timed(lambda: work(loops))[1] for _ in range(5))
    return max(1, round(loops / (fastest * 1e6)))


def rate(n, seconds):
    return n / seconds


def row(what, value, ratio, baseline):
    print(f"{what:<44} {value:>14} {ratio:>9.2f}x  {baseline}")


def timed(f):
    start = time.perf_counter()
    out = f()
    return out, time.perf_counter() - start


def tiny():
    n = 1_000_000
    inputs = range(n)
    _, serial = timed(lambda: [identity(x) for x in inputs])
    with mp.Pool(PROCESSES) as pool:
        pool.map(identity, range(10_000))
        out, pool_time = timed(lambda: pool.map(identity, inputs))
        assert len(out) == n
        _, one_time = timed(lambda: pool.map(identity, range(100_000), chunksize=1))
    with cf.ProcessPoolExecutor(PROCESSES) as executor:
        list(executor.map(identity, range(1000)))
        out, executor_time = timed(lambda: list(executor.map(identity, range(100_000))))
        assert len(out) == 100_000
    serial_rate = rate(n, serial)
    row("tiny tasks: serial, in process", f"{serial_rate / 1e6:.2f}M/s", 1.0, "serial")
    for label, r in [
        ("tiny tasks: Pool.map, chunksize 125,000", rate(n, pool_time)),
        ("tiny tasks: Pool.map, chunksize=1", rate(100_000, one_time)),
        ("tiny tasks: ProcessPoolExecutor.map", rate(100_000, executor_time)),
    ]:
        row(label, f"{r / 1e6:.3f}M/s", r / serial_rate, "serial")


def uneven():
    # About 2 s of serial work.
    _, probe = timed(lambda: harmonic(2_000_000))
    terms_per_sec = 2e6 / probe
    n = max(1000, int((2 * 2.0 * terms_per_sec) ** 0.5))
    inputs = list(range(1, n + 1))
    serial, serial_time = timed(lambda: [harmonic(x) for x in inputs])
    with mp.Pool(PROCESSES) as pool:
        out, pool_time = timed(lambda: pool.map(harmonic, inputs))
        assert out == serial
    with cf.ProcessPoolExecutor(PROCESSES) as executor:
        out, executor_time = timed(lambda: list(executor.map(harmonic, inputs)))
        assert out == serial
    row(f"uneven harmonic, {n} tasks: serial", f"{serial_time:.2f}s", 1.0, "serial")
    row("uneven harmonic: Pool.map speed-up", f"{pool_time:.2f}s", serial_time / pool_time, "serial")
    row(
        "uneven harmonic: ProcessPoolExecutor",
        f"{executor_time:.2f}s",
        serial_time / executor_time,
        "serial",
    )


def startup():
    pool_times, executor_times = [], []
    for _ in range(50):
        start = time.perf_counter()
        with mp.Pool(PROCESSES) as pool:
            pool.apply(identity, (1,))
            pool_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        with cf.ProcessPoolExecutor(PROCESSES) as executor:
            executor.submit(identity, 1).result()
            executor_times.append(time.perf_counter() - start)
    pool_median = statistics.median(pool_times)
    executor_median = statistics.median(executor_times)
    row("start-up to first result: Pool", f"{pool_median * 1e3:.2f}ms", 1.0, "Pool")
    row(
        "start-up to first result: ProcessPoolExecutor",
        f"{executor_median * 1e3:.2f}ms",
        executor_median / pool_median,
        "Pool",
    )


def sizes(csv_path):
    lines = ["task_us,python"]
    loops = loops_per_micro()
    with mp.Pool(PROCESSES) as pool:
        for micros in [1, 10, 100, 1000]:
            n = min(100_000, max(200, 400_000 // micros))
            inputs = [micros * loops] * n
            pool.map(work, inputs[:100])
            out, elapsed = timed(lambda: pool.map(work, inputs))
            assert len(out) == n
            r = rate(n, elapsed)
            row(f"{micros} us tasks: Python Pool.map", f"{r / 1e6:.4f}M/s", 1.0, "itself")
            lines.append(f"{micros},{r:.0f}")
    with open(csv_path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    args = sys.argv[1:]
    csv_path = args[args.index("--csv") + 1] if "--csv" in args else None
    print(f"Python {sys.version.split()[0]} process pools, {PROCESSES} processes")
    print(f"{'measurement':<44} {'value':>14} {'ratio':>10}  baseline")
    tiny()
    uneven()
    startup()
    if csv_path:
        sizes(csv_path)


if __name__ == "__main__":
    main()
