"""Confusion-matrix and ROC plots (PNG) of one task's test split, for the report and MLflow."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_task(y: np.ndarray, prob: np.ndarray, baseline_prob: np.ndarray, prefix: Path) -> list[Path]:
    """Writes <prefix>_confusion.png and <prefix>_roc.png; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

    name = prefix.name
    fig, ax = plt.subplots(figsize=(4, 4))
    ConfusionMatrixDisplay.from_predictions(y, (prob >= 0.5).astype(int), ax=ax, colorbar=False)
    ax.set_title(f"{name}: dnafm (threshold 0.5)")
    confusion = prefix.with_name(f"{name}_confusion.png")
    fig.tight_layout()
    fig.savefig(confusion, dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.5, 4))
    RocCurveDisplay.from_predictions(y, prob, ax=ax, name="dnafm")
    RocCurveDisplay.from_predictions(y, baseline_prob, ax=ax, name="4-mer LR")
    ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    ax.set_title(f"{name}: ROC on the test split")
    roc = prefix.with_name(f"{name}_roc.png")
    fig.tight_layout()
    fig.savefig(roc, dpi=100)
    plt.close(fig)
    return [confusion, roc]
