"""The k-mer-count logistic-regression baseline: what a model gets without any pretraining."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

_CODE = np.full(256, -1, dtype=np.int64)
for _i, _b in enumerate(b"ACGT"):
    _CODE[_b] = _i


def kmer_counts(sequences: list[str], k: int = 4) -> np.ndarray:
    """(N, 4^k) overlapping k-mer frequencies; k-mers with N are not counted."""
    out = np.zeros((len(sequences), 4**k), dtype=np.float32)
    for row, seq in enumerate(sequences):
        codes = _CODE[np.frombuffer(seq.encode(), dtype=np.uint8)]
        if len(codes) < k:
            continue
        idx = np.zeros(len(codes) - k + 1, dtype=np.int64)
        bad = np.zeros(len(codes) - k + 1, dtype=bool)
        for j in range(k):  # k vector ops, not a loop over bases
            window = codes[j : len(codes) - k + 1 + j]
            idx = idx * 4 + np.maximum(window, 0)
            bad |= window < 0
        out[row] = np.bincount(idx[~bad], minlength=4**k)
        out[row] /= max(out[row].sum(), 1)
    return out


def kmer_baseline(
    train_seqs: list[str],
    train_y: np.ndarray,
    test_seqs: list[str],
    *,
    num_classes: int | None = None,
    k: int = 4,
    seed: int = 0,
) -> np.ndarray:
    """Fit on train, return (N_test, C) class probabilities on test (multinomial logistic regression when
    C > 2). ``num_classes`` defaults to max(train_y) + 1; a class absent from train gets probability 0."""
    train_y = np.asarray(train_y)
    n_classes = num_classes or int(train_y.max()) + 1
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1, random_state=seed))
    clf.fit(kmer_counts(train_seqs, k), train_y)
    out = np.zeros((len(test_seqs), n_classes))
    out[:, clf.classes_] = clf.predict_proba(kmer_counts(test_seqs, k))  # columns follow clf.classes_
    return out
