"""Confusion-matrix and ROC plots (PNG) of one task's test split, for the report and MLflow."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from eval.metrics import class_scores, num_classes, predicted_class


def plot_task(
    y: np.ndarray,
    prob: np.ndarray,
    baseline_prob: np.ndarray,
    prefix: Path,
    *,
    class_names: Sequence[str] | None = None,
) -> list[Path]:
    """Writes <prefix>_confusion.png and <prefix>_roc.png; returns their paths.

    prob / baseline_prob: (N,) P(class 1) or (N, C), as in eval.metrics. Binary: one ROC curve each for
    dnafm and the 4-mer baseline. C > 2: one-vs-rest curves per class, dnafm solid and the baseline dashed
    in the same colour (AUC of each in the legend)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

    n = num_classes(prob)
    names = list(class_names) if class_names is not None else [str(c) for c in range(n)]
    name = prefix.name
    size = 4 + 0.4 * max(n - 2, 0)  # room for the extra rows and tick labels
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay.from_predictions(
        y,
        predicted_class(prob),
        labels=np.arange(n),
        display_labels=names,
        xticks_rotation=30 if n > 2 else "horizontal",
        ax=ax,
        colorbar=False,
    )
    ax.set_title(f"{name}: dnafm ({'threshold 0.5' if n == 2 else 'argmax'})")
    confusion = prefix.with_name(f"{name}_confusion.png")
    fig.tight_layout()
    fig.savefig(confusion, dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.5 if n == 2 else 5.5, 4))
    if n == 2:
        RocCurveDisplay.from_predictions(y, class_scores(prob), ax=ax, name="dnafm")
        RocCurveDisplay.from_predictions(y, class_scores(baseline_prob), ax=ax, name="4-mer LR")
        title = "ROC"
    else:
        ours, base = class_scores(prob), class_scores(baseline_prob)
        for c in range(n):
            colour = f"C{c % 10}"
            for scores, who, style in ((ours, "dnafm", "-"), (base, "4-mer LR", "--")):
                RocCurveDisplay.from_predictions(
                    y == c,
                    scores[:, c],
                    ax=ax,
                    name=f"{names[c]}, {who}",
                    curve_kwargs={"color": colour, "linestyle": style, "linewidth": 1.2},
                )
        ax.legend(fontsize=7, loc="lower right")
        ax.set_xlabel(
            "False positive rate (class vs rest)"
        )  # sklearn's label would say 'Positive label: True'
        ax.set_ylabel("True positive rate (class vs rest)")
        title = "ROC one-vs-rest"
    ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    ax.set_title(f"{name}: {title} on the test split")
    roc = prefix.with_name(f"{name}_roc.png")
    fig.tight_layout()
    fig.savefig(roc, dpi=100)
    plt.close(fig)
    return [confusion, roc]


def plot_regression(
    y: np.ndarray, pred: np.ndarray, baseline_pred: np.ndarray, prefix: Path, *, target: str = "target"
) -> list[Path]:
    """Writes <prefix>_scatter.png: predicted vs actual on the test split, dnafm and the ridge baseline side
    by side, each with the y = x line and its r^2 (squared Pearson) in the title; returns [its path]."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt
    from scipy.stats import pearsonr

    y = np.asarray(y, dtype=np.float64)
    lo = float(min(y.min(), np.min(pred), np.min(baseline_pred)))
    hi = float(max(y.max(), np.max(pred), np.max(baseline_pred)))
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.4), sharex=True, sharey=True)
    for ax, p, who in ((axes[0], pred, "dnafm"), (axes[1], baseline_pred, "4-mer ridge")):
        p = np.asarray(p, dtype=np.float64)
        r2 = pearsonr(y, p).statistic ** 2 if np.ptp(p) > 0 and np.ptp(y) > 0 else float("nan")
        ax.scatter(y, p, s=10, alpha=0.6, edgecolors="none")
        ax.plot([lo, hi], [lo, hi], "k:", linewidth=0.8)
        ax.set_title(f"{who}: r$^2$ = {r2:.3f} (n = {len(y)})")
        ax.set_xlabel(f"actual ({target})", fontsize=8)
    axes[0].set_ylabel("predicted")
    fig.suptitle(f"{prefix.name}: predicted vs actual on the test split")
    fig.tight_layout()
    out = prefix.with_name(f"{prefix.name}_scatter.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return [out]
