#!/usr/bin/env python3
"""Markdown table of the stacked workloads in `wgnn bench --json` output: for each mode and
member count M, the stacked step's time and member-samples/s, the lone model's samples/s
timed in the same rounds, and the ratio of the stack to M lone steps.

    python3 scripts/stack_summary.py wgnn.json [more.json ...]

With several files (runs of the same build), each figure is their median and the ratios of
each run are listed before it; ratios are never formed across runs."""

import json
import re
import statistics
import sys

NAME = re.compile(r"^mlp(\d+)_stack(\d+)_(train|eval)_b(\d+)$")


def load(path):
    with open(path) as f:
        records = {r["name"]: r for r in json.load(f)}
    stacks = {}
    for name, r in records.items():
        m = NAME.match(name)
        if not m:
            continue
        features, members, mode, batch = int(m[1]), int(m[2]), m[3], int(m[4])
        stacks[(mode, features, batch, members)] = {
            "rate": r["value"],
            "vs_lone": records[f"{name}_vs_lone"]["value"],
            "lone": records[f"{name}_lone"]["value"],
            "device": r["device"],
        }
    return stacks


def main(paths):
    runs = [load(p) for p in paths]
    keys = sorted(
        set().union(*runs), key=lambda k: (k[0] != "train", k[1], k[2], k[3])
    )
    if not keys:
        sys.exit("no stacked workloads (mlp…_stack…) in " + ", ".join(paths))
    print(f"{runs[0][keys[0]]['device']}; {len(runs)} run(s), medians.\n")
    print(
        "| step | members | step time (ms) | member-samples/s | lone samples/s "
        "| stack / M lone steps |"
    )
    print("|---|---|---|---|---|---|")
    for key in keys:
        mode, features, batch, members = key
        figures = [run[key] for run in runs if key in run]
        rate = statistics.median(f["rate"] for f in figures)
        lone = statistics.median(f["lone"] for f in figures)
        ratios = [f["vs_lone"] for f in figures]
        listed = ", ".join(f"{r:.2f}" for r in ratios)
        ratio = f"{listed} (**{statistics.median(ratios):.2f}×**)" if len(ratios) > 1 else f"{ratios[0]:.2f}×"
        print(
            f"| {mode}, {features} inputs, batch {batch} | {members} "
            f"| {members * batch / rate * 1e3:,.2f} | {rate:,.0f} | {lone:,.0f} | {ratio} |"
        )


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: stack_summary.py wgnn.json [more.json ...]")
    main(sys.argv[1:])
