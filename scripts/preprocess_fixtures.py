#!/usr/bin/env python3
"""Write scikit-learn / NumPy reference fixtures for wgnn's input preprocessing into
tests/fixtures/preprocess.safetensors.

Setup (CPU only):

    pip install scikit-learn numpy safetensors

Run from the repository root:

    python3 scripts/preprocess_fixtures.py        # add -v to print every key, dtype and shape

What it pins down (see tests/fixtures/README.md for the full key list): mean-image
subtraction, per-channel mean subtraction, per-channel standardisation (population std),
PCA (sklearn.decomposition.PCA, svd_solver='full') with 1, 5 and 30 components, PCA
whitening with 5 and 30 components, and ZCA whitening (eps 1e-5 and 0.1), all fitted on a
[300, 2, 4, 4] training set and applied to a [50, 2, 4, 4] test set.

The data are made awkward on purpose: correlated features (a low-rank mixing plus noise),
channel means ~0.4 and ~-3 with different scales, and two features that hold the very same
value in every training and test sample (like MNIST's border pixels), so the training
covariance is singular with rank 30 out of 32. Two things keep the references well
conditioned for a float32 implementation: the centred training block of the 30 other
features is given a designed spectrum (12, 7, 4, 2.5, 1.5, then geometric from 0.8 to 0.06;
every relative eigenvalue gap >= 10%) by replacing its singular values, and the draw is
repeated (from the same generator) until, in every principal direction, the largest absolute
entry beats the second largest by >= 5%, so sklearn's sign rule is never close to a tie.

Deterministic: the data come from np.random.default_rng(0) and are rounded to float32 once;
every reference is then computed in float64 from those float32 values and stored as float32
(the matrix rank as int64). The script asserts its own invariants (whitened covariances,
ZCA symmetry, sklearn's sign convention) and checks that the file loads back bit-exactly.
"""

import json
import os
import struct
import sys

import numpy as np
import sklearn
from safetensors.numpy import load_file, save_file
from sklearn.decomposition import PCA

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "tests", "fixtures")
NAME = "preprocess.safetensors"

N_TRAIN, N_TEST = 300, 50
C, H, W = 2, 4, 4
D = C * H * W  # 32 features, channel-major: feature = c*16 + h*4 + w
PIX = H * W

# (channel, row, col) -> the value that pixel holds in every train and test sample.
CONSTANT = {(0, 0, 0): 0.0, (1, 3, 3): -2.5}
CONST_IDX = [c * PIX + h * W + w for (c, h, w) in CONSTANT]
FREE_IDX = [i for i in range(D) if i not in CONST_IDX]
RANK = len(FREE_IDX)  # 30

CHANNEL_OFFSET = (0.4, -3.0)
CHANNEL_SCALE = (0.35, 1.2)

# Designed spectrum of the centred training block of the 30 non-constant features (before
# the float32 rounding): five dominant directions, then a geometric tail, every relative gap
# >= ~10%, so each of the 30 principal directions is well determined.
SPECTRUM = np.concatenate([[12.0, 7.0, 4.0, 2.5, 1.5], np.geomspace(0.8, 0.06, RANK - 5)])

PCA_K = (1, 5, 30)
WHITEN_K = (5, 30)
ZCA_EPS = {"zca_default": 1e-5, "zca_0.1": 0.1}
MIN_SIGN_MARGIN = 0.05


def check_and_save(arrays, name, metadata):
    out = {}
    for k, v in arrays.items():
        assert isinstance(v, np.ndarray), k
        if np.issubdtype(v.dtype, np.floating):
            assert v.dtype == np.float32, (k, v.dtype)
            assert np.isfinite(v).all(), k
        else:
            assert v.dtype == np.int64, (k, v.dtype)
        out[k] = np.ascontiguousarray(v)
    path = os.path.join(OUT_DIR, name)
    save_file(out, path, metadata=metadata)
    canonical_header(path)
    print(f"wrote {path} ({os.path.getsize(path)} bytes, {len(out)} tensors)")
    # Read back: same keys, dtypes, shapes and bits.
    back = load_file(path)
    assert sorted(back) == sorted(out), name
    for k, v in out.items():
        b = back[k]
        assert b.dtype == v.dtype and b.shape == v.shape, k
        assert b.tobytes() == v.tobytes(), k
    return out


def canonical_header(path):
    """safetensors writes __metadata__ as an unordered map, so with two entries their order
    (and the file's bytes) would change from run to run. Rewrite the header with the metadata
    keys sorted: same length, same JSON content, reproducible bytes."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = raw[8 : 8 + n].decode("utf-8")
    parsed = json.loads(header)
    meta = parsed["__metadata__"]
    parsed["__metadata__"] = {k: meta[k] for k in sorted(meta)}
    text = json.dumps(parsed, separators=(",", ":"), ensure_ascii=False)
    assert len(text.encode()) == len(header.rstrip(" ").encode()), "header length changed"
    assert json.loads(text) == json.loads(header)
    new = text.encode().ljust(n, b" ")
    with open(path, "wb") as f:
        f.write(raw[:8] + new + raw[8 + n :])


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------
def draw_data(rng):
    """One candidate (train, test) pair, float32 [n, 2, 4, 4]."""
    factors = 6
    mixing = rng.standard_normal((factors, RANK)) * np.array([1.0, 0.8, 0.6, 0.5, 0.4, 0.3])[:, None]
    scale = np.where(np.array(FREE_IDX) < PIX, CHANNEL_SCALE[0], CHANNEL_SCALE[1])

    def draw(n):
        z = rng.standard_normal((n, factors))
        y = z @ mixing + 0.3 * rng.standard_normal((n, RANK))  # low-rank mixing plus noise
        return y * scale  # channel scales

    y_train, y_test = draw(N_TRAIN), draw(N_TEST)

    # Give the centred training block the designed spectrum (its singular vectors, i.e. its
    # principal directions and normalised scores, stay those of the draw).
    mu = y_train.mean(0)
    u, s, vt = np.linalg.svd(y_train - mu, full_matrices=False)
    target = np.sqrt(SPECTRUM * (N_TRAIN - 1))
    y_train = mu + (u * target) @ vt
    # The test set is drawn from the same model and mapped by the same linear map, so it
    # looks like the training set without being fitted to it.
    y_test = mu + ((y_test - mu) @ vt.T * (target / s)) @ vt

    def assemble(y):
        x = np.empty((y.shape[0], D))
        x[:, FREE_IDX] = y
        for c in range(C):
            x[:, c * PIX : (c + 1) * PIX] += CHANNEL_OFFSET[c]
        for i, v in zip(CONST_IDX, CONSTANT.values()):
            x[:, i] = v
        return x.astype(np.float32).reshape(-1, C, H, W)

    return assemble(y_train), assemble(y_test)


def sign_margins(train):
    """For each of the 30 principal directions of `train`: (|largest| - |second largest|) /
    |largest| over its entries, i.e. how far sklearn's sign decision is from a tie."""
    x = train.reshape(N_TRAIN, D).astype(np.float64)
    comp = PCA(n_components=RANK, svd_solver="full").fit(x).components_
    a = np.sort(np.abs(comp), axis=1)
    return (a[:, -1] - a[:, -2]) / a[:, -1]


def make_data():
    """Draws from np.random.default_rng(0) until every principal direction's sign decision
    has a margin of at least MIN_SIGN_MARGIN (so a float32 eigensolver decides the same sign)."""
    rng = np.random.default_rng(0)
    for attempt in range(1, 1001):
        train, test = draw_data(rng)
        m = sign_margins(train)
        if m.min() >= MIN_SIGN_MARGIN:
            return train, test, attempt
    raise RuntimeError("no draw met the sign margin")


# --------------------------------------------------------------------------------------
# references
# --------------------------------------------------------------------------------------
def f32(a):
    return np.asarray(a, dtype=np.float64).astype(np.float32)


def channel_view(x):
    """[n, 32] -> [n, C, 16]."""
    return x.reshape(x.shape[0], C, PIX)


def check_sign_convention(pca, xc, k):
    """sklearn >= 1.5 flips with svd_flip(u_based_decision=False): in each row of
    components_ the entry of largest absolute value is positive. Check it on the float64
    and on the stored float32 rows, and report how far from a tie each decision is and how
    often the older u-based rule would have chosen the other sign."""
    comp = pca.components_
    stored = f32(comp)
    worst_margin = np.inf
    u_based_differs = 0
    for r in range(k):
        a = np.abs(comp[r])
        j = int(np.argmax(a))
        assert comp[r, j] > 0, (k, r)
        assert np.argmax(np.abs(stored[r])) == j and stored[r, j] > 0, (k, r)
        second = np.sort(a)[-2]
        worst_margin = min(worst_margin, (a[j] - second) / a[j])
        score = xc @ comp[r]  # = U[:, r] * S[r]
        if np.sign(score[np.argmax(np.abs(score))]) < 0:
            u_based_differs += 1
    return worst_margin, u_based_differs


def references(train, test):
    xtr = train.reshape(N_TRAIN, D).astype(np.float64)
    xte = test.reshape(N_TEST, D).astype(np.float64)
    for x in (xtr, xte):
        for i, v in zip(CONST_IDX, CONSTANT.values()):
            assert (x[:, i] == v).all()

    d = {"train": train, "test": test}

    # mean image
    mean = xtr.mean(0)
    d["mean_image.mean"] = f32(mean)
    d["mean_image.test"] = f32(xte - mean)

    # channel mean, per-channel standardisation (population std over samples and pixels)
    cm = channel_view(xtr).mean(axis=(0, 2))
    cs = channel_view(xtr).std(axis=(0, 2), ddof=0)
    d["channel_mean.mean"] = f32(cm)
    d["channel_mean.test"] = f32((channel_view(xte) - cm[None, :, None]).reshape(N_TEST, D))
    d["per_channel.mean"] = f32(cm)
    d["per_channel.std"] = f32(cs)
    d["per_channel.test"] = f32(
        ((channel_view(xte) - cm[None, :, None]) / cs[None, :, None]).reshape(N_TEST, D))

    # covariance spectrum and rank
    xc = xtr - mean
    cov = xc.T @ xc / (N_TRAIN - 1)
    lam, vec = np.linalg.eigh(cov)
    lam, vec = lam[::-1], vec[:, ::-1]
    rank = int(np.linalg.matrix_rank(xc))
    assert rank == RANK, rank
    d["rank"] = np.array([rank], dtype=np.int64)
    d["eigenvalues"] = f32(lam)
    gaps = (lam[: RANK - 1] - lam[1:RANK]) / lam[: RANK - 1]

    # PCA
    conv = {}
    full = PCA(n_components=max(PCA_K), svd_solver="full").fit(xtr)
    for k in PCA_K:
        p = PCA(n_components=k, svd_solver="full").fit(xtr)
        assert np.allclose(p.explained_variance_, lam[:k], rtol=1e-10, atol=1e-12), k
        assert np.allclose(p.mean_, mean, rtol=0, atol=1e-14), k
        assert np.abs(p.components_ - full.components_[:k]).max() < 1e-12, k
        # the components are the covariance's eigenvectors, up to sign
        assert np.abs(np.abs(np.sum(p.components_ * vec[:, :k].T, axis=1)) - 1).max() < 1e-9, k
        conv[k] = check_sign_convention(p, xc, k)
        d[f"pca{k}.components"] = f32(p.components_)
        d[f"pca{k}.explained_variance"] = f32(p.explained_variance_)
        d[f"pca{k}.mean"] = f32(p.mean_)
        d[f"pca{k}.test"] = f32(p.transform(xte))
        if k == 5:
            d[f"pca{k}.train_out"] = f32(p.transform(xtr))

    # PCA whitening
    for k in WHITEN_K:
        p = PCA(n_components=k, whiten=True, svd_solver="full").fit(xtr)
        tr_out = p.transform(xtr)
        cov_w = np.cov(tr_out, rowvar=False, ddof=1)
        err = np.abs(cov_w - np.eye(k)).max()
        assert err < 1e-6, (k, err)
        assert np.allclose(tr_out, p.fit_transform(xtr), rtol=0, atol=1e-9)
        plain = PCA(n_components=k, svd_solver="full").fit(xtr)
        assert np.allclose(p.transform(xte), plain.transform(xte) / np.sqrt(plain.explained_variance_),
                           rtol=1e-12, atol=1e-12)
        d[f"pca_whiten{k}.test"] = f32(p.transform(xte))
        d[f"pca_whiten{k}.train_out"] = f32(tr_out)
        print(f"pca_whiten{k}: max |cov(train_out) - I| = {err:.2e}")

    # ZCA: W = U diag(1/sqrt(lambda + eps)) U^T on the (n-1) covariance
    null = vec[:, RANK:]
    proj_null = null @ null.T
    expect_null = np.zeros((D, D))
    expect_null[CONST_IDX, CONST_IDX] = 1.0
    assert np.abs(proj_null - expect_null).max() < 1e-12  # the null space is the constant features
    proj = np.eye(D) - expect_null
    for tag, eps in ZCA_EPS.items():
        w = (vec * (1.0 / np.sqrt(lam + eps))) @ vec.T
        asym = np.abs(w - w.T).max()
        assert asym <= 1e-12 * np.abs(w).max(), (tag, asym)
        w = 0.5 * (w + w.T)  # exactly symmetric
        wcw = w @ cov @ w
        exact = (vec * (lam / (lam + eps))) @ vec.T
        assert np.abs(wcw - exact).max() < 1e-10, tag
        dev = np.abs(wcw - proj).max()
        bound = eps / (lam[RANK - 1] + eps)  # largest shrinkage lambda/(lambda+eps) falls short of 1
        assert dev <= bound + 1e-10, (tag, dev, bound)
        out = (xte - mean) @ w  # W symmetric: rows times W = rows times W^T
        assert np.abs(out[:, CONST_IDX]).max() < 1e-10, tag
        d[f"{tag}.test"] = f32(out)
        d[f"{tag}.matrix"] = f32(w)
        print(f"{tag} (eps={eps:g}): max |W-W^T| before symmetrising {asym:.1e}; "
              f"max |WCW - P| = {dev:.3e} (bound eps/(lambda_30+eps) = {bound:.3e})")

    return d, lam, rank, gaps, conv


def summarize(d):
    print("\n== " + NAME)
    for k, v in d.items():
        print(f"  {k:28s} {str(v.dtype):8s} {list(v.shape)}")


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    print(f"scikit-learn {sklearn.__version__}, numpy {np.__version__}")
    train, test, attempt = make_data()
    print(f"data: draw {attempt} from default_rng(0) is the first with every sign margin >= {MIN_SIGN_MARGIN}")
    d, lam, rank, gaps, conv = references(train, test)
    meta = {"sklearn_version": sklearn.__version__, "numpy_version": np.__version__}
    out = check_and_save(d, NAME, meta)

    np.set_printoptions(precision=6, linewidth=100)
    print(f"\ncovariance (n-1) eigenvalues, decreasing:\n{lam}")
    print(f"rank of the centred train matrix: {rank}; smallest relative gap among the first "
          f"{RANK}: {gaps.min():.3f}")
    print("channel means", out["per_channel.mean"], "population stds", out["per_channel.std"])
    print("sign convention: svd_flip(u_based_decision=False) -- in every row of components_ the "
          "entry of largest absolute value is positive (checked on all rows, float64 and float32)")
    for k, (margin, differs) in conv.items():
        print(f"  pca{k}: smallest (|largest|-|second|)/|largest| = {margin:.3f}; "
              f"rows where the u-based rule would flip the sign: {differs}/{k}")
    if "-v" in sys.argv:
        summarize(out)


if __name__ == "__main__":
    main()
