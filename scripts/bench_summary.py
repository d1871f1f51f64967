"""Summarize `cargo bench` (criterion) results: for every benchmark measured both on the GPU
and on the CPU reference, the two mean times and the speed-up of the GPU path.

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
    for est in root.glob("**/new/estimates.json"):
        parts = est.relative_to(root).parts[:-2]
        # <group>/<gpu|cpu_reference…>[/<case>] or <group>/<function>
        group, function, case = parts[0], parts[1], "/".join(parts[2:])
        side = "gpu" if function.startswith("gpu") else "cpu" if function.startswith("cpu_reference") else None
        if side is None:
            continue
        # Functions named gpu_forward_train / cpu_reference_forward_train pair up by suffix.
        suffix = function.removeprefix("gpu").removeprefix("cpu_reference").strip("_")
        key = (group, case or suffix)
        results.setdefault(key, {})[side] = mean_ns(est)
    print("| benchmark | GPU | CPU reference | GPU speed-up |")
    print("|---|---|---|---|")
    for (group, case), r in sorted(results.items()):
        gpu, cpu = r.get("gpu"), r.get("cpu")
        fmt = lambda ns: "—" if ns is None else (f"{ns / 1e6:.3f} ms" if ns >= 1e5 else f"{ns / 1e3:.1f} µs")
        ratio = f"{cpu / gpu:.2f}×" if gpu and cpu else "—"
        name = f"{group} {case}".strip()
        print(f"| {name} | {fmt(gpu)} | {fmt(cpu)} | {ratio} |")


if __name__ == "__main__":
    main()
