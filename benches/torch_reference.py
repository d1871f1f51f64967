#!/usr/bin/env python3
"""PyTorch reference numbers for `wgnn bench --json`.

Runs the same workloads as `wgnn bench --json`, in PyTorch, and prints the
same JSON to stdout: an array of objects

    {"name": str, "value": float, "unit": str, "device": str}

so that one `wgnn bench --json > wgnn.json` and one run of this script can be
compared record by record (matched on "name").  Progress goes to stderr.

Usage:

    python3 benches/torch_reference.py --device cpu --threads 2 > torch.json
    python3 benches/torch_reference.py --device cuda > torch_cuda.json
    python3 benches/torch_reference.py --device cpu --threads 2 --quick      # smoke test
    python3 benches/torch_reference.py --only matmul_1024,mlp784_train_b128

Options: --device cpu|cuda (default cpu), --threads N (torch.set_num_threads;
default: torch's own default, which is recorded in "device"), --quick (short
timing rounds), --seed S (default 0), --only NAME[,NAME...] (run a subset).

Workloads (all fp32; TF32 is switched off everywhere:
torch.backends.cuda.matmul.allow_tf32 = False,
torch.backends.cudnn.allow_tf32 = False,
torch.set_float32_matmul_precision("highest")):

  matmul_512, matmul_1024, matmul_2048   GFLOP/s
      square n x n fp32 matmul, counted as 2*n^3 flops.  After warm-up, each
      timed round repeats the matmul enough times to last >= 0.5 s (--quick:
      >= 0.1 s); the value is the median of 3 rounds.

  torch_matmul_peak                      GFLOP/s
      the best (largest median) of the matmul rates at n = 1024, 2048, 4096
      (and 8192 on CUDA), measured as above.  This is PyTorch's practical fp32
      peak.  `fma_peak` is deliberately NOT emitted: wgnn measures that with
      its own register-bound FMA kernel, which has no PyTorch counterpart.

  mlp784_train_b128, mlp784_train_b1024, mlp3072_train_b128   samples/s
      the lecture's MLP
          Flatten, Linear(F,64), BatchNorm1d(64), ReLU, Dropout(0.2),
          Linear(64,32), BatchNorm1d(32), ReLU, Dropout(0.2), Linear(32,10)
      with CrossEntropyLoss and SGD(lr=0.01, momentum=0.9), in train mode.
      The data is a pool of 8 random batches (x = randn, y = randint(0, 10))
      made on the device beforehand and cycled.  One step is
          opt.zero_grad(set_to_none=True); loss = crit(model(x), y);
          loss.backward(); opt.step()
      with no per-step loss.item() (no per-step sync).  After 10 warm-up steps,
      each timed round runs N steps lasting >= 1 s (--quick: >= 0.2 s) and
      synchronizes at the end; value = N * batch / time, median of 3 rounds.

  mlp784_eval_b1024                      samples/s
      the same model (F = 784) in model.eval() under torch.no_grad(), forward
      only, batch 1024, timed like the training workloads.

  first_step_ms                          ms
      wall time from constructing a fresh model + optimizer (F = 784,
      batch 128; torch already imported and the data already on the device)
      to the end of its first training step, synchronized.  It is measured
      first, before any other workload, so no kernel/cuBLAS/allocator state
      from the other benchmarks is warm.  On CUDA one unrelated tiny CUDA op
      is run (and synchronized) before the clock starts, so CUDA context
      creation is excluded; lazy per-kernel / cuBLAS / oneDNN initialisation
      is included, as it is part of a first step.  Likewise excluded: the
      one-time Python import that the first torch.optim optimizer triggers
      (~900 modules, torch._dynamo and sympy among them, about 1 s on a slow
      CPU), by building a throwaway SGD over an unrelated 1-element tensor
      before the clock starts -- that is import time, not model set-up.

Each workload re-seeds torch with --seed before it runs.
"""

import argparse
import json
import math
import platform
import statistics
import sys
import time

import torch
import torch.nn as nn

NAMES = [
    "torch_matmul_peak",
    "matmul_512",
    "matmul_1024",
    "matmul_2048",
    "mlp784_train_b128",
    "mlp784_train_b1024",
    "mlp3072_train_b128",
    "mlp784_eval_b1024",
    "first_step_ms",
]

ROUNDS = 3
POOL = 8
WARMUP_STEPS = 10


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def cpu_model_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def device_string(device):
    if device.type == "cuda":
        return "torch {} cuda ({})".format(
            torch.__version__, torch.cuda.get_device_name(device))
    return "torch {} cpu ({} threads, {})".format(
        torch.__version__, torch.get_num_threads(), cpu_model_name())


class Bench:
    def __init__(self, device, quick, seed):
        self.device = device
        self.quick = quick
        self.seed = seed
        self.matmul_min_s = 0.1 if quick else 0.5
        self.mlp_min_s = 0.2 if quick else 1.0
        self._matmul_cache = {}

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reseed(self):
        torch.manual_seed(self.seed)

    def run_n(self, fn, n):
        """Seconds taken by n calls of fn, synchronized before and after."""
        self.sync()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        self.sync()
        return time.perf_counter() - t0

    def measure(self, fn, min_s, work_per_call):
        """Median over ROUNDS of work_per_call * n / time, where n calls last >= min_s.

        fn must already be warmed up.  n is calibrated first (not timed).
        """
        n = 1
        confirmed = False
        while True:
            t = self.run_n(fn, n)
            if t >= min_s:
                # Accept n only when a second run of n calls also lasts
                # min_s, so one slow outlier call cannot fix n too small.
                if confirmed:
                    break
                confirmed = True
                continue
            confirmed = False
            # Aim a bit above min_s so the timed rounds clear it despite
            # noise (growth capped at 100x per try).
            target = int(math.ceil(n * 1.2 * min_s / max(t, 1e-9)))
            n = max(n + 1, min(target, n * 100))
        rates = []
        for _ in range(ROUNDS):
            t = self.run_n(fn, n)
            rates.append(work_per_call * n / t)
        med = statistics.median(rates)
        if min(rates) < 0.8 * max(rates):
            log("  warning: rounds differ by >20% ({}); is the machine busy?".format(
                ", ".join("{:.4g}".format(r) for r in rates)))
        return med, n

    # ---------------------------------------------------------------- matmul

    def matmul_gflops(self, n):
        if n in self._matmul_cache:
            return self._matmul_cache[n]
        self.reseed()
        a = torch.randn(n, n, device=self.device, dtype=torch.float32)
        b = torch.randn(n, n, device=self.device, dtype=torch.float32)
        c = torch.empty(n, n, device=self.device, dtype=torch.float32)

        def fn():
            torch.matmul(a, b, out=c)

        for _ in range(2 if n >= 4096 and self.device.type == "cpu" else 3):
            fn()
        self.sync()
        rate, reps = self.measure(fn, self.matmul_min_s, 2.0 * n ** 3 / 1e9)
        log("  matmul n={}: {:.1f} GFLOP/s ({} reps/round)".format(n, rate, reps))
        del a, b, c
        self._matmul_cache[n] = rate
        return rate

    def matmul_peak(self):
        sizes = [1024, 2048, 4096]
        if self.device.type == "cuda":
            sizes.append(8192)
        return max(self.matmul_gflops(n) for n in sizes)

    # ------------------------------------------------------------------- MLP

    def make_model(self, features):
        model = nn.Sequential(
            nn.Flatten(),
            nn.Linear(features, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.2),
            nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2),
            nn.Linear(32, 10),
        ).to(self.device)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        return model, opt

    def make_pool(self, features, batch):
        xs = [torch.randn(batch, features, device=self.device) for _ in range(POOL)]
        ys = [torch.randint(0, 10, (batch,), device=self.device) for _ in range(POOL)]
        self.sync()
        return xs, ys

    def train_step_fn(self, model, opt, crit, xs, ys):
        state = {"i": 0}

        def step():
            i = state["i"]
            state["i"] = (i + 1) % POOL
            opt.zero_grad(set_to_none=True)
            loss = crit(model(xs[i]), ys[i])
            loss.backward()
            opt.step()

        return step

    def mlp_train(self, features, batch):
        self.reseed()
        xs, ys = self.make_pool(features, batch)
        model, opt = self.make_model(features)
        crit = nn.CrossEntropyLoss()
        model.train()
        step = self.train_step_fn(model, opt, crit, xs, ys)
        for _ in range(WARMUP_STEPS):
            step()
        self.sync()
        rate, steps = self.measure(step, self.mlp_min_s, float(batch))
        log("  mlp{} train b{}: {:.0f} samples/s ({} steps/round)".format(
            features, batch, rate, steps))
        return rate

    def mlp_eval(self, features, batch):
        self.reseed()
        xs, _ = self.make_pool(features, batch)
        model, _ = self.make_model(features)
        model.eval()
        state = {"i": 0}

        def fwd():
            i = state["i"]
            state["i"] = (i + 1) % POOL
            with torch.no_grad():
                model(xs[i])

        for _ in range(WARMUP_STEPS):
            fwd()
        self.sync()
        rate, steps = self.measure(fwd, self.mlp_min_s, float(batch))
        log("  mlp{} eval b{}: {:.0f} samples/s ({} steps/round)".format(
            features, batch, rate, steps))
        return rate

    def first_step_ms(self, features=784, batch=128):
        self.reseed()
        if self.device.type == "cuda":
            # Create the CUDA context with an unrelated tiny op so that it is
            # not counted in the first step.
            torch.zeros(1, device=self.device).add_(1)
            self.sync()
        # The first torch.optim optimizer built in a process lazily imports
        # ~900 Python modules (torch._dynamo, sympy, ...), about 1 s of pure
        # import time.  "After torch is imported" means that too, so build a
        # throwaway optimizer over an unrelated 1-element tensor first.
        t_imp = time.perf_counter()
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01, momentum=0.9)
        log("  (excluded lazy torch.optim import: {:.0f} ms)".format(
            (time.perf_counter() - t_imp) * 1e3))
        xs, ys = self.make_pool(features, batch)
        self.sync()
        t0 = time.perf_counter()
        model, opt = self.make_model(features)
        crit = nn.CrossEntropyLoss()
        model.train()
        opt.zero_grad(set_to_none=True)
        loss = crit(model(xs[0]), ys[0])
        loss.backward()
        opt.step()
        self.sync()
        ms = (time.perf_counter() - t0) * 1e3
        log("  first step: {:.2f} ms".format(ms))
        return ms


def main(argv=None):
    p = argparse.ArgumentParser(
        description="PyTorch reference for `wgnn bench --json` (same JSON on stdout).")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads(N); default: torch's default")
    p.add_argument("--quick", action="store_true",
                   help="short timing rounds (smoke test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default=None,
                   help="comma-separated subset of: " + ",".join(NAMES))
    args = p.parse_args(argv)

    if args.only:
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in NAMES]
        if unknown:
            p.error("unknown workload(s) {}; known: {}".format(
                ",".join(unknown), ",".join(NAMES)))
        selected = [n for n in NAMES if n in wanted]
    else:
        selected = list(NAMES)

    if args.threads is not None:
        if args.threads < 1:
            p.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)

    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda requested but torch.cuda.is_available() is False")
    device = torch.device(args.device)

    # fp32 everywhere: no TF32 shortcuts.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")

    bench = Bench(device, args.quick, args.seed)
    dev_str = device_string(device)
    log("torch_reference: {}{}".format(dev_str, " [quick]" if args.quick else ""))

    workloads = {
        "torch_matmul_peak": ("GFLOP/s", bench.matmul_peak),
        "matmul_512": ("GFLOP/s", lambda: bench.matmul_gflops(512)),
        "matmul_1024": ("GFLOP/s", lambda: bench.matmul_gflops(1024)),
        "matmul_2048": ("GFLOP/s", lambda: bench.matmul_gflops(2048)),
        "mlp784_train_b128": ("samples/s", lambda: bench.mlp_train(784, 128)),
        "mlp784_train_b1024": ("samples/s", lambda: bench.mlp_train(784, 1024)),
        "mlp3072_train_b128": ("samples/s", lambda: bench.mlp_train(3072, 128)),
        "mlp784_eval_b1024": ("samples/s", lambda: bench.mlp_eval(784, 1024)),
        "first_step_ms": ("ms", bench.first_step_ms),
    }

    # first_step_ms runs before everything else so nothing is warm yet.
    order = sorted(selected, key=lambda n: 0 if n == "first_step_ms" else 1)
    values = {}
    for name in order:
        log("{} ...".format(name))
        values[name] = float(workloads[name][1]())

    records = [{"name": n, "value": values[n], "unit": workloads[n][0],
                "device": dev_str} for n in selected]
    json.dump(records, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
