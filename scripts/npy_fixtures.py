#!/usr/bin/env python3
"""Write the .npy fixtures of tests/npy.rs and tests/cli.rs with NumPy's own np.save.

Usage, from the repository root::

    pip install numpy
    python3 scripts/npy_fixtures.py [OUT_DIR]     # OUT_DIR defaults to tests/fixtures/npy

Every array is small and made from fixed formulas (no random numbers), so a rerun writes the
same bytes (checked with numpy 2.4.6). Each file's contents are
listed in tests/fixtures/README.md; tests/npy.rs checks each against the same formulas.
"""

import gzip
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def c_index_grid(shape):
    """The last axis counts ones, the one before tens, the one before hundreds: element (i, j)
    of a 2-d grid is 10 i + j, element (i, j, k) of a 3-d one 100 i + 10 j + k."""
    grid = np.zeros(shape, dtype=np.int64)
    for axis, weight in zip(range(len(shape)), (100, 10, 1)[-len(shape):]):
        view = [1] * len(shape)
        view[axis] = shape[axis]
        grid = grid + weight * np.arange(shape[axis]).reshape(view)
    return grid


def mnist_test_digits(count):
    """The first `count` digits of data/mnist/t10k-images-idx3-ubyte.gz, as uint8 [N, 28, 28]."""
    raw = gzip.decompress((ROOT / "data/mnist/t10k-images-idx3-ubyte.gz").read_bytes())
    magic, n, rows, cols = np.frombuffer(raw[:16], dtype=">u4")
    assert magic == 0x803 and n >= count, (magic, n)
    pixels = np.frombuffer(raw[16 : 16 + count * rows * cols], dtype=np.uint8)
    return pixels.reshape(count, rows, cols)


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "tests/fixtures/npy"
    out.mkdir(parents=True, exist_ok=True)
    arrays = {
        # Pixel bytes, including both ends of the range.
        "u1.npy": np.array([[0, 1, 127], [128, 254, 255]], dtype="|u1"),
        # Big-endian float32 and little-endian float64 (0.1 is not an f32: it rounds).
        "f4_be.npy": np.array([[1.5, -2.0, 0.25], [1e-3, 3e4, -0.0]], dtype=">f4"),
        "f8_le.npy": np.array([0.1, -1.25, 1e10], dtype="<f8"),
        # Integers in both byte orders, converted unscaled.
        "i2_be.npy": np.array([-2, 256, 32767], dtype=">i2"),
        "i8_le.npy": np.array([[-7, 1 << 40]], dtype="<i8"),
        # Fortran order, 2-d and 3-d: np.save writes the columns first.
        "fortran_2d.npy": np.asfortranarray(c_index_grid((2, 3)).astype("<f4")),
        "fortran_3d.npy": np.asfortranarray(c_index_grid((2, 3, 4)).astype("<f4")),
        "fortran_3d_i4_be.npy": np.asfortranarray(c_index_grid((2, 3, 4)).astype(">i4")),
        # A dtype the reader refuses: complex64.
        "bad_dtype.npy": np.array([1 + 2j, 3 - 4j], dtype="<c8"),
        # The first 8 embedded MNIST test digits as uint8, for `wgnn predict`.
        "mnist_test_u1.npy": mnist_test_digits(8),
    }
    for name, array in arrays.items():
        np.save(out / name, array)
        print(f"{name}: {array.dtype.str} {array.shape} fortran={np.isfortran(array)}")


if __name__ == "__main__":
    main()
