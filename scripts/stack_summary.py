#!/usr/bin/env python3
"""Markdown table of the stacked workloads in `wgnn bench --json` output: for each mode and
member count M, the stacked step's time and member-samples/s, the lone model's samples/s
timed in the same rounds, and the ratio of the stack to M lone steps. Then the cost model
T(M) = F + M·A fitted to each mode's step times (F: what a step costs whatever its members,
A: what each member adds; fitted on relative errors), where it bends (M* = F / A) and the
most a stack can gain over lone steps (T(1) / A = 1 + F / A), next to the queue's fixed
cost alone (the submit and the step's dispatches, from `submit_wait_us` and `dispatch_us`).

    python3 scripts/stack_summary.py [--fit-from M] wgnn.json [more.json ...]

--fit-from M fits the model to the stacks of at least M members only (a point that fell in
one of the machine's slow stretches would otherwise pull the fit).

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
            "dispatches": records.get(f"{name}_dispatches_per_step", {}).get("value"),
            "device": r["device"],
        }
    queue = {k: records[k]["value"] for k in ("dispatch_us", "submit_wait_us") if k in records}
    return stacks, queue


def fit(points):
    """F and A of T = F + M·A minimizing the squared relative errors over (M, T) points."""
    # Weighted least squares with weights 1/T²: solve the 2×2 normal equations.
    sw = sum(1 / t**2 for _, t in points)
    sm = sum(m / t**2 for m, t in points)
    smm = sum(m * m / t**2 for m, t in points)
    st = sum(1 / t for _, t in points)
    smt = sum(m / t for m, t in points)
    det = sw * smm - sm * sm
    return (st * smm - sm * smt) / det, (sw * smt - sm * st) / det


def main(paths, fit_from=1):
    loaded = [load(p) for p in paths]
    runs = [stacks for stacks, _ in loaded]
    queues = [queue for _, queue in loaded]
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
    queue = {
        k: statistics.median(q[k] for q in queues if k in q)
        for k in ("dispatch_us", "submit_wait_us")
        if any(k in q for q in queues)
    }
    print(
        "\n| step | F (ms) | A (ms per member) | bend M* = F / A | most gain 1 + F / A "
        "| the queue's fixed cost (ms) |"
    )
    print("|---|---|---|---|---|---|")
    for mode, features, batch in sorted({k[:3] for k in keys}, key=lambda k: k[0] != "train"):
        points, dispatches = [], None
        for key in keys:
            if key[:3] != (mode, features, batch):
                continue
            members = key[3]
            if members < fit_from:
                continue
            rate = statistics.median(run[key]["rate"] for run in runs if key in run)
            points.append((members, members * batch / rate))
            dispatches = dispatches or runs[0].get(key, {}).get("dispatches")
        if len(points) < 2:
            continue
        f, a = fit(points)
        fixed = "—"
        if dispatches and len(queue) == 2:
            fixed_s = (queue["submit_wait_us"] + dispatches * queue["dispatch_us"]) * 1e-6
            fixed = (
                f"{fixed_s * 1e3:.3f} ({queue['submit_wait_us']:.0f} µs + {dispatches:.0f} × "
                f"{queue['dispatch_us']:.1f} µs)"
            )
        print(
            f"| {mode}, {features} inputs, batch {batch} | {f * 1e3:.3f} | {a * 1e3:.3f} "
            f"| {f / a:.2f} | {1 + f / a:.2f}× | {fixed} |"
        )


if __name__ == "__main__":
    args = sys.argv[1:]
    fit_from = 1
    if args[:1] == ["--fit-from"] and len(args) > 1:
        fit_from, args = int(args[1]), args[2:]
    if not args:
        sys.exit("usage: stack_summary.py [--fit-from M] wgnn.json [more.json ...]")
    main(args, fit_from)
