#!/usr/bin/env bash
# Everything an NVIDIA machine is for, in one call from the project root (see
# BENCHMARKS.md, "On an NVIDIA machine"): the adapter, the step profile (stacks included),
# `wgnn bench` (its stacked workloads against lone steps included) and PyTorch's same
# workloads, each into $OUT, with the profile's and the stacks' tables. Nothing is built there: `.gpu/` brings the binary
# and the Vulkan loader (../shared/gpu/prepare.sh, then `cp target/release/wgnn .gpu/`).
set -uo pipefail
: "${OUT:?set OUT to the folder that comes back}"
# shellcheck source=/dev/null
source .gpu/on-device.sh
./.gpu/wgnn info > "$OUT/info.txt" 2>&1
# The adapter must be the NVIDIA GPU, not llvmpipe: a run on the software adapter is useless.
if ! grep -qi nvidia "$OUT/info.txt"; then
  echo "nvidia_run: wgnn does not see an NVIDIA adapter (see info.txt)" >&2
fi
./.gpu/wgnn bench --profile --json > "$OUT/profile.json" 2> "$OUT/profile.err"
./.gpu/wgnn bench --json > "$OUT/wgnn.json" 2> "$OUT/wgnn.err"
python3 benches/torch_reference.py --device cuda > "$OUT/torch.json" 2> "$OUT/torch.err"
python3 scripts/profile_summary.py "$OUT/profile.json" > "$OUT/profile.md" 2>&1
python3 scripts/stack_summary.py "$OUT/wgnn.json" > "$OUT/stack.md" 2>&1
ls -l "$OUT"
