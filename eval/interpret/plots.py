"""PNG figures of the interpretation commands: attention heatmaps and score tracks, sequence logos.

Everything renders offline through matplotlib's Agg backend; logos through logomaker (Tareen & Kinney
2020), never a web service."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    return plt


def attention_heatmap(
    scores: np.ndarray,
    labels: np.ndarray | None,
    order_by: np.ndarray | None,
    out: Path,
    *,
    max_rows: int,
    class_names: list[str] | None = None,
) -> Path:
    """Top: the mean per-base score at each position, one line per class. Below: one row per sequence
    (``scores`` (N, L) with NaN past each end, drawn white), grouped by class, each group ordered by
    ``order_by`` (e.g. the predicted probability) and cut to its share of ``max_rows``."""
    plt = _pyplot()
    groups = np.unique(labels) if labels is not None else np.array([0])
    rows, bounds = [], []
    for g in groups:
        idx = np.flatnonzero(labels == g) if labels is not None else np.arange(len(scores))
        if order_by is not None:
            idx = idx[np.argsort(-order_by[idx], kind="stable")]
        rows.append(idx[: max(1, max_rows // len(groups))])
        bounds.append(sum(len(r) for r in rows))
    shown = np.concatenate(rows)
    fig, (top, ax) = plt.subplots(
        2, 1, figsize=(10, 7), gridspec_kw={"height_ratios": [1, 3]}, sharex=True, constrained_layout=True
    )
    for g, idx in zip(groups, rows, strict=True):
        name = class_names[g] if class_names is not None and labels is not None else "all"
        top.plot(np.nanmean(scores[idx], axis=0), label=f"class {name} (n={len(idx)})")
    top.set_ylabel("mean score")
    top.legend(fontsize=8)
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")
    im = ax.imshow(np.ma.masked_invalid(scores[shown]), aspect="auto", interpolation="nearest", cmap=cmap)
    for b in bounds[:-1]:
        ax.axhline(b - 0.5, color="red", linewidth=1)
    ax.set_xlabel("position (bp)")
    ax.set_ylabel("sequence" + (" (grouped by class)" if labels is not None else ""))
    fig.colorbar(im, ax=ax, label="attention score")
    fig.suptitle("per-base attention")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def score_tracks(scores: list[np.ndarray], sequences: list[str], titles: list[str], out: Path) -> Path:
    """One panel per sequence: its per-base scores as bars, the bases as tick labels when they fit."""
    plt = _pyplot()
    n = max(len(scores), 1)
    fig, axes = plt.subplots(n, 1, figsize=(12, 1.6 * n + 0.5), squeeze=False, constrained_layout=True)
    for ax, s, seq, title in zip(axes[:, 0], scores, sequences, titles, strict=False):
        ax.bar(np.arange(len(s)), s, width=1.0, color="#3b6ea5")
        ax.set_xlim(-0.5, len(s) - 0.5)
        ax.set_title(title, fontsize=8, loc="left")
        if len(seq) <= 160:
            ax.set_xticks(np.arange(len(seq)))
            ax.set_xticklabels(list(seq), fontsize=5, family="monospace")
        ax.tick_params(axis="y", labelsize=6)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def logo(
    pwm: np.ndarray, out: Path, *, title: str, match: np.ndarray | None = None, match_title: str = ""
) -> Path:
    """Information-content logo of ``pwm`` (L, 4) probabilities over A, C, G, T; with ``match`` (a
    JASPAR matrix already aligned and cut to the query's frame, NaN rows where it does not reach) a
    second logo below it."""
    import logomaker

    plt = _pyplot()
    panels = 2 if match is not None else 1
    fig, axes = plt.subplots(panels, 1, figsize=(max(4, 0.35 * len(pwm)), 1.8 * panels), squeeze=False)
    for ax, matrix, name in zip(axes[:, 0], (pwm, match), (title, match_title), strict=False):
        df = pd.DataFrame(np.nan_to_num(matrix, nan=0.25), columns=list("ACGT"))
        info = logomaker.transform_matrix(df, from_type="probability", to_type="information")
        logomaker.Logo(info, ax=ax, color_scheme="classic")
        ax.set_ylim(0, 2)
        ax.set_ylabel("bits")
        ax.set_title(name, fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
