#!/usr/bin/env python3
"""Runs the comparison benchmark several times and prints what README's
Performance section shows: for each figure, the median of the runs with
their range, for the value and for its ratio to the baseline of the same
run, and the machine's load average around the runs.

    python3 bench/readme_table.py [RUNS] [SECTION...]   # default: 3, README's sections
    python3 bench/readme_table.py --chart docs/throughput.svg [RUNS] [SECTION...]
    python3 bench/readme_table.py --again [--chart ...]   # the last runs' table again

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

README_SECTIONS = ["tiny", "sizes", "uneven", "startup", "fresh", "wide", "payload", "codec",
                   "streaming", "isolation", "ssh", "wide-context"]

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


# Units a figure may print in from run to run (Rust prints a duration in
# the unit that suits it): each to its family's base, and back.
SCALES = {
    "ns": ("time", 1e-9), "µs": ("time", 1e-6), "us": ("time", 1e-6),
    "ms": ("time", 1e-3), "s": ("time", 1.0),
    "/s": ("rate", 1.0), "k/s": ("rate", 1e3), "M/s": ("rate", 1e6),
}
SHOWN = {
    "time": [(1.0, "s"), (1e-3, "ms"), (1e-6, "µs"), (0.0, "ns")],
    "rate": [(1e6, "M/s"), (1e4, "k/s"), (0.0, "/s")],
}


def in_base(value, unit):
    """The value in its family's base unit, and the family (None: as is)."""
    family, scale = SCALES.get(unit, (None, 1.0))
    return value * scale, family


def shown_unit(family, unit, median):
    """The unit a family's figure is shown in, chosen by its median."""
    if family is None:
        return unit, 1.0
    for floor, name in SHOWN[family]:
        if median >= floor or floor == 0.0:
            return name, SCALES[name][1]


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


def parse(out, figures):
    """Adds the figures of one run's output."""
    for line in out.splitlines():
        match = LINE.match(line)
        if not match:
            continue
        name, value, unit, ratio, baseline = match.groups()
        value, family = in_base(number(value), unit)
        entry = figures.setdefault(name.strip(), (family, unit, baseline.strip(), [], []))
        entry[3].append(value)
        entry[4].append(float(ratio))


def main():
    args = sys.argv[1:]
    again = "--again" in args
    if again:
        args.remove("--again")
    chart = None
    if "--chart" in args:
        at = args.index("--chart")
        chart = args[at + 1]
        del args[at:at + 2]
    runs = int(args.pop(0)) if args and args[0].isdigit() else 3
    # README's sections: all but `context`, whose second row alone takes
    # minutes (a 32 MiB table in every one of 4,000 inputs).
    args = args or README_SECTIONS
    if chart and args and "sizes" not in args:
        args.append("sizes")
    binary = None if again else build()
    figures = {}  # name -> (unit, baseline, values, ratios)
    loads = []
    target = os.path.join(ROOT, "target")
    rust_csvs, python_csvs = [], []
    saved = os.path.join(target, "readme_table")
    if again:
        runs = len([f for f in os.listdir(saved) if f.startswith("run_")])
        with open(os.path.join(saved, "loads")) as f:
            loads = [float(x) for x in f.read().split()]
    os.makedirs(saved, exist_ok=True)
    for run in range(runs):
        if again:
            with open(os.path.join(saved, f"run_{run}.txt")) as f:
                out = f.read()
            if chart:
                rust_csvs.append(os.path.join(target, f"rust_sizes_{run}.csv"))
                python_csvs.append(os.path.join(target, f"python_sizes_{run}.csv"))
            parse(out, figures)
            continue
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
        with open(os.path.join(saved, f"run_{run}.txt"), "w") as f:
            f.write(out)
        parse(out, figures)
        print(f"run {run + 1} of {runs} done", file=sys.stderr)
    if not again:
        loads.append(load())
        with open(os.path.join(saved, "loads"), "w") as f:
            f.write(" ".join(str(x) for x in loads))
    print(f"Medians of {runs} runs (range in parentheses), load average "
          f"{min(loads):.1f}–{max(loads):.1f} (1 min) around the runs, "
          f"{os.cpu_count()} cores.\n")
    print("| measurement | value | ratio | baseline, same run |")
    print("|---|---|---|---|")
    for name, (family, unit, baseline, values, ratios) in figures.items():
        unit, scale = shown_unit(family, unit, statistics.median(values))
        values = [v / scale for v in values]
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
