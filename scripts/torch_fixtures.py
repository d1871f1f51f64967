#!/usr/bin/env python3
"""Write PyTorch reference fixtures for wgnn's tests into tests/fixtures/.

Setup (CPU is enough; PyPI's default torch wheel is fine):

    pip install torch safetensors numpy

Run from the repository root:

    python3 scripts/torch_fixtures.py

Files written (see tests/fixtures/README.md for the full key list):

    tests/fixtures/lecture_mlp.safetensors  lecture MLP (Linear/BN/ReLU/Dropout(0)), 50 SGD steps
    tests/fixtures/adam_mlp.safetensors     MLP without BN, 50 steps each of Adam, AdamW and
                                            Adam with AMSGrad
    tests/fixtures/ops.safetensors          single-op references (cross-entropy, BCE-with-logits,
                                            BatchNorm1d, softmax/log_softmax)

Everything runs on the CPU, in float32, with one thread and
torch.use_deterministic_algorithms(True). Float tensors are stored as float32,
labels / targets of cross-entropy and num_batches_tracked as int64.
Optimizers use foreach=False (the plain per-parameter reference loop).
"""

import copy
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "tests", "fixtures")

N_BATCHES = 4
BATCH = 24
STEPS = 50


def setup():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float32)


def check_and_save(tensors, name):
    out = {}
    for k, v in tensors.items():
        assert isinstance(v, torch.Tensor), k
        v = v.detach().to("cpu").contiguous().clone()
        if v.is_floating_point():
            assert v.dtype == torch.float32, (k, v.dtype)
            assert torch.isfinite(v).all(), k
        else:
            assert v.dtype == torch.int64, (k, v.dtype)
        out[k] = v
    path = os.path.join(OUT_DIR, name)
    # A single metadata entry: safetensors stores metadata as an unordered map, so
    # several entries would make the bytes differ from run to run.
    save_file(out, path, metadata={"generator": f"scripts/torch_fixtures.py, torch {torch.__version__}"})
    print(f"wrote {path} ({os.path.getsize(path)} bytes, {len(out)} tensors)")
    return out


def make_batches():
    """4 batches of 24 samples: x ~ N(0,1)*1.5+0.3 shaped [24,3,32,32], y ~ U{0..9}.

    Drawn from their own generator seeded with 0, so they do not depend on model init
    and both model files get the very same batches."""
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(N_BATCHES):
        x = torch.randn(BATCH, 3, 32, 32, generator=g) * 1.5 + 0.3
        y = torch.randint(0, 10, (BATCH,), dtype=torch.int64, generator=g)
        batches.append((x, y))
    return batches


def put_batches(d, batches):
    for i, (x, y) in enumerate(batches):
        d[f"batch{i}.x"] = x
        d[f"batch{i}.y"] = y


def put_state(d, prefix, model):
    for k, v in model.state_dict().items():
        d[f"{prefix}{k}"] = v.detach().clone()


def train(model, opt, batches, steps):
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    model.train()
    for k in range(steps):
        x, y = batches[k % len(batches)]
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.detach().item())
    return torch.tensor(losses, dtype=torch.float32)


# --------------------------------------------------------------------------------------
# a) lecture model + SGD
# --------------------------------------------------------------------------------------
def lecture_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(3072, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.0),
        nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.0),
        nn.Linear(32, 10),
    )
    batches = make_batches()
    d = {}
    put_batches(d, batches)
    put_state(d, "init.", model)

    x0, y0 = batches[0]
    with torch.no_grad():
        model.eval()
        d["init.eval_logits"] = model(x0)
        # Train-mode forward updates BN running stats: do it on a copy.
        probe = copy.deepcopy(model)
        probe.train()
        d["init.train_loss"] = nn.CrossEntropyLoss()(probe(x0), y0).reshape(1)
    # The real model must be untouched by the above.
    for k, v in model.state_dict().items():
        assert torch.equal(v, d[f"init.{k}"]), k

    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4,
                          dampening=0, nesterov=False, foreach=False)
    losses = train(model, opt, batches, STEPS)
    assert abs(losses[0].item() - d["init.train_loss"].item()) < 1e-6
    d["sgd.losses"] = losses
    put_state(d, "sgd.", model)
    for name, p in model.named_parameters():
        d[f"sgd.momentum.{name}"] = opt.state[p]["momentum_buffer"]
    with torch.no_grad():
        model.eval()
        d["sgd.eval_logits"] = model(x0)
    return check_and_save(d, "lecture_mlp.safetensors")


# --------------------------------------------------------------------------------------
# b) MLP without BN + Adam / AdamW
# --------------------------------------------------------------------------------------
def adam_mlp():
    batches = make_batches()  # identical to lecture_mlp's

    def build():
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(3072, 64), nn.ReLU(),
            nn.Linear(64, 32), nn.ReLU(),
            nn.Linear(32, 10),
        )

    torch.manual_seed(1)
    model = build()
    init = copy.deepcopy(model.state_dict())
    d = {}  # the batches are lecture_mlp.safetensors' batch{i}.x / batch{i}.y
    put_state(d, "init.", model)

    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                           weight_decay=0.0, amsgrad=False, foreach=False)
    d["adam.losses"] = train(model, opt, batches, STEPS)
    put_state(d, "adam.", model)
    for name, p in model.named_parameters():
        st = opt.state[p]
        assert int(st["step"]) == STEPS
        d[f"adam.exp_avg.{name}"] = st["exp_avg"]
        d[f"adam.exp_avg_sq.{name}"] = st["exp_avg_sq"]

    model = build()
    model.load_state_dict(init)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=1e-2, amsgrad=False, foreach=False)
    d["adamw.losses"] = train(model, opt, batches, STEPS)
    put_state(d, "adamw.", model)

    # β2 = 0.9 lets the second moment fall, so AMSGrad's running maximum departs from it.
    model = build()
    model.load_state_dict(init)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.9), eps=1e-8,
                           weight_decay=0.0, amsgrad=True, foreach=False)
    d["amsgrad.losses"] = train(model, opt, batches, STEPS)
    put_state(d, "amsgrad.", model)
    departed = 0
    for name, p in model.named_parameters():
        st = opt.state[p]
        d[f"amsgrad.max_exp_avg_sq.{name}"] = st["max_exp_avg_sq"]
        departed += int((st["max_exp_avg_sq"] > st["exp_avg_sq"]).sum())
    assert departed > 0
    return check_and_save(d, "adam_mlp.safetensors")


# --------------------------------------------------------------------------------------
# c) single ops
# --------------------------------------------------------------------------------------
def ops():
    torch.manual_seed(0)
    d = {}

    # cross-entropy ------------------------------------------------------------------
    logits = torch.randn(7, 5) * 3
    targets = torch.randint(0, 5, (7,), dtype=torch.int64)
    targets[3] = -100  # ignore_index
    weight = torch.rand(5) + 0.5
    d["xent.logits"] = logits
    d["xent.targets"] = targets
    d["xent.weight"] = weight
    for red in ("mean", "sum", "none"):
        d[f"xent.loss_{red}"] = F.cross_entropy(logits, targets, weight=weight, ignore_index=-100,
                                                reduction=red, label_smoothing=0.1)
    lg = logits.clone().requires_grad_(True)
    F.cross_entropy(lg, targets, weight=weight, ignore_index=-100, reduction="mean",
                    label_smoothing=0.1).backward()
    d["xent.grad_mean"] = lg.grad
    lg = logits.clone().requires_grad_(True)
    loss = F.cross_entropy(lg, targets, ignore_index=-100, reduction="mean")
    loss.backward()
    d["xent_plain.loss_mean"] = loss.detach()
    d["xent_plain.grad_mean"] = lg.grad

    # BCE with logits ----------------------------------------------------------------
    logits = torch.randn(9) * 2
    logits[1] = 30.0
    logits[4] = -30.0
    logits[6] = 30.0
    logits[7] = -30.0
    targets = torch.tensor([1, 0, 1, 0, 1, 1, 0, 0, 1], dtype=torch.float32)
    pos_weight = torch.tensor([2.5])
    d["bce.logits"] = logits
    d["bce.targets"] = targets
    d["bce.pos_weight"] = pos_weight
    lg = logits.clone().requires_grad_(True)
    loss = F.binary_cross_entropy_with_logits(lg, targets, pos_weight=pos_weight, reduction="mean")
    loss.backward()
    d["bce.loss_mean"] = loss.detach()
    d["bce.grad_mean"] = lg.grad
    d["bce.loss_none"] = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight,
                                                            reduction="none")
    lg = logits.clone().requires_grad_(True)
    loss = F.binary_cross_entropy_with_logits(lg, targets, reduction="mean")
    loss.backward()
    d["bce_plain.loss_mean"] = loss.detach()
    d["bce_plain.grad_mean"] = lg.grad
    d["bce_plain.loss_none"] = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")

    # BatchNorm1d --------------------------------------------------------------------
    x = torch.randn(13, 6) * 2 + 5
    bn = nn.BatchNorm1d(6, eps=1e-5, momentum=0.1)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(6))
        bn.bias.copy_(torch.randn(6))
    d["bn.x"] = x
    d["bn.weight"] = bn.weight.detach().clone()
    d["bn.bias"] = bn.bias.detach().clone()
    assert torch.equal(bn.running_mean, torch.zeros(6)) and torch.equal(bn.running_var, torch.ones(6))
    xg = x.clone().requires_grad_(True)
    bn.train()
    y = bn(xg)
    dy = torch.randn(13, 6)
    y.backward(dy)
    d["bn.y"] = y.detach()
    d["bn.running_mean"] = bn.running_mean.clone()
    d["bn.running_var"] = bn.running_var.clone()
    d["bn.dy"] = dy
    d["bn.dx"] = xg.grad
    d["bn.dweight"] = bn.weight.grad
    d["bn.dbias"] = bn.bias.grad
    bn.eval()
    with torch.no_grad():
        d["bn.y_eval"] = bn(x)

    bn = nn.BatchNorm1d(6, eps=1e-5, momentum=None)
    bn.train()
    with torch.no_grad():
        for i in range(3):
            xi = torch.randn(13, 6) * 2 + 5
            d[f"bn_cma.x{i}"] = xi
            bn(xi)
    assert int(bn.num_batches_tracked) == 3
    d["bn_cma.running_mean"] = bn.running_mean.clone()
    d["bn_cma.running_var"] = bn.running_var.clone()

    # softmax / log_softmax ----------------------------------------------------------
    logits = torch.randn(4, 11) * 3
    logits[2, 0] = 1e4
    logits[2, 5] = -1e4
    logits[2, 9] = 1e4 - 3.0
    d["softmax.logits"] = logits
    d["softmax.probs"] = F.softmax(logits, dim=1)
    d["softmax.log_probs"] = F.log_softmax(logits, dim=1)

    return check_and_save(d, "ops.safetensors")


def summarize(name, d):
    print(f"\n== {name}")
    for k, v in d.items():
        print(f"  {k:40s} {str(v.dtype).replace('torch.', ''):8s} {list(v.shape)}")
    for k, v in d.items():
        if k.endswith("losses"):
            print(f"  {k}: first {v[0].item():.6f} last {v[-1].item():.6f}")


def main():
    setup()
    os.makedirs(OUT_DIR, exist_ok=True)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    results = {
        "lecture_mlp.safetensors": lecture_mlp(),
        "adam_mlp.safetensors": adam_mlp(),
        "ops.safetensors": ops(),
    }
    if "-v" in sys.argv:
        for name, d in results.items():
            summarize(name, d)
    total = sum(os.path.getsize(os.path.join(OUT_DIR, n)) for n in results)
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
