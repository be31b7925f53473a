#!/usr/bin/env python3
"""Runs the comparison benchmark several times and prints what README's
Performance section shows: for each figure, the median of the runs with
their range, for the value and for its ratio to the baseline of the same
run, and the machine's load average around the runs.

    python3 bench/readme_table.py [RUNS] [SECTION...]   # default: 3, every section
    python3 bench/readme_table.py --chart docs/throughput.svg [RUNS] [SECTION...]

Sections are those of `cargo bench -p buckshot-bench -- SECTION`. With
--chart, each run also writes the throughput-against-task-size figures
(the `sizes` section, and Python's pools through bench/python_peers.py),
and the chart is drawn from their medians by bench/chart.py.
"""

import csv
import json
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A line of the benchmark: measurement, value (with its unit), ratio, baseline.
LINE = re.compile(r"^(\S.{0,69}?)\s{2,}([\d.,]+)\s?(\S*)\s+([\d.]+)x\s+(.*)$")


def build(env=None):
    """Builds the comparison benchmark (with `env`, if given) and returns
    the path of its binary."""
    out = subprocess.run(
        ["cargo", "bench", "-p", "buckshot-bench", "--no-run", "--message-format=json"],
        cwd=ROOT, env=env, check=True, stdout=subprocess.PIPE, text=True,
    ).stdout
    for line in out.splitlines():
        message = json.loads(line)
        if message.get("reason") == "compiler-artifact" and message.get("executable") \
                and message["target"]["name"] == "compare":
            return message["executable"]
    sys.exit("no compare benchmark was built")


def load():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def number(text):
    return float(text.replace(",", ""))


def spread(values, digits, unit=""):
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.{digits}f}{unit}"
    return f"{med:.{digits}f}{unit} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def median_csv(paths, out):
    """Writes the median of each cell of same-shaped CSV files."""
    tables = []
    for path in paths:
        with open(path) as f:
            tables.append(list(csv.DictReader(f)))
    fields = list(tables[0][0].keys())
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for rows in zip(*tables):
            writer.writerow({k: statistics.median(float(r[k]) for r in rows) for k in fields})


def main():
    args = sys.argv[1:]
    chart = None
    if "--chart" in args:
        at = args.index("--chart")
        chart = args[at + 1]
        del args[at:at + 2]
    runs = int(args.pop(0)) if args and args[0].isdigit() else 3
    if chart and args and "sizes" not in args:
        args.append("sizes")
    binary = build()
    figures = {}  # name -> (unit, baseline, values, ratios)
    loads = []
    target = os.path.join(ROOT, "target")
    rust_csvs, python_csvs = [], []
    for run in range(runs):
        loads.append(load())
        extra = []
        if chart:
            rust_csvs.append(os.path.join(target, f"rust_sizes_{run}.csv"))
            extra = ["--csv", rust_csvs[-1]]
        out = subprocess.run([binary, *args, *extra], cwd=ROOT, check=True,
                             stdout=subprocess.PIPE, text=True).stdout
        if chart:
            python_csvs.append(os.path.join(target, f"python_sizes_{run}.csv"))
            subprocess.run([sys.executable, os.path.join(ROOT, "bench", "python_peers.py"),
                            "--csv", python_csvs[-1]], cwd=ROOT, check=True,
                           stdout=subprocess.DEVNULL)
        for line in out.splitlines():
            match = LINE.match(line)
            if not match:
                continue
            name, value, unit, ratio, baseline = match.groups()
            entry = figures.setdefault(name.strip(), (unit, baseline.strip(), [], []))
            entry[2].append(number(value))
            entry[3].append(float(ratio))
        print(f"run {run + 1} of {runs} done", file=sys.stderr)
    loads.append(load())
    print(f"Medians of {runs} runs (range in parentheses), load average "
          f"{min(loads):.1f}–{max(loads):.1f} (1 min) around the runs, "
          f"{os.cpu_count()} cores.\n")
    print("| measurement | value | ratio | baseline, same run |")
    print("|---|---|---|---|")
    for name, (unit, baseline, values, ratios) in figures.items():
        digits = 2 if max(values) < 100 else 0
        unit = f" {unit}" if unit else ""
        print(f"| {name} | {spread(values, digits, unit)} | {spread(ratios, 2, 'x')} | {baseline} |")
    if chart:
        rust, python = os.path.join(target, "rust_sizes.csv"), os.path.join(target, "python_sizes.csv")
        median_csv(rust_csvs, rust)
        median_csv(python_csvs, python)
        subprocess.run([sys.executable, os.path.join(ROOT, "bench", "chart.py"), rust, python,
                        os.path.join(ROOT, chart)], cwd=ROOT, check=True)
        print(f"\nChart: {chart}, from the medians of {runs} runs.")


if __name__ == "__main__":
    main()
