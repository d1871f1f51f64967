#!/usr/bin/env python3
"""Markdown tables from `wgnn bench --profile --json`: one line per step (dispatches, GPU
time, the host's record, submit and completion times), then each step's dispatches. Stacked
steps (M members in one plan) are named by their member count; files written before stacks
were profiled read as lone steps.

    python3 scripts/profile_summary.py profile.json [more.json ...]

With several files (rounds of the same build), each figure is their median."""

import json
import statistics
import sys


def load(path):
    with open(path) as f:
        data = json.load(f)
    return data["adapter"], {
        (s["mode"], s["features"], s["batch"], s.get("members", 1)): s["profile"]
        for s in data["steps"]
    }


def title(key):
    mode, features, batch, members = key
    stack = f", a stack of {members}" if members > 1 else ""
    return f"{mode}, {features} inputs, batch {batch}{stack}"


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
        print(
            f"| {title(key)} | {len(profiles[0]['dispatches'])} "
            f"| {us([p['gpu_seconds'] for p in profiles]):,.0f} "
            f"| {us([p['encode_seconds'] for p in profiles]):,.0f} "
            f"| {us([p['submit_seconds'] for p in profiles]):,.0f} "
            f"| {us([p['complete_seconds'] for p in profiles]):,.0f} |"
        )
    for key in keys:
        profiles = [r[1][key] for r in rounds]
        clock = profiles[0]["clock"]
        print(f"\n{title(key)} ({clock}):\n")
        print("| # | kernel | µs | share |")
        print("|---|---|---|---|")
        times = [
            us([p["dispatches"][i]["seconds"] for p in profiles])
            for i in range(len(profiles[0]["dispatches"]))
        ]
        total = sum(times) or 1.0
        for i, (d, t) in enumerate(zip(profiles[0]["dispatches"], times)):
            print(f"| {i + 1} | `{d['kernel']}` | {t:,.0f} | {100 * t / total:.0f} % |")
    growth(rounds, keys, us)


def growth(rounds, keys, us):
    """For each stacked step, how each dispatch grew against the lone step of the same mode,
    inputs and batch: the stack's time, the lone one's, their ratio and the ratio per member
    (1/M where a dispatch costs the same for M members as for one, 1 where it costs M
    times as much)."""
    for key in keys:
        mode, features, batch, members = key
        lone_key = (mode, features, batch, 1)
        if members == 1 or lone_key not in keys:
            continue
        stacked = [r[1][key] for r in rounds]
        lone = [r[1][lone_key] for r in rounds]
        print(f"\n{title(key)} against the lone step:\n")
        print("| # | kernel | lone (µs) | stack (µs) | stack / lone | per member |")
        print("|---|---|---|---|---|---|")
        rows = zip(stacked[0]["dispatches"], lone[0]["dispatches"])
        for i, (d, l) in enumerate(rows):
            if d["kernel"] != l["kernel"]:
                print(f"| {i + 1} | `{d['kernel']}` / `{l['kernel']}` | — | — | — | — |")
                continue
            t_stack = us([p["dispatches"][i]["seconds"] for p in stacked])
            t_lone = us([p["dispatches"][i]["seconds"] for p in lone])
            ratio = t_stack / t_lone if t_lone else float("nan")
            print(
                f"| {i + 1} | `{d['kernel']}` | {t_lone:,.0f} | {t_stack:,.0f} "
                f"| {ratio:.1f}× | {ratio / members:.2f} |"
            )
        span = lambda ps: us([p["complete_seconds"] for p in ps])
        t_stack, t_lone = span(stacked), span(lone)
        print(
            f"| | submit → done | {t_lone:,.0f} | {t_stack:,.0f} | {t_stack / t_lone:.1f}× "
            f"| {t_stack / t_lone / members:.2f} |"
        )


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: profile_summary.py profile.json [more.json ...]")
    main(sys.argv[1:])
