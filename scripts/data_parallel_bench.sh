#!/usr/bin/env bash
# Per-step cost of data-parallel training on this machine: `wgnn bench --data-parallel` alone
# and under `mpirun -np 2`, in interleaved rounds (the machine is shared and noisy), as JSON
# into bench-results/data-parallel/. Needs a `--features mpi` build and Open MPI.
#   bash scripts/data_parallel_bench.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
wgnn=target/release/wgnn
out=bench-results/data-parallel
mkdir -p "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none
for round in $(seq 1 "$rounds"); do
  "$wgnn" bench --data-parallel --json > "$out/ranks1-$round.json"
  mpirun --bind-to none -np 2 "$wgnn" bench --data-parallel --json > "$out/ranks2-$round.json"
done
python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def load(ranks, r):
    return {(x["features"], x["batch"], x["sync_bn"]): x for x in json.load(open(f"{out}/ranks{ranks}-{r}.json"))}
keys = sorted(load(2, 1))
print("| lecture MLP | batch per rank | ranks | ms/step | samples/s | step ÷ 1 rank's | exchanges (KiB) | device wait ms | host ms | collectives ms | lone all-reduce µs |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for f, b, sync in keys:
    one = [load(1, r)[(f, b, False)] for r in range(1, rounds + 1)]
    two = [load(2, r)[(f, b, sync)] for r in range(1, rounds + 1)]
    med = lambda rows, k: statistics.median(x[k] for x in rows)
    ratio = statistics.median(t["seconds_per_step"] / o["seconds_per_step"] for t, o in zip(two, one))
    if not sync:
        print(f"| {f} inputs | {b} | 1 | {1e3*med(one,'seconds_per_step'):.2f} | {med(one,'samples_per_second'):,.0f} | 1 | — | — | — | — | — |")
    print(f"| {f} inputs | {b} | 2{' --sync-bn' if sync else ''} | {1e3*med(two,'seconds_per_step'):.2f} | {med(two,'samples_per_second'):,.0f} | {ratio:.2f}× | {two[0]['exchanges_per_step']} ({two[0]['exchanged_bytes_per_step']/1024:.1f}) | {1e3*med(two,'exchange_wait_seconds_per_step'):.2f} | {1e3*med(two,'exchange_host_seconds_per_step'):.2f} | {1e3*med(two,'collective_seconds_per_step'):.2f} | {1e6*med(two,'all_reduce_seconds'):.0f} |")
PY
