#!/usr/bin/env python3
"""The portable backend (macOS, FreeBSD) against the native one, on Linux.

Builds the comparison benchmark twice, natively and with
`--cfg buckshot_portable`, then runs the same sections from both builds
alternately (3 times each by default) and prints, for each figure, the
median portable/native ratio with its range. Each build's own figures
are ratios against baselines of its own run as usual (the floor,
Python), so the ratio of ratios compares the backends on the same
workload under the same load.

    python3 bench/backends.py [RUNS] [SECTION...]   # default: 3 tiny startup fresh
"""

import os
import re
import statistics
import subprocess
import sys

import readme_table

ROOT = readme_table.ROOT


def build(portable):
    env = dict(os.environ)
    if portable:
        env["RUSTFLAGS"] = (env.get("RUSTFLAGS", "") + " --cfg buckshot_portable").strip()
        env["CARGO_TARGET_DIR"] = os.path.join(ROOT, "target", "portable")
    return readme_table.build(env)


# A line of the benchmark: name, value, ratio, baseline.
LINE = re.compile(r"^(\S.{0,47}?)\s{2,}([\d.,]+\s?\S*)\s+([\d.]+)x")


def figures(binary, sections):
    out = subprocess.run([binary, *sections], cwd=ROOT, check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    found = {}
    for line in out.splitlines():
        match = LINE.match(line)
        if match:
            found[match.group(1).strip()] = float(match.group(3))
    return found


def main():
    args = sys.argv[1:]
    runs = int(args.pop(0)) if args and args[0].isdigit() else 3
    sections = args or ["tiny", "startup", "fresh"]
    binaries = {"native": build(False), "portable": build(True)}
    results = {"native": [], "portable": []}
    for run in range(runs):
        for name, binary in binaries.items():
            results[name].append(figures(binary, sections))
            print(f"run {run + 1} {name}: {results[name][-1]}", file=sys.stderr)
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"portable/native, {runs} alternating runs each, load average {' '.join(load)} at the end")
    print(f"{'figure (each a ratio to its own run baseline)':<52} {'native':>8} {'portable':>9} {'portable/native':>26}")
    for figure in results["native"][0]:
        pairs = [(n[figure], p[figure]) for n, p in zip(results["native"], results["portable"])
                 if figure in n and figure in p]
        if not pairs:
            continue
        ratios = [p / n for n, p in pairs if n > 0 and p > 0]
        if not ratios:
            continue
        native = statistics.median(n for n, _ in pairs)
        portable = statistics.median(p for _, p in pairs)
        spread = f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
        print(f"{figure:<52} {native:>7.2f}x {portable:>8.2f}x {spread:>26}")


if __name__ == "__main__":
    main()
