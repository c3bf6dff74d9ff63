"""Classification metrics from scikit-learn, each with a bootstrap confidence interval."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, roc_auc_score

METRICS = ("accuracy", "f1", "mcc", "auroc")


def _score(name: str, y: np.ndarray, prob: np.ndarray) -> float:
    pred = (prob >= 0.5).astype(np.int64)
    if name == "accuracy":
        return float(accuracy_score(y, pred))
    if name == "f1":
        return float(f1_score(y, pred, zero_division=0))
    if name == "mcc":
        return float(matthews_corrcoef(y, pred))
    if name == "auroc":
        return float(roc_auc_score(y, prob)) if len(np.unique(y)) == 2 else float("nan")
    raise ValueError(f"unknown metric {name}")


def binary_metrics(
    y: np.ndarray, prob: np.ndarray, *, seed: int = 0, n_boot: int = 1000, level: float = 0.95
) -> dict[str, dict[str, float]]:
    """{metric: {'value', 'lo', 'hi'}}; prob = P(class 1). Percentile bootstrap over test examples."""
    y = np.asarray(y)
    prob = np.asarray(prob, dtype=np.float64)
    rng = np.random.default_rng(seed)
    boots = rng.integers(0, len(y), size=(n_boot, len(y)))
    out = {}
    for name in METRICS:
        samples = np.array([_score(name, y[b], prob[b]) for b in boots])
        samples = samples[np.isfinite(samples)]
        alpha = (1 - level) / 2
        lo, hi = np.quantile(samples, [alpha, 1 - alpha]) if len(samples) else (np.nan, np.nan)
        out[name] = {"value": _score(name, y, prob), "lo": float(lo), "hi": float(hi)}
    return out
