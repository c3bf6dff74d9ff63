"""How alike artificial haplotypes are to real ones, and how much they give away: the measures of Yelmen et al.
("Creating artificial human genomes using generative neural networks", PLoS Genetics 2021).

All sets are (H, S) 0/1 matrices over the same SNPs.

- allele frequencies: Pearson r between the real and the artificial per-SNP frequency of allele 1;
- linkage disequilibrium: r^2 = squared Pearson correlation of two SNPs' alleles over haplotypes, for every pair;
  the real and artificial r^2 of all pairs compared by Pearson r; and LD decay: mean r^2 of same-chromosome pairs
  by distance (when positions are known), summarised as the mean absolute difference from the real curve over
  the distance bins;
- population structure: a PCA fitted on real + artificial (scikit-learn), and the Wasserstein distance between
  the two sets' coordinates on PC1 and on PC2;
- pairwise Hamming distances within the real set, within the artificial set and between them; the Wasserstein
  distances (scipy) of the within-artificial and the between distributions to the within-real one;
- AATS, the nearest-neighbour adversarial accuracy of Yale et al. (Neurocomputing 2020): with d_TS the distance of
  a real haplotype to its nearest artificial one, d_TT to its nearest other real one (and d_ST, d_SS alike for the
  artificial ones), AATS = (mean[d_TS > d_TT] + mean[d_ST > d_SS]) / 2. 0.5 is ideal: neither set is nearer to
  itself than to the other. Below 0.5 the artificial haplotypes sit closer to the real ones than real ones sit to
  each other (copying); above 0.5 they are told apart easily (poor fidelity). Privacy loss = AATS(test) -
  AATS(train): positive when the artificial set is closer to the training haplotypes than to unseen ones;
- exact copies: artificial haplotypes identical to a training haplotype.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import pearsonr, wasserstein_distance

from eval.haplotypes import SnpTable

LD_MAX_SNPS = 3000
"""Above this many SNPs the LD comparison uses a seeded sample of this many (an S x S float matrix per set)."""


def allele_freq(x: np.ndarray) -> np.ndarray:
    """(H, S) -> (S,) frequency of allele 1."""
    return x.mean(axis=0, dtype=np.float64)


def ld_r2(x: np.ndarray) -> np.ndarray:
    """(H, S) -> (S, S) r^2; NaN in the rows and columns of monomorphic SNPs (no variance, r undefined)."""
    z = x.astype(np.float64)
    z -= z.mean(axis=0)
    sd = np.sqrt((z**2).mean(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        z /= sd
        r = (z.T @ z) / x.shape[0]  # (S, S): an S x S x H matmul
    return r**2


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    return float(pearsonr(a[ok], b[ok]).statistic)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, S), (m, S) 0/1 -> (n, m) Hamming distances: |a| + |b| - 2 a.b, one float32 matmul (exact for
    S < 2^24)."""
    af, bf = a.astype(np.float32), b.astype(np.float32)
    d = af.sum(1)[:, None] + bf.sum(1)[None, :] - 2 * (af @ bf.T)
    return np.rint(d).astype(np.int32)


def within(d: np.ndarray) -> np.ndarray:
    """The distances of distinct pairs of a square within-set matrix (upper triangle)."""
    return d[np.triu_indices(d.shape[0], k=1)]


def aats(real: np.ndarray, synth: np.ndarray) -> float:
    """Nearest-neighbour adversarial accuracy of two equally large sets (module docstring)."""
    d_ts = hamming(real, synth)
    d_tt = hamming(real, real).astype(np.float64)
    d_ss = hamming(synth, synth).astype(np.float64)
    np.fill_diagonal(d_tt, np.inf)  # a haplotype is not its own neighbour
    np.fill_diagonal(d_ss, np.inf)
    truth = np.mean(d_ts.min(axis=1) > d_tt.min(axis=1))
    syn = np.mean(d_ts.min(axis=0) > d_ss.min(axis=1))
    return float((truth + syn) / 2)


def copies(ag: np.ndarray, reference: np.ndarray) -> int:
    """Rows of ``ag`` identical to some row of ``reference``."""
    ref = {row.tobytes() for row in np.packbits(reference, axis=1)}
    return sum(row.tobytes() in ref for row in np.packbits(ag, axis=1))


def ld_decay(
    x: np.ndarray, snps: SnpTable, edges: np.ndarray, r2: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Mean r^2 of same-chromosome SNP pairs per distance bin -> (means (len(edges) - 1,), pair counts)."""
    r2 = ld_r2(x) if r2 is None else r2
    i, j = np.triu_indices(x.shape[1], k=1)
    same = snps.chrom[i] == snps.chrom[j]
    dist = np.abs(snps.pos[j] - snps.pos[i])[same]
    vals = r2[i[same], j[same]]
    ok = np.isfinite(vals)
    idx = np.digitize(dist[ok], edges) - 1
    means, counts = np.full(len(edges) - 1, np.nan), np.zeros(len(edges) - 1, np.int64)
    for b in range(len(edges) - 1):
        sel = idx == b
        counts[b] = sel.sum()
        if counts[b]:
            means[b] = vals[ok][sel].mean()
    return means, counts


def decay_edges(snps: SnpTable) -> np.ndarray | None:
    """Log-spaced distance bins over the same-chromosome pairs of the panel; None when there are fewer than
    10 such pairs (e.g. positions unknown)."""
    i, j = np.triu_indices(len(snps.pos), k=1)
    same = snps.chrom[i] == snps.chrom[j]
    if same.sum() < 10:
        return None
    dist = np.abs(snps.pos[j] - snps.pos[i])[same]
    lo, hi = max(1, int(dist.min())), int(dist.max()) + 1
    return np.unique(np.geomspace(lo, hi, 13).astype(np.int64))


@dataclass(kw_only=True)
class SetScore:
    """One artificial set scored against the held-out real haplotypes; ``plots`` keeps what the figures need."""

    name: str
    metrics: dict[str, float]
    plots: dict[str, np.ndarray] = field(default_factory=dict)


def pca_coords(real: np.ndarray, ag: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA (2 components) fitted on real + artificial -> (real coords, artificial coords, explained ratio)."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2, random_state=seed)
    both = pca.fit_transform(np.vstack([real, ag]).astype(np.float32))
    return both[: len(real)], both[len(real) :], pca.explained_variance_ratio_


def score_set(
    name: str,
    ag: np.ndarray,
    *,
    test: np.ndarray,
    test_n: np.ndarray,
    train_sample: np.ndarray,
    train_all: np.ndarray | None,
    real_ld: np.ndarray,
    ld_cols: np.ndarray,
    decay: tuple[SnpTable, np.ndarray] | None,
    seed: int,
) -> SetScore:
    """Every measure of the module docstring for ``ag`` against the held-out real haplotypes.

    Allele frequencies and LD use all of ``test`` and of ``ag``. The distance measures (PCA, Hamming, AATS)
    use n = len(test_n) haplotypes of each set, so sets of different sizes are compared alike: ``test_n``
    (n held-out ones), a seeded draw of n of ``ag``, and ``train_sample`` (n training haplotypes) for
    AATS(train). ``train_all``: every training haplotype, for the exact copies (None: not scored).
    ``real_ld``: r^2 of ``test`` over the SNPs ``ld_cols``; ``decay``: (the SNP table of ``ld_cols``,
    distance bins) or None."""
    n = len(test_n)
    rng = np.random.default_rng([seed, len(ag)])
    ag_n = ag[rng.choice(len(ag), n, replace=False)] if len(ag) > n else ag
    m: dict[str, float] = {}
    af_real, af_ag = allele_freq(test), allele_freq(ag)
    m["af_pearson"] = _pearson(af_real, af_ag)
    m["af_mean_abs_diff"] = float(np.abs(af_real - af_ag).mean())
    ag_ld = ld_r2(ag[:, ld_cols])
    iu = np.triu_indices(len(ld_cols), k=1)
    m["ld_pearson"] = _pearson(real_ld[iu], ag_ld[iu])
    real_c, ag_c, ratio = pca_coords(test_n, ag_n, seed)
    m["pca_wasserstein_pc1"] = float(wasserstein_distance(real_c[:, 0], ag_c[:, 0]))
    m["pca_wasserstein_pc2"] = float(wasserstein_distance(real_c[:, 1], ag_c[:, 1]))
    d_rr, d_aa = within(hamming(test_n, test_n)), within(hamming(ag_n, ag_n))
    d_ra = hamming(test_n, ag_n).ravel()
    m["hamming_within_wasserstein"] = float(wasserstein_distance(d_aa, d_rr))
    m["hamming_between_wasserstein"] = float(wasserstein_distance(d_ra, d_rr))
    m["aats_test"] = aats(test_n, ag_n)
    m["aats_train"] = aats(train_sample, ag_n)
    m["privacy_loss"] = m["aats_test"] - m["aats_train"]
    if train_all is not None:
        m["train_copies_fraction"] = copies(ag, train_all) / len(ag)
    m["unique_fraction"] = len({r.tobytes() for r in np.packbits(ag, axis=1)}) / len(ag)
    plots = {
        "af_real": af_real,
        "af_ag": af_ag,
        "pca_real": real_c,
        "pca_ag": ag_c,
        "pca_ratio": ratio,
        "d_rr": d_rr,
        "d_aa": d_aa,
        "d_ra": d_ra,
        "ld_ag": ag_ld,
    }
    if decay is not None:
        snps, edges = decay
        plots["decay"] = ld_decay(ag[:, ld_cols], snps, edges, r2=ag_ld)[0]
        real_decay = ld_decay(test[:, ld_cols], snps, edges, r2=real_ld)[0]
        m["ld_decay_mean_abs_diff"] = float(np.nanmean(np.abs(plots["decay"] - real_decay)))
    return SetScore(name=name, metrics=m, plots=plots)
