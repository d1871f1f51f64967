#!/usr/bin/env python3
"""Write PyTorch reference fixtures for wgnn's activation layers into tests/fixtures/.

Setup (CPU is enough; PyPI's default torch wheel is fine):

    pip install torch safetensors numpy

Run from the repository root:

    python3 scripts/torch_activation_fixtures.py

Files written (see tests/fixtures/README.md for the full key list):

    tests/fixtures/activations.safetensors      single-op forward/backward references of ReLU,
                                                Sigmoid, Tanh, GELU (erf and tanh), LeakyReLU
                                                (0.01 and 0.2) on a grid plus special values
                                                (±0, tiny, huge, ±inf, NaN)
    tests/fixtures/activations_mlp.safetensors  MLP using every activation, one gradient and
                                                5 SGD steps

Everything runs on the CPU, in float32, with one thread and
torch.use_deterministic_algorithms(True). Float tensors are stored as float32, the class
labels as int64. The optimizer uses foreach=False (the plain per-parameter reference loop).

activations.safetensors deliberately holds NaN and ±inf (PyTorch's NaN / inf propagation is
what it pins down), so it is saved without the finiteness check; the MLP file is all finite.
Each run prints PyTorch's results at x = NaN, +inf, -inf, 0, -0, 1e4, -1e4 for every case.
"""

import copy
import math
import os
import sys

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "tests", "fixtures")

SPECIALS = [0.0, -0.0, 1e-7, -1e-7, 1e-3, -1e-3, 0.5, -0.5, 3.0, -3.0, 15.0, -15.0,
            30.0, -30.0, 90.0, -90.0, 1e4, -1e4, 3e38, -3e38, math.nan, math.inf, -math.inf]
GRID = 401  # torch.linspace(-10, 10, 401): step 0.05

# Case name -> module constructor; the order is the order of the keys in the file.
CASES = {
    "relu": lambda: nn.ReLU(),
    "sigmoid": lambda: nn.Sigmoid(),
    "tanh": lambda: nn.Tanh(),
    "gelu": lambda: nn.GELU(),  # approximate='none' (erf)
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "leaky_relu": lambda: nn.LeakyReLU(),  # negative_slope 0.01
    "leaky_relu_0.2": lambda: nn.LeakyReLU(0.2),
}

# The x values whose results are printed (indices into the SPECIALS tail of x).
SHOWN = [("nan", math.nan), ("+inf", math.inf), ("-inf", -math.inf), ("0", 0.0), ("-0", -0.0),
         ("1e4", 1e4), ("-1e4", -1e4)]

STEPS = 5


def setup():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float32)


def check_and_save(tensors, name, allow_nonfinite=False):
    out = {}
    for k, v in tensors.items():
        assert isinstance(v, torch.Tensor), k
        v = v.detach().to("cpu").contiguous().clone()
        if v.is_floating_point():
            assert v.dtype == torch.float32, (k, v.dtype)
            if not allow_nonfinite:
                assert torch.isfinite(v).all(), k
        else:
            assert v.dtype == torch.int64, (k, v.dtype)
        out[k] = v
    path = os.path.join(OUT_DIR, name)
    # A single metadata entry: safetensors stores metadata as an unordered map, so
    # several entries would make the bytes differ from run to run.
    save_file(out, path, metadata={"torch_version": torch.__version__})
    print(f"wrote {path} ({os.path.getsize(path)} bytes, {len(out)} tensors)")
    # Read back: same keys, dtypes, shapes and bits (NaN compares equal to NaN here).
    back = load_file(path)
    assert sorted(back) == sorted(out), name
    for k, v in out.items():
        b = back[k]
        assert b.dtype == v.dtype and b.shape == v.shape, k
        if v.is_floating_point():
            assert torch.equal(b.view(torch.int32), v.view(torch.int32)), k
        else:
            assert torch.equal(b, v), k
    return out


# --------------------------------------------------------------------------------------
# a) single activations
# --------------------------------------------------------------------------------------
def make_x():
    grid = torch.linspace(-10.0, 10.0, GRID, dtype=torch.float32)
    special = torch.tensor(SPECIALS, dtype=torch.float32)
    x = torch.cat([grid, special])
    # -0.0 must survive the float32 conversion (its sign bit is the point of including it).
    assert math.copysign(1.0, x[GRID + 1].item()) < 0
    assert torch.isfinite(x[GRID + SPECIALS.index(3e38)])
    return x


def special_index(v):
    for i, s in enumerate(SPECIALS):
        if (math.isnan(v) and math.isnan(s)) or (s == v and math.copysign(1, s) == math.copysign(1, v)):
            return GRID + i
    raise KeyError(v)


def fmt(v):
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "+inf" if v > 0 else "-inf"
    if v == 0.0:
        return "-0" if math.copysign(1.0, v) < 0 else "0"
    return f"{v:.9g}"


def activations():
    x = make_x()
    n = x.numel()
    torch.manual_seed(0)
    dy = torch.empty(n, dtype=torch.float32).uniform_(-1.0, 1.0)
    assert torch.isfinite(dy).all() and (dy >= -1).all() and (dy < 1).all()

    d = {"x": x, "dy": dy}
    for case, make in CASES.items():
        f = make()
        xg = x.clone().requires_grad_(True)
        y = f(xg)
        (y * dy).sum().backward()
        d[f"{case}.y"] = y.detach()
        d[f"{case}.dx"] = xg.grad.detach()
        assert y.dtype == torch.float32 and xg.grad.dtype == torch.float32

    out = check_and_save(d, "activations.safetensors", allow_nonfinite=True)

    print(f"\nPyTorch {torch.__version__} conventions (slope = dx/dy, i.e. f'(x) as autograd applies it):")
    for case in CASES:
        print(f"  {case}")
        for label, v in SHOWN:
            i = special_index(v)
            yv = out[f"{case}.y"][i].item()
            dxv = out[f"{case}.dx"][i].item()
            dyv = out["dy"][i].item()
            slope = dxv / dyv if dyv != 0 else float("nan")
            print(f"    x={label:5s} y={fmt(yv):>14s}  dx={fmt(dxv):>14s}  (dy={fmt(dyv)}, slope={fmt(slope)})")
    return out


# --------------------------------------------------------------------------------------
# b) MLP with every activation, SGD
# --------------------------------------------------------------------------------------
def activations_mlp():
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(12, 16), nn.GELU(),
        nn.Linear(16, 16), nn.Tanh(),
        nn.Linear(16, 8), nn.Sigmoid(),
        nn.Linear(8, 8), nn.LeakyReLU(0.1),
        nn.Linear(8, 8), nn.GELU(approximate="tanh"),
        nn.Linear(8, 3),
    )
    init = copy.deepcopy(model.state_dict())

    # Data from its own generator (seed 0), so it does not depend on model init.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 12, generator=g)
    y = torch.randint(0, 3, (10,), dtype=torch.int64, generator=g)

    d = {}
    for k, v in init.items():
        d[f"init.{k}"] = v.clone()
    d["x"] = x
    d["y"] = y

    loss_fn = nn.CrossEntropyLoss()
    with torch.no_grad():
        model.eval()
        d["eval_logits"] = model(x)

    model.train()
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    d["train_loss"] = loss.detach().reshape(1)
    for name, p in model.named_parameters():
        d[f"grad.{name}"] = p.grad.detach().clone()

    # Training starts again from the initial parameters.
    model.load_state_dict(init)
    model.zero_grad(set_to_none=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, dampening=0,
                          weight_decay=0.0, nesterov=False, foreach=False)
    losses = []
    model.train()
    for _ in range(STEPS):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.detach().item())
    losses = torch.tensor(losses, dtype=torch.float32)
    assert losses[0].item() == d["train_loss"].item()
    for k, v in model.state_dict().items():
        d[f"final.{k}"] = v.detach().clone()
        assert not torch.equal(v, init[k]), k
    d["losses"] = losses
    print(f"\nactivations_mlp losses: {[round(v, 6) for v in losses.tolist()]}")
    return check_and_save(d, "activations_mlp.safetensors")


def summarize(name, d):
    print(f"\n== {name}")
    for k, v in d.items():
        print(f"  {k:40s} {str(v.dtype).replace('torch.', ''):8s} {list(v.shape)}")


def main():
    setup()
    os.makedirs(OUT_DIR, exist_ok=True)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    results = {
        "activations.safetensors": activations(),
        "activations_mlp.safetensors": activations_mlp(),
    }
    if "-v" in sys.argv:
        for name, d in results.items():
            summarize(name, d)
    total = sum(os.path.getsize(os.path.join(OUT_DIR, n)) for n in results)
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
