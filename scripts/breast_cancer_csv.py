#!/usr/bin/env python3
"""Write data/breast_cancer.csv from the copy of the Breast Cancer Wisconsin
(Diagnostic) data that ships inside scikit-learn.

Source
------
scikit-learn (BSD-3-Clause) ships ``sklearn/datasets/data/breast_cancer.csv``:
a size header ``569,30,malignant,benign`` followed by 569 rows of 30 numeric
features and an integer target (0 = malignant, 1 = benign).  wgnn's copy was
made from the scikit-learn 1.9.1 wheel::

    pip download scikit-learn==1.9.1 --no-deps -d /tmp/skl

Usage::

    python3 scripts/breast_cancer_csv.py PATH [OUT_CSV]

PATH is either the wheel (``*.whl``; the csv is read from inside it) or the
extracted ``breast_cancer.csv``.  OUT_CSV defaults to ``data/breast_cancer.csv``
next to this script's parent directory.  When PATH is a wheel the script also
writes the BSD 3-Clause part of the wheel's ``*.dist-info/licenses/COPYING``
(everything before the first ``----`` separator, i.e. without the notices for
the compiled GCC runtime that the binary wheel bundles) to
``BREAST_CANCER_LICENSE`` in the output csv's directory.

Output
------
A plain CSV with ``\\n`` line endings: a header row with sklearn's 30 feature
names (spaces replaced by underscores: ``mean_radius`` ... ``worst_fractal_dimension``)
plus ``target``, then the 569 data rows with their original text unchanged,
in an order fixed by ``random.Random(20240517).shuffle`` applied to the list of
rows in file order.  After this shuffle the first 455 rows (80%) are meant as
the training set and the last 114 as the test set.

Python 3 standard library only.
"""

import io
import os
import random
import sys
import zipfile

SEED = 20240517
CSV_IN_WHEEL = "sklearn/datasets/data/breast_cancer.csv"

# sklearn.datasets.load_breast_cancer().feature_names (sklearn/datasets/_base.py)
FEATURE_NAMES = [
    "mean radius", "mean texture", "mean perimeter", "mean area",
    "mean smoothness", "mean compactness", "mean concavity",
    "mean concave points", "mean symmetry", "mean fractal dimension",
    "radius error", "texture error", "perimeter error", "area error",
    "smoothness error", "compactness error", "concavity error",
    "concave points error", "symmetry error", "fractal dimension error",
    "worst radius", "worst texture", "worst perimeter", "worst area",
    "worst smoothness", "worst compactness", "worst concavity",
    "worst concave points", "worst symmetry", "worst fractal dimension",
]


def read_source(path):
    """Return (csv text, license text or None, _base.py text or None)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            text = z.read(CSV_IN_WHEEL).decode("ascii")
            base = z.read("sklearn/datasets/_base.py").decode("utf-8")
            copying = [n for n in z.namelist()
                       if ".dist-info/" in n and n.endswith("/COPYING")]
            lic = z.read(copying[0]).decode("utf-8") if copying else None
        return text, lic, base
    with open(path, "r", encoding="ascii", newline="") as f:
        return f.read(), None, None


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__)
        return 2
    here = os.path.dirname(os.path.abspath(__file__))
    out_csv = argv[2] if len(argv) > 2 else os.path.join(here, "..", "data", "breast_cancer.csv")
    text, lic, base = read_source(argv[1])

    if base is not None:
        # The names hard-coded above must match the wheel's, in order.
        pos = 0
        for name in FEATURE_NAMES:
            pos = base.find('"%s"' % name, pos)
            if pos < 0:
                raise SystemExit("feature name %r not found in order in _base.py" % name)

    lines = text.splitlines()
    header = lines[0].split(",")
    n_rows, n_features = int(header[0]), int(header[1])
    if n_features != len(FEATURE_NAMES) or header[2:] != ["malignant", "benign"]:
        raise SystemExit("unexpected size header %r" % lines[0])
    rows = [l for l in lines[1:] if l.strip()]
    if len(rows) != n_rows:
        raise SystemExit("expected %d rows, found %d" % (n_rows, len(rows)))
    for r in rows:
        cells = r.split(",")
        if len(cells) != n_features + 1 or cells[-1] not in ("0", "1"):
            raise SystemExit("bad row %r" % r)
        for c in cells[:-1]:
            float(c)

    random.Random(SEED).shuffle(rows)

    out = io.StringIO()
    out.write(",".join([n.replace(" ", "_") for n in FEATURE_NAMES] + ["target"]) + "\n")
    for r in rows:
        out.write(r + "\n")
    os.makedirs(os.path.dirname(os.path.abspath(out_csv)), exist_ok=True)
    with open(out_csv, "w", encoding="ascii", newline="") as f:
        f.write(out.getvalue())

    n_train = int(round(len(rows) * 0.8))
    for name, part in (("train (first %d)" % n_train, rows[:n_train]),
                       ("test (last %d)" % (len(rows) - n_train), rows[n_train:])):
        t = [r.rsplit(",", 1)[1] for r in part]
        print("%s: malignant(0)=%d benign(1)=%d" % (name, t.count("0"), t.count("1")))

    if lic is not None:
        bsd = lic.split("\n----\n", 1)[0].rstrip("\n") + "\n"
        lic_path = os.path.join(os.path.dirname(os.path.abspath(out_csv)), "BREAST_CANCER_LICENSE")
        with open(lic_path, "w", encoding="utf-8", newline="") as f:
            f.write(bsd)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
