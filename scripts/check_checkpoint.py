"""Checks a wgnn checkpoint from Python: every tensor's CRC-32 and the metadata's, as wgnn
records them (src/checkpoint.rs), then builds the nn.Sequential its architecture ("wgnn.run"'s
spec) describes and loads the state_dict into it with strict=True.

    python scripts/check_checkpoint.py runs/latest    # or a checkpoint file, as Model::save writes

A tensor's CRC-32 covers its dtype's name, its shape (u64 little-endian each) and its bytes;
the metadata's covers every other entry in key order, each `key NUL value NUL`.
"""

import json
import struct
import sys
import zlib
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

TENSORS = "wgnn.crc32.tensors"
METADATA = "wgnn.crc32.metadata"
DTYPES = {torch.float32: "F32", torch.int64: "I64", torch.float64: "F64", torch.int32: "I32"}


def main(path: Path) -> None:
    if path.is_dir():
        path = path / "checkpoint.safetensors"
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    state = load_file(str(path))
    stored = json.loads(metadata[TENSORS])
    for name, tensor in sorted(state.items()):
        crc = zlib.crc32(DTYPES[tensor.dtype].encode())
        crc = zlib.crc32(b"".join(struct.pack("<Q", d) for d in tensor.shape), crc)
        crc = zlib.crc32(tensor.contiguous().numpy().tobytes(), crc)
        assert f"{crc:08x}" == stored[name], f"{path}: tensor {name!r} fails its checksum"
    rest = sorted((k, v) for k, v in metadata.items() if k not in (TENSORS, METADATA))
    crc = zlib.crc32(b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in rest))
    assert f"{crc:08x}" == metadata[METADATA], f"{path}: the metadata fails its checksum"
    print(f"{path}: {len(state)} tensors and the metadata match their checksums")

    run = json.loads(metadata["wgnn.run"])
    # The first layer sees the preprocessing's output (K features for pca:K), else the data.
    shape = run["sample_shape"]
    normalization = run.get("normalization")
    if isinstance(normalization, dict):
        shape = normalization["output_shape"]
    features = 1
    for d in shape:
        features *= d
    layers = []
    for token in run["arch"].split(","):
        kind, _, arg = token.partition(":")
        args = arg.split(":") if arg else []
        if kind == "flatten":
            layers.append(torch.nn.Flatten())
        elif kind == "linear":
            out = int(args[0])
            layers.append(torch.nn.Linear(features, out, bias="nobias" not in args))
            features = out
        elif kind == "bn":
            eps = float(args[0]) if args else 1e-5
            momentum = 0.1
            if len(args) > 1:
                momentum = None if args[1] == "none" else float(args[1])
            layers.append(torch.nn.BatchNorm1d(features, eps=eps, momentum=momentum))
        elif kind == "dropout":
            layers.append(torch.nn.Dropout(float(args[0]) if args else 0.5))
        elif kind == "relu":
            layers.append(torch.nn.ReLU())
        elif kind == "sigmoid":
            layers.append(torch.nn.Sigmoid())
        elif kind == "tanh":
            layers.append(torch.nn.Tanh())
        elif kind == "gelu":
            layers.append(torch.nn.GELU(approximate=args[0] if args else "none"))
        elif kind == "leaky_relu":
            layers.append(torch.nn.LeakyReLU(float(args[0]) if args else 0.01))
        else:
            raise SystemExit(f"{token}: a layer this script does not know")
    model = torch.nn.Sequential(*layers)
    print(f"load_state_dict(strict=True): {model.load_state_dict(state, strict=True)}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/latest"))
