#!/usr/bin/env python3
"""Markdown tables from `wgnn bench --profile --json`: one line per step (dispatches, GPU
time, the host's record, submit and completion times), then each step's dispatches.

    python3 scripts/profile_summary.py profile.json [more.json ...]

With several files (rounds of the same build), each figure is their median."""

import json
import statistics
import sys


def load(path):
    with open(path) as f:
        data = json.load(f)
    return data["adapter"], {
        (s["mode"], s["features"], s["batch"]): s["profile"] for s in data["steps"]
    }


def main(paths):
    rounds = [load(p) for p in paths]
    adapter = rounds[0][0]
    keys = list(rounds[0][1])
    us = lambda values: statistics.median(values) * 1e6
    print(f"Adapter: {adapter}; {len(rounds)} round(s), medians.\n")
    print("| step | dispatches | GPU (µs) | record (µs) | submit (µs) | submit → done (µs) |")
    print("|---|---|---|---|---|---|")
    for key in keys:
        profiles = [r[1][key] for r in rounds]
        mode, features, batch = key
        print(
            f"| {mode}, {features} inputs, batch {batch} | {len(profiles[0]['dispatches'])} "
            f"| {us([p['gpu_seconds'] for p in profiles]):,.0f} "
            f"| {us([p['encode_seconds'] for p in profiles]):,.0f} "
            f"| {us([p['submit_seconds'] for p in profiles]):,.0f} "
            f"| {us([p['complete_seconds'] for p in profiles]):,.0f} |"
        )
    for key in keys:
        profiles = [r[1][key] for r in rounds]
        mode, features, batch = key
        clock = profiles[0]["clock"]
        print(f"\n{mode}, {features} inputs, batch {batch} ({clock}):\n")
        print("| # | kernel | µs | share |")
        print("|---|---|---|---|")
        times = [
            us([p["dispatches"][i]["seconds"] for p in profiles])
            for i in range(len(profiles[0]["dispatches"]))
        ]
        total = sum(times) or 1.0
        for i, (d, t) in enumerate(zip(profiles[0]["dispatches"], times)):
            print(f"| {i + 1} | `{d['kernel']}` | {t:,.0f} | {100 * t / total:.0f} % |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: profile_summary.py profile.json [more.json ...]")
    main(sys.argv[1:])
