"""Figures of `dnafm genomes` (PNG): PCA, allele frequencies, LD matrices, LD decay, Hamming distances. One panel
per artificial set, each against the held-out real haplotypes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eval.genomes_metrics import SetScore


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int, size: float = 3.6, **kw):
    plt = _plt()
    fig, axes = plt.subplots(1, n, figsize=(size * n, size), squeeze=False, **kw)
    return plt, fig, axes[0]


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_pca(scores: list[SetScore], path: Path) -> Path:
    plt, fig, axes = _grid(len(scores))
    for ax, s in zip(axes, scores, strict=True):
        real, ag, ratio = s.plots["pca_real"], s.plots["pca_ag"], s.plots["pca_ratio"]
        ax.scatter(real[:, 0], real[:, 1], s=4, alpha=0.5, c="0.5", label="real (held out)")
        ax.scatter(ag[:, 0], ag[:, 1], s=4, alpha=0.5, c="C3", label=s.name)
        ax.set_title(f"{s.name}: PCA of real + artificial", fontsize=9)
        ax.set_xlabel(f"PC1 ({ratio[0]:.1%})")
        ax.set_ylabel(f"PC2 ({ratio[1]:.1%})")
        ax.legend(fontsize=7, markerscale=3, loc="best")
    return _save(plt, fig, path)


def plot_allele_freq(scores: list[SetScore], path: Path) -> Path:
    plt, fig, axes = _grid(len(scores))
    for ax, s in zip(axes, scores, strict=True):
        ax.scatter(s.plots["af_real"], s.plots["af_ag"], s=4, alpha=0.6, c="C0")
        ax.plot([0, 1], [0, 1], c="0.3", lw=0.8, ls="--")
        ax.set_title(f"{s.name}: r = {s.metrics['af_pearson']:.4f}", fontsize=9)
        ax.set_xlabel("allele 1 frequency, real (held out)")
        ax.set_ylabel(f"allele 1 frequency, {s.name}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    return _save(plt, fig, path)


def plot_ld(real_ld: np.ndarray, scores: list[SetScore], path: Path) -> Path:
    """Each panel: real r^2 below the diagonal, the set's above it."""
    plt, fig, axes = _grid(len(scores), size=3.8, layout="constrained")
    lower = np.tril(np.ones_like(real_ld, dtype=bool), k=-1)
    for ax, s in zip(axes, scores, strict=True):
        both = np.where(lower, real_ld, s.plots["ld_ag"])
        np.fill_diagonal(both, 0.0)  # r^2 = 1 there; drawn, it only aliases into dashes
        im = ax.imshow(np.nan_to_num(both), cmap="magma_r", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(
            f"LD r^2: real (lower) / {s.name} (upper)\nr = {s.metrics['ld_pearson']:.4f}", fontsize=9
        )
        ax.set_xlabel("SNP")
        ax.set_ylabel("SNP")
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="r^2")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_ld_decay(edges: np.ndarray, real: np.ndarray, scores: list[SetScore], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    mids = np.sqrt(edges[:-1] * edges[1:])
    ax.plot(mids, real, c="k", lw=2, marker="o", ms=3, label="real (held out)")
    for i, s in enumerate(scores):
        ax.plot(mids, s.plots["decay"], c=f"C{i}", marker="o", ms=3, label=s.name)
    ax.set_xscale("log")
    ax.set_xlabel("distance between SNPs on one chromosome (bp)")
    ax.set_ylabel("mean r^2")
    ax.set_title("LD decay", fontsize=9)
    ax.legend(fontsize=7)
    return _save(plt, fig, path)


def plot_hamming(scores: list[SetScore], path: Path) -> Path:
    plt, fig, axes = _grid(len(scores))
    for ax, s in zip(axes, scores, strict=True):
        d_rr, d_aa, d_ra = s.plots["d_rr"], s.plots["d_aa"], s.plots["d_ra"]
        hi = int(max(d_rr.max(), d_aa.max(), d_ra.max())) + 1
        bins = np.linspace(0, hi, 60)
        ax.hist(d_rr, bins=bins, density=True, histtype="step", color="k", label="real-real")
        ax.hist(d_aa, bins=bins, density=True, histtype="step", color="C3", label=f"{s.name}-{s.name}")
        ax.hist(d_ra, bins=bins, density=True, histtype="step", color="C0", label=f"real-{s.name}")
        ax.set_title(
            f"{s.name}: W(within) {s.metrics['hamming_within_wasserstein']:.1f}, "
            f"W(between) {s.metrics['hamming_between_wasserstein']:.1f}",
            fontsize=9,
        )
        ax.set_xlabel("pairwise Hamming distance (SNPs)")
        ax.legend(fontsize=7)
    return _save(plt, fig, path)
