"""Summarize `cargo bench` (criterion) results: for every benchmark measured both on the GPU
and on the CPU reference, the two mean times and the speed-up of the GPU path; then for every
stack of M members (`benches/training.rs`, functions `stack/M` and `lone_steps/M`), one
stacked step against M lone steps and how many times faster the stack is.

Run after `cargo bench`: python3 scripts/bench_summary.py [target/criterion]
Prints a Markdown table (as in BENCHMARKS.md).
"""
import json
import pathlib
import sys


def mean_ns(path):
    with open(path) as f:
        return json.load(f)["mean"]["point_estimate"]


def main():
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
    results = {}
    stacks = {}
    for est in root.glob("**/new/estimates.json"):
        parts = est.relative_to(root).parts[:-2]
        # <group>/<gpu|cpu_reference…>[/<case>] or <group>/<function>
        group, function, case = parts[0], parts[1], "/".join(parts[2:])
        if function in ("stack", "lone_steps"):
            stacks.setdefault((group, int(case)), {})[function] = mean_ns(est)
            continue
        side = "gpu" if function.startswith("gpu") else "cpu" if function.startswith("cpu_reference") else None
        if side is None:
            continue
        # Functions named gpu_forward_train / cpu_reference_forward_train pair up by suffix.
        suffix = function.removeprefix("gpu").removeprefix("cpu_reference").strip("_")
        key = (group, case or suffix)
        results.setdefault(key, {})[side] = mean_ns(est)
    fmt = lambda ns: "—" if ns is None else (f"{ns / 1e6:.3f} ms" if ns >= 1e5 else f"{ns / 1e3:.1f} µs")
    print("| benchmark | GPU | CPU reference | GPU speed-up |")
    print("|---|---|---|---|")
    for (group, case), r in sorted(results.items()):
        gpu, cpu = r.get("gpu"), r.get("cpu")
        ratio = f"{cpu / gpu:.2f}×" if gpu and cpu else "—"
        name = f"{group} {case}".strip()
        print(f"| {name} | {fmt(gpu)} | {fmt(cpu)} | {ratio} |")
    if stacks:
        print()
        print("| benchmark | members | stacked step | M lone steps | stack speed-up |")
        print("|---|---|---|---|---|")
        for (group, members), r in sorted(stacks.items()):
            stack, lone = r.get("stack"), r.get("lone_steps")
            ratio = f"{lone / stack:.2f}×" if stack and lone else "—"
            print(f"| {group} | {members} | {fmt(stack)} | {fmt(lone)} | {ratio} |")


if __name__ == "__main__":
    main()
