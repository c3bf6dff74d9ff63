"""Regression sets (a number per sequence, optional numeric features), their split, metrics and baseline.

A :class:`RegressionSet` is the regression counterpart of :class:`eval.datasets.LabelledSet`: ``values`` (N,)
float targets instead of class ids, and optionally ``features`` (N, F) numeric inputs beside the sequence
(Xpresso's mRNA half-life features, DNAGPT's numeric prompt slots). It comes from
``dnafm eval --build expression`` (eval/expression.py), the ``expression-human`` registry task, or a user's
CSV/TSV with a ``value`` column (:func:`read_regression_table`).

Metrics (scikit-learn / scipy), each with a percentile bootstrap CI over the test examples:

- ``r2``: the squared Pearson correlation of prediction and target, as Xpresso (Agarwal & Shendure 2020,
  Cell Reports) and DNAGPT report their r^2. It ignores the prediction's offset and scale, unlike the
  coefficient of determination.
- ``spearman``: Spearman's rank correlation rho.
- ``mse``: mean squared error in the target's own units (the table's, after the stated transform).

Baseline: ridge regression (sklearn RidgeCV, alpha chosen by leave-one-out on train) on standardised 4-mer
frequencies, plus the same numeric features as the model gets.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.linear_model import RidgeCV
from sklearn.metrics import mean_squared_error
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from datapipe.common.errors import InputError, UsageError
from datapipe.fasta import COMPRESSION_ERRORS, open_maybe_compressed
from eval.baseline import kmer_counts
from eval.datasets import SPLITS, Split, split_name

REGRESSION_METRICS = ("r2", "spearman", "mse")


@dataclass(kw_only=True)
class RegressionSet:
    name: str
    sequences: list[str]
    values: np.ndarray
    """(N,) float64 targets, all finite."""
    features: np.ndarray | None = None
    """(N, F) float64 numeric inputs per example (finite); None: the sequence only."""
    feature_names: tuple[str, ...] = ()
    ids: tuple[str, ...] | None = None
    """Per-example ids (gene ids for the expression task), for the per-example predictions file."""
    target: str = "value"
    """What the target is and which transform it carries (reports and MLflow say it)."""
    given_split: np.ndarray | None = None
    """(N,) 'train' / 'val' / 'test' per example when the source fixes the split."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Why examples of the source were left out, and how many (a builder's counted skips)."""

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float64)
        if len(self.sequences) != len(self.values):
            raise UsageError(f"{self.name}: {len(self.sequences)} sequences but {len(self.values)} targets")
        if len(self.values) == 0:
            raise UsageError(f"{self.name}: no examples with a target")
        if not np.isfinite(self.values).all():
            raise UsageError(f"{self.name}: targets must be finite numbers (NaN/inf found)")
        if len(self.values) > 1 and np.ptp(self.values) == 0:
            raise UsageError(
                f"{self.name}: every target is {self.values[0]:g}; regression needs targets that vary"
            )
        if self.features is not None:
            self.features = np.asarray(self.features, dtype=np.float64).reshape(len(self.values), -1)
            if len(self.feature_names) != self.features.shape[1]:
                raise UsageError(
                    f"{self.name}: {self.features.shape[1]} features, names {self.feature_names}"
                )
            if not np.isfinite(self.features).all():
                raise UsageError(f"{self.name}: features must be finite numbers (NaN/inf found)")
        if self.given_split is not None:
            self.given_split = np.asarray(self.given_split, dtype=object)
            have = set(self.given_split.tolist())
            if len(self.given_split) != len(self.values) or not have <= set(SPLITS):
                raise UsageError(f"{self.name}: given_split must hold one of {SPLITS} per example")
            for part in SPLITS:
                if part not in have:
                    raise UsageError(
                        f"{self.name}: the given split has no '{part}' examples; mark some rows {part}"
                    )

    @property
    def num_features(self) -> int:
        return 0 if self.features is None else self.features.shape[1]


def split_regression(
    data: RegressionSet, *, seed: int, fractions: tuple[float, float, float] = (0.6, 0.15, 0.25)
) -> Split:
    """The given split, else a seeded random one (no strata: targets are continuous); sha256 per part."""
    if data.given_split is not None:
        out = {k: np.flatnonzero(data.given_split == k) for k in SPLITS}
    else:
        idx = np.random.default_rng(seed).permutation(len(data.values))
        n_train = int(round(fractions[0] * len(idx)))
        n_val = int(round(fractions[1] * len(idx)))
        parts = (idx[:n_train], idx[n_train : n_train + n_val], idx[n_train + n_val :])
        out = {k: np.sort(p) for k, p in zip(SPLITS, parts, strict=True)}
    for k, idx in out.items():
        if len(idx) < (3 if k != "train" else 2):
            raise UsageError(
                f"{data.name}: {len(idx)} {k} example(s) of {len(data.values)}; regression needs at least 3 per "
                "validation/test part (r^2 of fewer is undefined): give more examples"
            )
    hashes = {}
    for k, idx in out.items():
        h = hashlib.sha256()
        for i in idx:
            h.update(f"{data.sequences[i]}\t{data.values[i]!r}\n".encode())
        hashes[k] = h.hexdigest()
    return Split(train=out["train"], val=out["val"], test=out["test"], hashes=hashes)


# ---------------------------------------------------------------------------------------------- metrics


def _score(name: str, y: np.ndarray, pred: np.ndarray) -> float:
    if name == "mse":
        return float(mean_squared_error(y, pred))
    if np.ptp(y) == 0 or np.ptp(pred) == 0:  # a correlation with a constant is undefined
        return float("nan")
    if name == "r2":
        return float(pearsonr(y, pred).statistic ** 2)
    if name == "spearman":
        return float(spearmanr(y, pred).statistic)
    raise ValueError(f"unknown metric {name}")


def regression_metrics(
    y: np.ndarray, pred: np.ndarray, *, seed: int = 0, n_boot: int = 1000, level: float = 0.95
) -> dict[str, dict[str, float]]:
    """{metric: {'value', 'lo', 'hi'}} for r2 (squared Pearson), spearman, mse; percentile bootstrap over
    examples (resamples where a correlation is undefined are left out). Cost: ~0.3 ms per resample and
    metric (scipy's checks), ~1 s at n_boot=1000."""
    y, pred = np.asarray(y, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    if y.shape != pred.shape:
        raise ValueError(f"{len(y)} targets but {len(pred)} predictions")
    rng = np.random.default_rng(seed)
    boots = rng.integers(0, len(y), size=(n_boot, len(y)))
    alpha = (1 - level) / 2
    out = {}
    for name in REGRESSION_METRICS:
        samples = np.array([_score(name, y[b], pred[b]) for b in boots])
        samples = samples[np.isfinite(samples)]
        lo, hi = np.quantile(samples, [alpha, 1 - alpha]) if len(samples) else (np.nan, np.nan)
        out[name] = {"value": _score(name, y, pred), "lo": float(lo), "hi": float(hi)}
    return out


def paired_r2_difference(
    y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, *, seed: int = 0, n_boot: int = 1000
) -> dict[str, float]:
    """r2 of A minus r2 of B on the same resampled examples (a paired percentile bootstrap CI)."""
    rng = np.random.default_rng(seed)
    diffs = []
    for b in rng.integers(0, len(y), size=(n_boot, len(y))):
        d = _score("r2", y[b], pred_a[b]) - _score("r2", y[b], pred_b[b])
        if math.isfinite(d):
            diffs.append(d)
    lo, hi = np.quantile(diffs, [0.025, 0.975]) if diffs else (np.nan, np.nan)
    return {"value": _score("r2", y, pred_a) - _score("r2", y, pred_b), "lo": float(lo), "hi": float(hi)}


def ridge_baseline(
    train_seqs: list[str],
    train_y: np.ndarray,
    test_seqs: list[str],
    *,
    train_features: np.ndarray | None = None,
    test_features: np.ndarray | None = None,
    k: int = 4,
) -> np.ndarray:
    """(N_test,) predictions of ridge regression on standardised k-mer frequencies (+ the numeric
    features), alpha from {0.1 .. 10^4} by RidgeCV's efficient leave-one-out on train."""
    x_train, x_test = kmer_counts(train_seqs, k), kmer_counts(test_seqs, k)
    if train_features is not None:
        x_train = np.hstack([x_train, train_features])
        x_test = np.hstack([x_test, test_features])
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-1, 4, 11)))
    model.fit(x_train, np.asarray(train_y, dtype=np.float64))
    return model.predict(x_test)


# ----------------------------------------------------------------------------------------- --data FILE


def is_regression_table(path: Path) -> bool:
    """True when a CSV/TSV's header names a ``value`` column and no ``label`` column."""
    delim = "\t" if ".tsv" in path.suffixes else ","
    try:
        with open_maybe_compressed(path) as fh, io.TextIOWrapper(fh, encoding="utf-8", newline="") as f:
            header = next(csv.reader(f, delimiter=delim), [])
    except (UnicodeDecodeError, csv.Error, *COMPRESSION_ERRORS):
        return False  # read_table reports what is wrong with the file
    names = {h.strip() for h in header}
    return "value" in names and "label" not in names


def _number(text: str, path: Path, line: int, column: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise InputError(
            path, line, f"{column} {text[:30]!r} is not a number; write a decimal number"
        ) from None
    if not math.isfinite(x):
        raise InputError(
            path, line, f"{column} {text!r} is not finite; give a finite number (or drop the row)"
        )
    return x


def read_regression_table(path: str | Path) -> RegressionSet:
    """A user's regression set: CSV/TSV (by extension, .gz allowed) with columns ``sequence`` and ``value``
    (a finite number), optional ``feature_*`` numeric columns (the model's numeric inputs) and an optional
    ``split`` column (train / val / test). The target is used as written: transform it beforehand (e.g.
    log10(x + 0.1) for expression levels)."""
    path = Path(path)
    delim = "\t" if ".tsv" in path.suffixes else ","
    seqs, values, feats, parts = [], [], [], []
    try:
        with open_maybe_compressed(path) as fh, io.TextIOWrapper(fh, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter=delim)
            names = [n for n in reader.fieldnames or [] if n.startswith("feature_")]
            if reader.fieldnames is None or not {"sequence", "value"} <= set(reader.fieldnames):
                raise InputError(
                    path, 1, f"header must name 'sequence' and 'value' (got {reader.fieldnames})"
                )
            for line, row in enumerate(reader, start=2):
                seq = (row["sequence"] or "").strip().upper()
                if not seq or set(seq) - set("ACGTN"):
                    raise InputError(path, line, f"sequence must be non-empty A/C/G/T/N (got {seq[:30]!r})")
                seqs.append(seq)
                values.append(_number((row["value"] or "").strip(), path, line, "value"))
                feats.append([_number((row[n] or "").strip(), path, line, n) for n in names])
                if "split" in reader.fieldnames:
                    part = split_name(row["split"] or "")
                    if part is None:
                        raise InputError(
                            path, line, f"split {row['split']!r}; write train, val (or dev) or test"
                        )
                    parts.append(part)
    except (UnicodeDecodeError, csv.Error, *COMPRESSION_ERRORS) as exc:
        raise InputError(path, None, f"unreadable ({exc}); give a plain or gzip CSV/TSV text file") from None
    if not seqs:
        raise InputError(path, None, "no rows after the header")
    if np.ptp(values) == 0:
        raise InputError(path, None, f"every value is {values[0]:g}; regression needs targets that vary")
    return RegressionSet(
        name=path.name,
        sequences=seqs,
        values=np.asarray(values),
        features=np.asarray(feats) if names else None,
        feature_names=tuple(names),
        target=f"'value' column of {path.name}, as written",
        given_split=np.asarray(parts, dtype=object) if parts else None,
    )
