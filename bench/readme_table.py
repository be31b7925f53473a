#!/usr/bin/env python3
"""Runs the comparison benchmark several times and prints what README's
Performance section shows: for each figure, the median of the runs with
their range, for the value and for its ratio to the baseline of the same
run, and the machine's load average around the runs.

    python3 bench/readme_table.py [RUNS] [SECTION...]   # default: 3, every section

Sections are those of `cargo bench -p buckshot-bench -- SECTION`.
"""

import json
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A line of the benchmark: measurement, value (with its unit), ratio, baseline.
LINE = re.compile(r"^(\S.{0,47}?)\s{2,}([\d.,]+)\s?(\S*)\s+([\d.]+)x\s+(.*)$")


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


def main():
    args = sys.argv[1:]
    runs = int(args.pop(0)) if args and args[0].isdigit() else 3
    binary = build()
    figures = {}  # name -> (unit, baseline, values, ratios)
    loads = []
    for run in range(runs):
        loads.append(load())
        out = subprocess.run([binary, *args], cwd=ROOT, check=True,
                             stdout=subprocess.PIPE, text=True).stdout
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


if __name__ == "__main__":
    main()
