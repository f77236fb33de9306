#!/usr/bin/env python3
"""Draws a model's training-log.csv (epoch,loss) as an SVG line chart, standard library only.

usage: plot-loss.py models/NAME/training-log.csv OUT.svg [--title TEXT]
"""
import csv
import math
import sys


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    title = argv[argv.index("--title") + 1] if "--title" in argv else "training loss (MSE on noise)"
    with open(argv[1]) as f:
        rows = [(int(r["epoch"]), float(r["loss"])) for r in csv.DictReader(f)]
    if not rows:
        sys.exit("no rows in " + argv[1])
    w, h, left, right, top, bottom = 640, 360, 70, 20, 40, 50
    xs = [e for e, _ in rows]
    ys = [math.log10(l) for _, l in rows]
    x0, x1 = min(xs), max(max(xs), min(xs) + 1)
    y0, y1 = math.floor(min(ys) * 10) / 10, math.ceil(max(ys) * 10) / 10
    if y1 - y0 < 0.1:
        y1 = y0 + 0.1
    px = lambda x: left + (x - x0) / (x1 - x0) * (w - left - right)
    py = lambda y: top + (y1 - y) / (y1 - y0) * (h - top - bottom)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{w / 2}" y="22" text-anchor="middle" font-size="14">{title}</text>']
    for k in range(int(round((y1 - y0) * 10)) + 1):
        y = y0 + k / 10
        out.append(f'<line x1="{left}" x2="{w - right}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{10 ** y:.3f}</text>')
    for k in range(6):
        x = x0 + (x1 - x0) * k / 5
        out.append(f'<text x="{px(x):.1f}" y="{h - bottom + 18}" text-anchor="middle">{x:.0f}</text>')
    out.append(f'<text x="{w / 2}" y="{h - 10}" text-anchor="middle">epoch</text>')
    out.append(f'<text x="16" y="{h / 2}" text-anchor="middle" transform="rotate(-90 16 {h / 2})">mean loss (log scale)</text>')
    points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys))
    out.append(f'<polyline points="{points}" fill="none" stroke="#1f77b4" stroke-width="2"/>')
    out.append(f'<rect x="{left}" y="{top}" width="{w - left - right}" height="{h - top - bottom}" fill="none" stroke="#333"/>')
    out.append("</svg>")
    with open(argv[2] + ".tmp", "w") as f:
        f.write("\n".join(out) + "\n")
    import os
    os.replace(argv[2] + ".tmp", argv[2])


if __name__ == "__main__":
    main(sys.argv)
