"""PyTorch baseline for wgnn's binary example: the lecture's MLP with BCE-with-logits on
scikit-learn's breast-cancer data (data/breast_cancer.csv), the same split, preprocessing and
hyper-parameters as

    wgnn train --data data/breast_cancer.csv --loss bce --seed S

i.e. the first 455 rows train and the last 114 test; per-feature standardization with the
training rows' mean and population std; Linear(30,64) → BatchNorm1d → ReLU → Dropout(0.2) →
Linear(64,32) → BatchNorm1d → ReLU → Dropout(0.2) → Linear(32,1); SGD lr 0.02, momentum 0.9;
batch 32, shuffled, the last partial batch kept; 12 epochs.

Run by hand (pip install torch): python3 scripts/breast_cancer_torch.py [--seeds 0 1 2 3 4]
Prints the test accuracy after the last epoch for each seed and their mean.
"""
import argparse
import csv
import pathlib

import torch
from torch import nn


def load(path):
    with open(path) as f:
        rows = list(csv.reader(f))
    header, rows = rows[0], rows[1:]
    x = torch.tensor([[float(v) for v in r[:-1]] for r in rows], dtype=torch.float32)
    y = torch.tensor([float(r[-1]) for r in rows], dtype=torch.float32)
    return x, y


def run(seed, x, y):
    torch.manual_seed(seed)
    train_n = round(len(x) * 0.8)
    xtr, ytr, xte, yte = x[:train_n], y[:train_n], x[train_n:], y[train_n:]
    mean = xtr.double().mean(0)
    std = xtr.double().std(0, unbiased=False)
    std[std < 1e-12] = 1.0
    xtr = ((xtr - mean.float()) / std.float())
    xte = ((xte - mean.float()) / std.float())
    model = nn.Sequential(
        nn.Linear(30, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(32, 1),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    loss_fn = nn.BCEWithLogitsLoss()
    for _ in range(12):
        model.train()
        order = torch.randperm(train_n)
        for i in range(0, train_n, 32):
            idx = order[i:i + 32]
            opt.zero_grad()
            loss = loss_fn(model(xtr[idx]).squeeze(1), ytr[idx])
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        pred = (model(xte).squeeze(1) > 0).float()
    return (pred == yte).float().mean().item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--data", default=str(pathlib.Path(__file__).parent.parent / "data" / "breast_cancer.csv"))
    args = parser.parse_args()
    x, y = load(args.data)
    accs = []
    for seed in args.seeds:
        acc = run(seed, x, y)
        accs.append(acc)
        print(f"seed {seed}: test accuracy {100 * acc:.2f}%")
    print(f"mean test accuracy {100 * sum(accs) / len(accs):.2f}% over {len(accs)} seeds")


if __name__ == "__main__":
    main()
