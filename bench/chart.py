#!/usr/bin/env python3
"""Draws throughput against task size as an SVG, from the CSV files that
`cargo bench -p buckshot-bench -- sizes --csv "$PWD/target/rust_sizes.csv"` and
`python3 bench/python_peers.py --csv target/python_sizes.csv` write (both
run from the repository's root).

Usage: python3 bench/chart.py target/rust_sizes.csv target/python_sizes.csv docs/throughput.svg

Plain SVG, no plotting library: log-log axes, one line per pool.
"""

import csv
import math
import sys

COLORS = {
    "buckshot": "#d62728",
    "rayon": "#1f77b4",
    "procspawn": "#2ca02c",
    "python": "#9467bd",
}
WIDTH, HEIGHT = 640, 400
LEFT, RIGHT, TOP, BOTTOM = 70, 130, 30, 50


def read(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    series = {}
    for row in rows:
        size = float(row["task_us"])
        for name, value in row.items():
            if name != "task_us":
                series.setdefault(name, []).append((size, float(value)))
    return series


def main():
    rust, python, out = sys.argv[1:4]
    series = read(rust)
    series.update(read(python))
    xs = [x for points in series.values() for x, _ in points]
    ys = [y for points in series.values() for _, y in points if y > 0]
    x_lo, x_hi = math.log10(min(xs)), math.log10(max(xs))
    y_lo, y_hi = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))

    def px(x):
        return LEFT + (math.log10(x) - x_lo) / (x_hi - x_lo) * (WIDTH - LEFT - RIGHT)

    def py(y):
        return HEIGHT - BOTTOM - (math.log10(y) - y_lo) / (y_hi - y_lo) * (HEIGHT - TOP - BOTTOM)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{LEFT}" y="18" font-size="14">Tasks per second against task size, 2 processes or threads</text>',
    ]
    for exponent in range(int(y_lo), int(y_hi) + 1):
        y = py(10**exponent)
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">1e{exponent}</text>')
    for x in sorted(set(xs)):
        parts.append(f'<text x="{px(x):.1f}" y="{HEIGHT - BOTTOM + 18}" text-anchor="middle">{x:g} µs</text>')
    parts.append(f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 10}" text-anchor="middle">task size</text>')
    for i, (name, points) in enumerate(sorted(series.items())):
        color = COLORS.get(name, "black")
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in sorted(points) if y > 0)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, y in points:
            parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}"/>')
        legend_y = TOP + 20 + 20 * i
        parts.append(
            f'<line x1="{WIDTH - RIGHT + 15}" x2="{WIDTH - RIGHT + 35}" y1="{legend_y}" y2="{legend_y}" '
            f'stroke="{color}" stroke-width="2"/>'
        )
        parts.append(f'<text x="{WIDTH - RIGHT + 40}" y="{legend_y + 4}">{name}</text>')
    parts.append("</svg>")
    with open(out, "w") as f:
        f.write("\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
