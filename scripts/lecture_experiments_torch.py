#!/usr/bin/env python3
"""Run an experiment file (experiments/FORMAT.md) with PyTorch and write the same
results.csv as

    wgnn compare EXPERIMENT.toml

Every variant runs once per seed, on the same data, as `wgnn train` would with the
variant's settings as flags: the data loaded as wgnn loads it (the embedded MNIST IDX files
in data/mnist/, MNIST IDX or CIFAR-10 binary directories and files, CSV with a label column,
safetensors x/y), the last `holdout` share of a single file's rows held back for testing, the
`--normalize` preprocessing fitted on the training split only (per-channel statistics in f64
with the population std; pca:K and pca-whiten:K with scikit-learn's PCA; zca[:EPS] with
numpy's eigh of the n-1 covariance) and applied in float32; an nn.Sequential built from the
model spec with PyTorch's default initialization after torch.manual_seed(seed); a
torch.Generator seeded with the seed drawing a new permutation each epoch; CrossEntropyLoss
(label_smoothing) or BCEWithLogitsLoss (pos_weight; a logit > 0 is class 1); SGD, Adam or
AdamW with foreach=False; StepLR or CosineAnnealingLR stepped once per epoch. Train figures
are the sample-weighted means over the epoch's batches in train mode (dropout on); the test
split is evaluated in eval mode after each epoch. A NaN or infinite training loss marks the
run diverged and stops it: that epoch's row holds `nan` as its train loss, diverged = 1 and
nothing else. `measure = ["gradient-signs"]` follows FORMAT.md: after each epoch, on a copy
of the model in train mode, each of the first 256 training samples alone; among the first
Linear's weight-gradient rows that are not all zero, the share that is single-signed.

Setup (CPU only): pip install torch scikit-learn numpy   (Python 3.11 or newer: tomllib)

Run from the repository root (relative data paths are taken from the current directory, as
`wgnn train` takes them):

    python3 scripts/lecture_experiments_torch.py EXPERIMENT.toml [--out DIR] [--threads N]

Writes DIR/results.csv (default DIR: runs/compare-torch/<name>/) and DIR/summary.md, the
table `wgnn compare` prints: per variant, the final test accuracy (mean ± sample std over
the seeds that did not diverge), the epoch of the best mean test accuracy, the first epoch
whose mean reaches target_accuracy, the train − test accuracy gap and the diverged runs.
Errors in the experiment file or the data print one line and exit with status 1.
"""

import argparse
import copy
import gzip
import itertools
import json
import math
import os
import re
import sys
import time
import tomllib
from decimal import Decimal

import numpy as np
import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMBEDDED_MNIST = os.path.join(ROOT, "data", "mnist")
EMBEDDED_NAME = "embedded MNIST (8,000 train / 2,000 test digits)"

HEADER = [
    "variant", "seed", "epoch", "train_loss", "train_accuracy", "test_loss",
    "test_accuracy", "diverged", "single_signed_share",
]
MEASURES = ("gradient-signs",)
GRADIENT_SIGN_SAMPLES = 256
LECTURE_DROPOUT = 0.2
DEFAULT_EPOCHS = 12
MIN_STD = 1e-12
RANK_TOLERANCE = 1e-10
DEFAULT_ZCA_EPS = 1e-5
TOP_KEYS = ("name", "description", "seeds", "target_accuracy", "measure", "base", "grid",
            "variant")


class Failure(Exception):
    """A one-line error for the user: a bad experiment file, data or setting."""


# --------------------------------------------------------------------------------------
# Settings: the flags of `wgnn train`, without the dashes
# --------------------------------------------------------------------------------------

def _type_name(value):
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def _string(value):
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_type_name(value)}")
    return value


def _bool(value):
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_type_name(value)}")
    return value


def _count(value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {_type_name(value)}")
    if value < 1:
        raise ValueError(f"expected an integer of at least 1, got {value}")
    return value


def _float(value, check=None, what=""):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {_type_name(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value}")
    if check is not None and not check(value):
        raise ValueError(f"expected {what}, got {toml_value(value)}")
    return value


def _choice(*choices):
    def parse(value):
        value = _string(value)
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    return parse


def _schedule(value):
    parse_schedule(_string(value))
    return value


def _normalize(value):
    parse_normalize(_string(value))
    return value


def _arch(value):
    value = _string(value)
    parse_spec_syntax(value)
    return value


SETTINGS = {
    "data": _string,
    "test-data": _string,
    "holdout": lambda v: _float(v, lambda x: 0.0 < x < 1.0, "a fraction in (0, 1)"),
    "label-column": _string,
    "arch": _arch,
    "epochs": _count,
    "batch-size": _count,
    "optimizer": _choice("sgd", "adam", "adamw"),
    "lr": lambda v: _float(v, lambda x: x >= 0.0, "a rate of 0 or more"),
    "momentum": lambda v: _float(v, lambda x: x >= 0.0, "0 or more"),
    "weight-decay": lambda v: _float(v, lambda x: x >= 0.0, "0 or more"),
    "amsgrad": _bool,
    "lr-schedule": _schedule,
    "loss": _choice("ce", "bce"),
    "label-smoothing": lambda v: _float(v, lambda x: 0.0 <= x <= 1.0, "a value in [0, 1]"),
    "pos-weight": lambda v: _float(v, lambda x: x > 0.0, "a positive weight"),
    "normalize": _normalize,
    "no-shuffle": _bool,
    "drop-last": _bool,
    "check-finite": _bool,
}


def check_setting(where, key, value, label=None):
    if key == "seed":
        raise Failure(f"{where}: `seed` is not a setting; the experiment's `seeds` list gives "
                      "the seeds every variant runs with")
    if key not in SETTINGS:
        raise Failure(f"{where}: unknown setting `{key}`; expected one of "
                      f"{', '.join(SETTINGS)}")
    try:
        return SETTINGS[key](value)
    except ValueError as e:
        entry = f" (entry {label!r})" if label is not None else ""
        raise Failure(f"{where} `{key}`{entry}: {e}") from None


def resolve(settings):
    """The run's full configuration: `wgnn train`'s defaults under the given settings."""
    s = dict(settings)
    optimizer = s.get("optimizer", "sgd")
    if s.get("amsgrad", False) and optimizer == "sgd":
        raise ValueError("`amsgrad` needs optimizer \"adam\" or \"adamw\"")
    return {
        "data": s.get("data"),
        "test-data": s.get("test-data"),
        "holdout": s.get("holdout", 0.2),
        "label-column": s.get("label-column"),
        "arch": s.get("arch"),
        "epochs": s.get("epochs", DEFAULT_EPOCHS),
        "batch-size": s.get("batch-size", 32),
        "optimizer": optimizer,
        "lr": s.get("lr", 0.02 if optimizer == "sgd" else 1e-3),
        "momentum": s.get("momentum", 0.9),
        "weight-decay": s.get("weight-decay", 1e-2 if optimizer == "adamw" else 0.0),
        "amsgrad": s.get("amsgrad", False),
        "lr-schedule": s.get("lr-schedule"),
        "loss": s.get("loss", "ce"),
        "label-smoothing": s.get("label-smoothing", 0.0),
        "pos-weight": s.get("pos-weight", 1.0),
        "normalize": s.get("normalize", "per-channel"),
        "no-shuffle": s.get("no-shuffle", False),
        "drop-last": s.get("drop-last", False),
        "check-finite": s.get("check-finite", False),
    }


def parse_schedule(text):
    parts = text.split(":")

    def count(v, what):
        if not re.fullmatch(r"\+?[0-9]+", v):
            raise ValueError(f"{what} {v!r} in lr-schedule {text!r} is not a count")
        return int(v)

    def number(v, what):
        try:
            return float(v)
        except ValueError:
            raise ValueError(f"{what} {v!r} in lr-schedule {text!r} is not a number") from None

    if len(parts) == 3 and parts[0] == "step":
        step, gamma = count(parts[1], "step size"), number(parts[2], "gamma")
        if step == 0:
            raise ValueError("step_size must be at least 1")
        if not gamma > 0.0:
            raise ValueError(f"gamma must be positive, got {gamma}")
        return ("step", step, gamma)
    if parts[0] == "cosine" and len(parts) in (2, 3):
        t_max = count(parts[1], "T_max")
        eta_min = number(parts[2], "eta_min") if len(parts) == 3 else 0.0
        if t_max == 0:
            raise ValueError("T_max must be at least 1")
        if not eta_min >= 0.0:
            raise ValueError(f"eta_min must be 0 or more, got {eta_min}")
        return ("cosine", t_max, eta_min)
    raise ValueError(f"{text!r}: expected step:STEP_SIZE:GAMMA or cosine:T_MAX[:ETA_MIN]")


def parse_normalize(text):
    lower = text.strip().lower()
    name, _, arg = lower.partition(":")
    has_arg = ":" in lower

    def components(k):
        if not re.fullmatch(r"\+?[0-9]+", k) or int(k) < 1:
            raise ValueError(f"{text!r}: the number of components must be an integer of at "
                             f"least 1, got {k!r}")
        return int(k)

    if name in ("none", "mean-image", "channel-mean", "per-channel"):
        if has_arg:
            raise ValueError(f"{text!r}: {name} takes no argument")
        return (name, None)
    if name in ("pca", "pca-whiten"):
        if not has_arg:
            raise ValueError(f"{text!r}: {name} needs its number of components, e.g. {name}:50")
        return (name, components(arg))
    if name == "zca":
        if not has_arg:
            return ("zca", DEFAULT_ZCA_EPS)
        try:
            eps = float(arg)
        except ValueError:
            eps = float("nan")
        if not (math.isfinite(eps) and eps > 0.0):
            raise ValueError(f"zca's epsilon must be a positive, finite number, got {arg!r}")
        return ("zca", eps)
    raise ValueError(f"{text!r}: expected none, mean-image, channel-mean, per-channel, pca:K, "
                     "pca-whiten:K or zca[:EPS]")


# --------------------------------------------------------------------------------------
# The experiment file
# --------------------------------------------------------------------------------------

def toml_value(value):
    """A value as TOML writes it, for variant names: 0.1, 1.0, 1e-05 as 0.00001, true, 32;
    a string bare (no quotes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        text = format(Decimal(repr(value)), "f")
        return text if "." in text else text + ".0"
    return str(value)


def load_experiment(path):
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise Failure(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise Failure(f"{path}: not valid TOML: {e}") from None
    except OSError as e:
        raise Failure(f"{path}: {e.strerror}") from None
    where = path
    for key in doc:
        if key not in TOP_KEYS:
            raise Failure(f"{where}: unknown key `{key}`; expected {', '.join(TOP_KEYS)} "
                          "(settings go in [base], [grid] or [[variant]])")
    name = doc.get("name")
    if name is None:
        raise Failure(f"{where}: `name` is required (it names the output directory)")
    if not isinstance(name, str) or not name.strip():
        raise Failure(f"{where}: `name` must be a non-empty string")
    if "/" in name or "\\" in name or name in (".", ".."):
        raise Failure(f"{where}: `name` {name!r} must be a plain directory name")
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise Failure(f"{where}: `description` must be a string")
    seeds = doc.get("seeds")
    if seeds is None:
        raise Failure(f"{where}: `seeds` is required, e.g. seeds = [0, 1, 2]")
    if not isinstance(seeds, list) or not seeds:
        raise Failure(f"{where}: `seeds` must be a list of at least one integer")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**64:
            raise Failure(f"{where}: `seeds`: {s!r} is not a non-negative integer")
    target = doc.get("target_accuracy")
    if target is not None:
        if not isinstance(target, float) or not 0.0 <= target <= 1.0:
            raise Failure(f"{where}: `target_accuracy` must be a fraction in [0, 1], e.g. "
                          f"0.95, got {target!r}")
    measure = doc.get("measure", [])
    if not isinstance(measure, list):
        raise Failure(f"{where}: `measure` must be a list, e.g. measure = [\"gradient-signs\"]")
    for m in measure:
        if m not in MEASURES:
            raise Failure(f"{where}: `measure`: unknown measure {m!r}; expected "
                          f"{', '.join(map(repr, MEASURES))}")

    base = doc.get("base", {})
    if not isinstance(base, dict):
        raise Failure(f"{where}: `base` must be a table ([base])")
    base = {k: check_setting(f"{where}: [base]", k, v) for k, v in base.items()}

    variants = []  # (name, settings)
    grid = doc.get("grid")
    if grid is not None:
        if not isinstance(grid, dict):
            raise Failure(f"{where}: `grid` must be a table ([grid])")
        if not grid:
            raise Failure(f"{where}: [grid] is empty; give each key a list or a table of "
                          "label = value")
        axes = []
        for key, values in grid.items():
            at = f"{where}: [grid] `{key}`"
            if isinstance(values, list):
                if not values:
                    raise Failure(f"{at}: the list is empty")
                entries = [(toml_value(v), check_setting(f"{where}: [grid]", key, v))
                           for v in values]
            elif isinstance(values, dict):
                if not values:
                    raise Failure(f"{at}: the table is empty")
                entries = [(label, check_setting(f"{where}: [grid]", key, v, label))
                           for label, v in values.items()]
            else:
                raise Failure(f"{at}: expected a list of values or a table of label = value, "
                              f"got {_type_name(values)}")
            axes.append([(key, label, value) for label, value in entries])
        for combo in itertools.product(*axes):
            name_ = " ".join(f"{key}={label}" for key, label, _ in combo)
            settings = dict(base)
            settings.update({key: value for key, _, value in combo})
            variants.append((name_, settings))
    listed = doc.get("variant")
    if listed is not None:
        if not isinstance(listed, list) or not all(isinstance(v, dict) for v in listed):
            raise Failure(f"{where}: `variant` must be an array of tables ([[variant]])")
        for i, entry in enumerate(listed, 1):
            at = f"{where}: [[variant]] {i}"
            vname = entry.get("name")
            if vname is None:
                raise Failure(f"{at}: `name` is required")
            if not isinstance(vname, str) or not vname.strip():
                raise Failure(f"{at}: `name` must be a non-empty string")
            settings = dict(base)
            for k, v in entry.items():
                if k != "name":
                    settings[k] = check_setting(f"{at} ({vname!r})", k, v)
            variants.append((vname, settings))
    if grid is None and listed is None:
        variants.append(("base", dict(base)))
    seen = set()
    for vname, _ in variants:
        if vname in seen:
            raise Failure(f"{where}: two variants are named {vname!r}; variant names must be "
                          "unique")
        seen.add(vname)
    resolved = []
    for vname, settings in variants:
        try:
            resolved.append((vname, resolve(settings)))
        except ValueError as e:
            raise Failure(f"{where}: variant {vname!r}: {e}") from None
    return {"name": name, "description": description, "seeds": seeds, "target": target,
            "measure": measure, "variants": resolved}


# --------------------------------------------------------------------------------------
# Data, loaded as wgnn loads it (src/data/)
# --------------------------------------------------------------------------------------

class Dataset:
    def __init__(self, x, y, shape, source):
        self.x = x          # float32 [N, D]
        self.y = y          # int64 [N]
        self.shape = list(shape)
        self.source = source

    def __len__(self):
        return len(self.y)


def _read(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data


def _idx(path, dims):
    data = _read(path)
    if len(data) < 4 + 4 * dims or data[0] != 0 or data[1] != 0 or data[2] != 0x08 \
            or data[3] != dims:
        raise Failure(f"{path}: not an idx{dims} file of unsigned bytes")
    sizes = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims)
    if body.size != math.prod(sizes):
        raise Failure(f"{path}: the header says {sizes} but the file holds {body.size} bytes")
    return body.reshape(sizes)


def _labels_paths(images):
    base = os.path.basename(images)
    renamed = base.replace("idx3", "idx1").replace("images", "labels")
    if renamed == base:
        return []
    names = [renamed, renamed[:-3] if renamed.endswith(".gz") else renamed + ".gz"]
    return [os.path.join(os.path.dirname(images), n) for n in names]


def _mnist_pair(images, labels, source):
    pixels = _idx(images, 3)
    y = _idx(labels, 1).astype(np.int64)
    if len(y) != len(pixels):
        raise Failure(f"{images}: {len(pixels)} images but {len(y)} labels")
    x = pixels.reshape(len(pixels), -1).astype(np.float32) / np.float32(255.0)
    return Dataset(x, y, [1, pixels.shape[1], pixels.shape[2]], source)


def _cifar(paths, source):
    records = []
    for p in paths:
        data = np.frombuffer(_read(p), dtype=np.uint8)
        if data.size == 0 or data.size % 3073:
            raise Failure(f"{p}: file length {data.size} bytes is not a positive multiple of "
                          "the 3073-byte cifar-10 record")
        records.append(data.reshape(-1, 3073))
    data = np.concatenate(records)
    x = data[:, 1:].astype(np.float32) / np.float32(255.0)
    return Dataset(x, data[:, 0].astype(np.int64), [3, 32, 32], source)


def _safetensors(path):
    data = _read(path)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    ints = {"I8": "<i1", "U8": "u1", "I16": "<i2", "U16": "<u2", "I32": "<i4", "U32": "<u4",
            "I64": "<i8", "U64": "<u8"}

    def tensor(key, dtype):
        info = header.get(key)
        if info is None:
            raise Failure(f"{path}: no tensor {key!r} (a dataset holds x and y)")
        start, end = info["data_offsets"]
        return np.frombuffer(body[start:end], dtype=dtype).reshape(info["shape"]), info

    if header.get("x", {}).get("dtype") != "F32":
        raise Failure(f"{path}: x must be F32")
    x, info = tensor("x", "<f4")
    ydtype = header.get("y", {}).get("dtype")
    if ydtype not in ints:
        raise Failure(f"{path}: y must have an integer dtype, found {ydtype}")
    y, _ = tensor("y", ints[ydtype])
    if x.ndim == 0 or y.ndim != 1 or len(y) != x.shape[0]:
        raise Failure(f"{path}: expected x [N, ...] and y [N]")
    if (y.astype(np.float64) < 0).any():
        raise Failure(f"{path}: labels must be non-negative")
    shape = list(x.shape[1:]) or [1]
    return Dataset(x.reshape(len(x), -1).astype(np.float32), y.astype(np.int64), shape, path)


def _csv(path, label_column):
    text = _read(path).decode("utf-8")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = [l[:-1] if l.endswith("\r") else l for l in text.split("\n")]
    blank = [not l.strip() for l in lines]
    if all(blank):
        raise Failure(f"{path}: no data")
    first = blank.index(False)
    last = len(lines) - 1 - blank[::-1].index(False)
    rows = [(i + 1, lines[i]) for i in range(first, last + 1)]

    def cells(line, row):
        c = [v.strip() for v in row.split(",")]
        for j, v in enumerate(c):
            if '"' in v:
                raise Failure(f"{path} line {line}, column {j + 1}: quoted fields are not "
                              f"supported: {v!r}")
        return c

    def number(v):
        if "_" in v or v != v.strip():
            return None
        try:
            return float(v)
        except ValueError:
            return None

    head = cells(*rows[0])
    width = len(head)
    has_header = any(v and number(v) is None for v in head)
    if width < 2:
        raise Failure(f"{path}: need at least 2 columns (features and a label), found {width}")
    if label_column is None:
        col = width - 1
        if has_header:
            for want in ("label", "target", "y", "class"):
                hits = [j for j, h in enumerate(head) if h.lower() == want]
                if hits:
                    col = hits[0]
                    break
    elif re.fullmatch(r"\+?[0-9]+", label_column):
        col = int(label_column)
        if col >= width:
            raise Failure(f"{path}: label column index {col} is out of range for {width} "
                          "columns (indices start at 0)")
    else:
        if not has_header:
            raise Failure(f"{path}: label column {label_column!r} was given by name, but the "
                          "file has no header row")
        if label_column not in head:
            raise Failure(f"{path}: no column named {label_column!r}; header: {','.join(head)}")
        col = head.index(label_column)
    features, labels = [], []
    for line, row in rows[1:] if has_header else rows:
        c = cells(line, row) if row.strip() else []
        if len(c) != width:
            raise Failure(f"{path} line {line}: expected {width} columns, found {len(c)}")
        for j, v in enumerate(c):
            value = number(v)
            if j == col:
                if value is None or not math.isfinite(value) or value < 0 \
                        or value != int(value) or value > 2**32 - 1:
                    raise Failure(f"{path} line {line}: bad label {v!r}: labels must be "
                                  "non-negative whole numbers")
                labels.append(int(value))
            else:
                if value is None or not math.isfinite(np.float32(value)):
                    raise Failure(f"{path} line {line}, column {j + 1}: not a finite f32 "
                                  f"number: {v!r}")
                features.append(value)
    if not labels:
        raise Failure(f"{path}: no data rows")
    x = np.array(features, dtype=np.float32).reshape(len(labels), width - 1)
    return Dataset(x, np.array(labels, dtype=np.int64), [width - 1], path)


def _load_dir(path, split):
    prefix = "train" if split == "train" else "t10k"
    for base in (path, os.path.join(path, "raw")):
        for stem in ("-images-idx3-ubyte", "-images.idx3-ubyte"):
            for gz in ("", ".gz"):
                images = os.path.join(base, prefix + stem + gz)
                if os.path.isfile(images):
                    labels = [p for p in _labels_paths(images) if os.path.isfile(p)]
                    if not labels:
                        raise Failure(f"{images}: its labels file is missing")
                    return _mnist_pair(images, labels[0], images)
    names = ([f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train"
             else ["test_batch.bin"])
    for base in (path, os.path.join(path, "cifar-10-batches-bin")):
        files = [os.path.join(base, n) for n in names if os.path.isfile(os.path.join(base, n))]
        if files:
            return _cifar(files, path)
    raise Failure(f"{path}: not a dataset directory (expected MNIST IDX or CIFAR-10 binary "
                  "files)")


def _load_path(path, split, label_column):
    if not os.path.exists(path):
        raise Failure(f"{path}: no such file or directory")
    if os.path.isdir(path):
        return _load_dir(path, split)
    name = os.path.basename(path).lower()
    if name.endswith(".csv") or name.endswith(".csv.gz"):
        return _csv(path, label_column)
    if name.endswith(".safetensors"):
        return _safetensors(path)
    if name.endswith(".bin"):
        return _cifar([path], path)
    if name.endswith(".npy"):
        raise Failure(f"{path}: a .npy file holds no labels")
    head = _read(path)[:4]
    if "idx3" in name or head == b"\x00\x00\x08\x03":
        labels = [p for p in _labels_paths(path) if os.path.isfile(p)]
        if not labels:
            raise Failure(f"{path}: its labels file is missing")
        return _mnist_pair(path, labels[0], path)
    raise Failure(f"{path}: expected a .csv, .safetensors or cifar-10 .bin file, an mnist "
                  "idx3 images file, or a dataset directory")


def load_splits(config):
    """The training and test splits of a run, raw (pixels in [0, 1])."""
    data, test_path = config["data"], config["test-data"]
    label = config["label-column"]
    if data is None:
        train = _load_dir(EMBEDDED_MNIST, "train")
        own_test = _load_dir(EMBEDDED_MNIST, "test")
        train.source, own_test.source = EMBEDDED_NAME, EMBEDDED_NAME
    elif os.path.isdir(data):
        train, own_test = _load_dir(data, "train"), _load_dir(data, "test")
    else:
        train, own_test = _load_path(data, "train", label), None
    if test_path is not None:
        test = _load_path(test_path, "test", label)
    elif own_test is not None:
        test = own_test
    else:
        n = len(train)
        keep = math.floor(n * (1.0 - config["holdout"]) + 0.5)
        keep = min(max(keep, 1), max(n - 1, 1))
        test = Dataset(train.x[keep:], train.y[keep:], train.shape, train.source)
        train = Dataset(train.x[:keep], train.y[:keep], train.shape, train.source)
    if test.shape != train.shape:
        raise Failure(f"the test data's samples are shaped {test.shape} but the training "
                      f"data's {train.shape}")
    if len(test) == 0:
        raise Failure("the test split is empty")
    return train, test


# --------------------------------------------------------------------------------------
# Preprocessing (src/data/preprocess.rs): y = A · ((x − shift) ⊘ divisor), in float32
# --------------------------------------------------------------------------------------

def fit_transform(option, train):
    """(shift [D], divisor [D] or None, matrix [K, D] or None, output shape) fitted on the
    training split; None for `none`."""
    kind, arg = parse_normalize(option)
    x64 = train.x.astype(np.float64)
    n, d = x64.shape
    shape = train.shape
    if kind == "none":
        return None
    if kind == "mean-image":
        return x64.mean(0).astype(np.float32), None, None, shape
    if kind in ("channel-mean", "per-channel"):
        channels = shape[0] if len(shape) >= 1 else 1
        per = d // channels
        v = x64.reshape(n, channels, per)
        mean = v.sum(axis=(0, 2)) / (n * per)
        std = np.sqrt(((v - mean[None, :, None]) ** 2).sum(axis=(0, 2)) / (n * per))
        std = np.where(std < MIN_STD, 1.0, std)
        shift = np.repeat(mean.astype(np.float32), per)
        divisor = np.repeat(std.astype(np.float32), per) if kind == "per-channel" else None
        return shift, divisor, None, shape
    if n < 2:
        raise Failure(f"{option}: needs at least 2 training samples to estimate a covariance")
    if kind in ("pca", "pca-whiten"):
        from sklearn.decomposition import PCA
        k = arg
        if k > min(n, d):
            raise Failure(f"{option}: {k} components asked, but the training split allows at "
                          f"most {min(n, d)} ({d} features, {n} samples)")
        # The training covariance's eigendecomposition, as wgnn fits it (faer's symmetric
        # eigensolver); its components agree with svd_solver="full" to ~1e-14 on MNIST.
        pca = PCA(n_components=k, svd_solver="covariance_eigh").fit(x64)
        matrix = pca.components_
        if kind == "pca-whiten":
            ev = pca.explained_variance_
            top = ev[0]  # the largest: components come in decreasing variance
            bad = [c for c in range(k) if not ev[c] > top * RANK_TOLERANCE]
            if bad:
                rank = bad[0]
                raise Failure(f"{option}: component {rank + 1} has (near-)zero variance "
                              f"{ev[rank]:e}, so it cannot be whitened: the training "
                              f"covariance has rank {rank}, so the largest K that works is "
                              f"{rank}; use pca-whiten:{rank} or fewer, or zca")
            matrix = matrix / np.sqrt(ev)[:, None]
        return pca.mean_.astype(np.float32), None, matrix.astype(np.float32), [k]
    # zca
    mean = x64.mean(0)
    centred = x64 - mean
    cov = centred.T @ centred / (n - 1)
    values, vectors = np.linalg.eigh(cov)
    values = np.maximum(values, 0.0)
    w = (vectors / np.sqrt(values + arg)) @ vectors.T
    return mean.astype(np.float32), None, w.astype(np.float32), shape


def apply_transform(transform, data):
    x = torch.from_numpy(np.ascontiguousarray(data.x))
    if transform is None:
        return x.reshape(len(data), *data.shape)
    shift, divisor, matrix, out_shape = transform
    x = x - torch.from_numpy(shift)
    if divisor is not None:
        x = x / torch.from_numpy(divisor)
    if matrix is not None:
        x = x @ torch.from_numpy(matrix).T
    return x.reshape(len(data), *out_shape).contiguous()


# --------------------------------------------------------------------------------------
# Model specs (src/nn/spec.rs)
# --------------------------------------------------------------------------------------

def parse_spec_syntax(spec):
    """Checks a spec's tokens without knowing the data (shapes are checked when built)."""
    build_spec(spec, None)


def build_spec(spec, sample_shape):
    """nn.Sequential for samples shaped `sample_shape` (None: syntax only)."""
    if not spec.strip():
        raise ValueError("the model spec is empty; expected layers such as flatten,linear:10")
    features = sample_shape[0] if sample_shape is not None and len(sample_shape) == 1 else None
    flat_unknown = sample_shape is None
    layers = []
    for i, raw in enumerate(spec.split(",")):
        token = raw.strip()
        name, *args = token.split(":")
        name = name.lower()

        def fail(message):
            return ValueError(f"model spec {spec!r}: token {i + 1} {token!r}: {message}")

        def flat(what):
            if features is None and not flat_unknown:
                raise fail(f"{what} needs flat samples but they are shaped {sample_shape}; "
                           "put flatten first")
            return features

        def no_args():
            if args:
                raise fail(f"{name} takes no argument")

        if not name:
            raise fail("empty token (two commas in a row?)")
        if name == "flatten":
            no_args()
            if sample_shape is not None:
                features = features if features is not None else math.prod(sample_shape)
            else:
                flat_unknown = False
                features = 1
            layers.append(nn.Flatten())
        elif name == "linear":
            if not args:
                raise fail("linear needs its output size, e.g. linear:64")
            if not re.fullmatch(r"\+?[0-9]+", args[0]) or int(args[0]) == 0:
                raise fail(f"linear's output size must be a positive integer, got {args[0]!r}")
            out = int(args[0])
            if args[1:] not in ([], ["nobias"]):
                raise fail(f"unexpected linear option {':'.join(args[1:])!r}; only nobias")
            inp = flat("linear")
            if sample_shape is not None:
                layers.append(nn.Linear(inp, out, bias=args[1:] != ["nobias"]))
            features, flat_unknown = out, False
        elif name in ("bn", "batchnorm", "batchnorm1d"):
            no_args()
            f = flat("bn")
            if sample_shape is not None:
                layers.append(nn.BatchNorm1d(f, eps=1e-5, momentum=0.1))
        elif name == "dropout":
            if len(args) > 1:
                raise fail("dropout takes one probability, e.g. dropout:0.2")
            p = 0.5
            if args:
                try:
                    p = float(args[0])
                except ValueError:
                    raise fail(f"dropout probability {args[0]!r} is not a number") from None
                if not 0.0 <= p <= 1.0:
                    raise fail(f"dropout probability has to be between 0 and 1, but got {p}")
            layers.append(nn.Dropout(p))
        elif name in ("relu", "sigmoid", "tanh"):
            no_args()
            layers.append({"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}[name]())
        elif name == "gelu":
            if args in ([], ["none"]):
                layers.append(nn.GELU())
            elif args == ["tanh"]:
                layers.append(nn.GELU(approximate="tanh"))
            else:
                raise fail(f"gelu's approximation is none or tanh (gelu or gelu:tanh), got "
                           f"{':'.join(args)!r}")
        elif name in ("leaky_relu", "leakyrelu"):
            slope = 0.01
            if len(args) > 1:
                raise fail("leaky_relu takes one negative slope, e.g. leaky_relu:0.2")
            if args:
                try:
                    slope = float(args[0])
                except ValueError:
                    slope = float("nan")
                if not math.isfinite(slope):
                    raise fail(f"leaky_relu's negative slope must be a finite number, got "
                               f"{args[0]!r}")
            layers.append(nn.LeakyReLU(slope))
        else:
            raise fail(f"unknown layer {name!r}; expected one of flatten, linear:N[:nobias], "
                       "bn, dropout[:P], relu, sigmoid, tanh, gelu[:tanh], leaky_relu[:SLOPE]")
    return nn.Sequential(*layers)


def lecture_spec(outputs):
    return (f"flatten,linear:64,bn,relu,dropout:{LECTURE_DROPOUT},linear:32,bn,relu,"
            f"dropout:{LECTURE_DROPOUT},linear:{outputs}")


def build_model(config, model_shape, outputs):
    spec = config["arch"] or lecture_spec(outputs)
    model = build_spec(spec, model_shape)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"model spec {spec!r} has no Linear layer to give the logits")
    last = linears[-1].out_features
    if not (last == outputs or (config["loss"] == "ce" and last > outputs)):
        raise ValueError(f"model spec {spec!r} ends in {last} outputs, but {config['loss']} "
                         f"on this data needs {outputs}")
    return model


# --------------------------------------------------------------------------------------
# Training (src/train.rs)
# --------------------------------------------------------------------------------------

class Prepared:
    """A run's data: splits after the preprocessing, with what the model needs to know."""

    def __init__(self, config):
        train, test = load_splits(config)
        if config["check-finite"]:
            for split in (train, test):
                bad = np.argwhere(~np.isfinite(split.x))
                if len(bad):
                    raise Failure(f"{split.source}: sample {bad[0][0]}, feature {bad[0][1]} "
                                  "is not finite (check-finite)")
        transform = fit_transform(config["normalize"], train)
        self.x_train = apply_transform(transform, train)
        self.x_test = apply_transform(transform, test)
        self.y_train = torch.from_numpy(train.y)
        self.y_test = torch.from_numpy(test.y)
        self.shape = list(self.x_train.shape[1:])
        self.classes = int(max(train.y.max(initial=0), test.y.max(initial=0))) + 1


def make_loss(config):
    if config["loss"] == "ce":
        return nn.CrossEntropyLoss(label_smoothing=config["label-smoothing"])
    return nn.BCEWithLogitsLoss(pos_weight=torch.tensor([config["pos-weight"]]))


def loss_and_correct(loss_fn, bce, logits, y):
    if bce:
        z = logits[:, 0]
        loss = loss_fn(z, y.to(torch.float32))
        correct = ((z > 0).to(torch.int64) == y).sum().item()
    else:
        loss = loss_fn(logits, y)
        correct = (logits.argmax(1) == y).sum().item()
    return loss, correct


def make_optimizer(config, params):
    if config["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=config["lr"], momentum=config["momentum"],
                               weight_decay=config["weight-decay"], foreach=False)
    cls = torch.optim.Adam if config["optimizer"] == "adam" else torch.optim.AdamW
    return cls(params, lr=config["lr"], weight_decay=config["weight-decay"],
               amsgrad=config["amsgrad"], foreach=False)


def make_scheduler(config, optimizer):
    if config["lr-schedule"] is None:
        return None
    kind, a, b = parse_schedule(config["lr-schedule"])
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=a, gamma=b)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=a, eta_min=b)


def evaluate(model, loss_fn, bce, x, y, batch_size):
    model.eval()
    total, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(y), batch_size):
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            loss, c = loss_and_correct(loss_fn, bce, model(xb), yb)
            total += loss.item() * len(yb)
            correct += c
    return total / len(y), correct / len(y)


def single_signed_share(model, loss_fn, bce, x, y):
    """FORMAT.md's gradient-signs: on a copy of the model in train mode (dropout on, with
    its own masks; no step is taken, as wgnn's copy trains at rate 0), the gradient of the
    loss of each of the first 256 training samples alone with respect to the first Linear's
    weight; among the rows (output neurons) that are not all zero, the share whose nonzero
    entries all have one sign; averaged over the samples with any such row (NaN if none)."""
    probe = copy.deepcopy(model)
    probe.train()
    first = next(m for m in probe if isinstance(m, nn.Linear))
    total, counted = 0.0, 0
    # The copy's dropout masks come from a fork of the global generator, so the run's own
    # masks are the same with and without the measure.
    with torch.random.fork_rng(devices=[]):
        for i in range(min(GRADIENT_SIGN_SAMPLES, len(y))):
            probe.zero_grad(set_to_none=True)
            loss, _ = loss_and_correct(loss_fn, bce, probe(x[i:i + 1]), y[i:i + 1])
            loss.backward()
            g = first.weight.grad
            pos, neg = (g > 0).any(1), (g < 0).any(1)
            live = int((pos | neg).sum())
            if live:
                total += int((pos ^ neg).sum()) / live
                counted += 1
    return total / counted if counted else float("nan")


def run_one(config, data, seed, measure):
    """Trains one (variant, seed); yields the rows of its epochs."""
    bce = config["loss"] == "bce"
    outputs = 1 if bce else data.classes
    torch.manual_seed(seed)
    model = build_model(config, data.shape, outputs)
    loss_fn = make_loss(config)
    optimizer = make_optimizer(config, model.parameters())
    scheduler = make_scheduler(config, optimizer)
    generator = torch.Generator().manual_seed(seed)
    n, bs = len(data.y_train), config["batch-size"]
    for epoch in range(1, config["epochs"] + 1):
        model.train()
        order = (torch.randperm(n, generator=generator) if not config["no-shuffle"]
                 else torch.arange(n))
        batches = list(order.split(bs))
        if config["drop-last"] and batches and len(batches[-1]) < bs:
            batches.pop()
        total, correct, count = 0.0, 0, 0
        for idx in batches:
            xb, yb = data.x_train[idx], data.y_train[idx]
            loss, c = loss_and_correct(loss_fn, bce, model(xb), yb)
            value = loss.item()
            if not math.isfinite(value):
                yield {"epoch": epoch, "diverged": 1}
                return
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += value * len(idx)
            correct += c
            count += len(idx)
        test_loss, test_accuracy = evaluate(model, loss_fn, bce, data.x_test, data.y_test, bs)
        row = {"epoch": epoch, "train_loss": total / count, "train_accuracy": correct / count,
               "test_loss": test_loss, "test_accuracy": test_accuracy, "diverged": 0}
        if measure:
            row["single_signed_share"] = single_signed_share(model, loss_fn, bce,
                                                             data.x_train, data.y_train)
        yield row
        if scheduler is not None:
            scheduler.step()


def check_batches(config, data, vname):
    """PyTorch's BatchNorm1d refuses a training batch of one sample."""
    n, bs = len(data.y_train), config["batch-size"]
    if n == 0:
        raise Failure(f"variant {vname!r}: the training split is empty")
    if config["drop-last"] and n < bs:
        raise Failure(f"variant {vname!r}: drop-last with batch-size {bs} leaves no batch of "
                      f"the {n} training samples")
    if not config["drop-last"] and n % bs == 1:
        outputs = 1 if config["loss"] == "bce" else data.classes
        probe = build_model(config, data.shape, outputs)
        if any(isinstance(m, nn.BatchNorm1d) for m in probe):
            raise Failure(f"variant {vname!r}: the last batch of each epoch holds 1 sample "
                          f"({n} samples, batch-size {bs}), which PyTorch's BatchNorm1d "
                          "cannot train on; use drop-last = true or another batch-size")


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------

def fmt(value):
    """As Rust's {:.6} writes an f64 (NaN, inf, -inf)."""
    if value is None:
        return ""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.6f}"


def field(text):
    """A CSV field: quoted when it holds a comma, a quote or a newline."""
    if any(c in text for c in ',"\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def csv_row(vname, seed, r):
    if r["diverged"]:
        # The epoch the run diverged in: a NaN loss and nothing else, as wgnn compare.
        return f"{field(vname)},{seed},{r['epoch']},nan,,,,1,"
    return ",".join([field(vname), str(seed), str(r["epoch"]), fmt(r["train_loss"]),
                     fmt(r["train_accuracy"]), fmt(r["test_loss"]), fmt(r["test_accuracy"]),
                     "0", fmt(r.get("single_signed_share"))])


def mean_std(values):
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)
    return mean, math.sqrt(var)


def summarize(experiment, results):
    """The table wgnn compare prints: per variant, over its seeds, the final test accuracy
    (mean ± sample std of the runs that did not diverge), the epoch of the best mean test
    accuracy, the first epoch whose mean test accuracy reaches target_accuracy, the mean
    train − test accuracy gap at the end, and the diverged runs."""
    target = experiment["target"]
    reach = "epochs to target" if target is None else f"epochs to {100 * target:.1f} %"
    out = [f"| variant | final test accuracy (mean ± std) | best epoch | {reach} | "
           "train − test gap | diverged |", "|---|---|---|---|---|---|"]
    for vname, _ in experiment["variants"]:
        runs = list(results[vname].values())
        done = [[row for row in r if not row["diverged"]] for r in runs]
        ok = [d for d, r in zip(done, runs) if d and not r[-1]["diverged"]]
        finals = [d[-1]["test_accuracy"] for d in ok]
        gaps = [d[-1]["train_accuracy"] - d[-1]["test_accuracy"] for d in ok]
        epochs = max((len(d) for d in done), default=0)
        means = []
        for e in range(epochs):
            vals = [d[e]["test_accuracy"] for d in done if len(d) > e]
            means.append(sum(vals) / len(vals))
        best = "—"
        if means:
            top = max(means)
            best = str(max(e for e, m in enumerate(means) if m == top) + 1)
        reached = "—"
        if target is not None:
            hit = next((e for e, m in enumerate(means) if m >= target), None)
            reached = "—" if hit is None else str(hit + 1)
        if finals:
            m, sd = mean_std(finals)
            accuracy = f"{100 * m:.2f} % ± {100 * sd:.2f}"
            gap = f"{100 * mean_std(gaps)[0]:+.2f} pt"
        else:
            accuracy = gap = "—"
        diverged = sum(1 for r in runs if r and r[-1]["diverged"])
        out.append(f"| {vname} | {accuracy} | {best} | {reached} | {gap} | "
                   f"{diverged}/{len(runs)} |")
    return "\n".join(out) + "\n"


def prepare_all(experiment, measure):
    """Every variant's data (loaded and preprocessed once per data setting) and model,
    checked before anything trains."""
    cache, prepared = {}, {}
    data_keys = ("data", "test-data", "holdout", "label-column", "normalize",
                 "check-finite")
    for vname, config in experiment["variants"]:
        key = tuple(config[k] for k in data_keys)
        if key not in cache:
            try:
                cache[key] = Prepared(config)
            except Failure as e:
                raise Failure(f"variant {vname!r}: {e}") from None
        data = prepared[vname] = cache[key]
        if config["loss"] == "bce" and data.classes > 2:
            raise Failure(f"variant {vname!r}: loss \"bce\" needs two classes, but the "
                          f"data has {data.classes}")
        try:
            model = build_model(config, data.shape,
                                1 if config["loss"] == "bce" else data.classes)
        except ValueError as e:
            raise Failure(f"variant {vname!r}: {e}") from None
        check_batches(config, data, vname)
        if measure and any(isinstance(m, nn.BatchNorm1d) for m in model):
            raise Failure(f"variant {vname!r}: `measure = [\"gradient-signs\"]` trains on "
                          "a batch of one, which batch norm cannot: use an arch without bn")
    return prepared


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", help="the experiment file (experiments/FORMAT.md)")
    parser.add_argument("--out", help="output directory (default runs/compare-torch/<name>/)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch.set_num_threads (default 2; 1 is much faster on a busy "
                             "2-core machine, and gives the same figures to ~1e-7)")
    args = parser.parse_args()
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float32)
    try:
        experiment = load_experiment(args.experiment)
        out = args.out or os.path.join("runs", "compare-torch", experiment["name"])
        measure = "gradient-signs" in experiment["measure"]
        prepared = prepare_all(experiment, measure)
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, "results.csv")
        results = {}
        runs = len(experiment["variants"]) * len(experiment["seeds"])
        print(f"{experiment['name']}: {len(experiment['variants'])} variants × "
              f"{len(experiment['seeds'])} seeds (torch {torch.__version__}, CPU, "
              f"{torch.get_num_threads()} threads)", flush=True)
        started = time.perf_counter()
        with open(path, "w", newline="") as f:
            f.write(",".join(HEADER) + "\n")
            done = 0
            for vname, config in experiment["variants"]:
                results[vname] = {}
                for seed in experiment["seeds"]:
                    t0 = time.perf_counter()
                    rows = results[vname][seed] = []
                    for r in run_one(config, prepared[vname], seed, measure):
                        rows.append(r)
                        f.write(csv_row(vname, seed, r) + "\n")
                    f.flush()
                    seconds = time.perf_counter() - t0
                    done += 1
                    last = rows[-1]
                    outcome = (f"diverged in epoch {last['epoch']}" if last["diverged"] else
                               f"test accuracy {100 * last['test_accuracy']:.2f} %")
                    left = (time.perf_counter() - started) / done * (runs - done)
                    print(f"[{done:>3}/{runs}] {vname} · seed {seed}: {outcome} "
                          f"({seconds:.1f} s; about {left:.0f} s left)", flush=True)
        table = summarize(experiment, results)
        print(table, end="")
        with open(os.path.join(out, "summary.md"), "w") as f:
            f.write(table)
        print(f"wrote {out}/{{results.csv, summary.md}} in "
              f"{time.perf_counter() - started:.0f} s")
    except Failure as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
