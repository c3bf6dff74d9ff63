"""Matching motifs against JASPAR offline: the matrices from the copy of the JASPAR database that the
``pyjaspar`` package ships (SQLite, no network), compared with TOMTOM (Gupta et al. 2007, Genome Biology
8:R24) as implemented by ``memelite`` (Schreiber, tomtom-lite).

memelite's TOMTOM compiles its numba kernels on first use (~1.5 min of CPU once; cached beside the
package afterwards). A query is compared with every target on both strands; q-values are Benjamini-Hochberg
over one query's p-values against all targets, and E-values are p x the number of targets (TOMTOM's own
definitions)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from datapipe.common.errors import UsageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    matrix_id: str
    name: str
    family: str
    """JASPAR TF family, e.g. 'STAT factors' (several joined by '; ')."""
    pwm: np.ndarray
    """(L, 4) probabilities over A, C, G, T."""


@dataclass(frozen=True)
class Match:
    target: Target
    p: float
    e: float
    q: float
    offset: int
    """Query column where the target's first column sits (TOMTOM's offset, negated)."""
    rc: bool
    """The target matched on the reverse strand; ``aligned`` shows it reverse-complemented."""

    def aligned(self, length: int) -> np.ndarray:
        """(length, 4) the target in the query's frame (reverse-complemented if rc), NaN where it is absent."""
        t = self.target.pwm[::-1, ::-1] if self.rc else self.target.pwm
        out = np.full((length, 4), np.nan)
        for j, row in enumerate(t):
            if 0 <= j + self.offset < length:
                out[j + self.offset] = row
        return out


def load_jaspar(release: str, collection: str, tax_group: str) -> list[Target]:
    """The latest version of every matrix of ``collection`` / ``tax_group`` in pyjaspar's ``release``."""
    from pathlib import Path

    import pyjaspar
    from pyjaspar import jaspardb

    shipped = sorted(p.stem for p in (Path(pyjaspar.__file__).parent / "data").glob("JASPAR*.sqlite"))
    if release not in shipped:
        raise UsageError(
            f"JASPAR release {release!r} is not in the installed pyjaspar; it ships {', '.join(shipped)} "
            "(--set jaspar.release=...)"
        )
    db = jaspardb(release=release)
    found = db.fetch_motifs(collection=collection, tax_group=[tax_group] if tax_group else None)
    if not found:
        raise UsageError(
            f"no JASPAR {release} matrices for collection {collection!r}, tax group {tax_group!r}"
        )
    targets = []
    for m in found:
        counts = np.array([m.counts[b] for b in "ACGT"], dtype=np.float64).T  # (L, 4)
        pwm = counts / counts.sum(1, keepdims=True)
        targets.append(Target(m.matrix_id, m.name, "; ".join(m.tf_family), pwm))
    log.info("JASPAR %s %s %s: %d matrices", release, collection, tax_group, len(targets))
    return targets


def trim(pwm: np.ndarray, min_ic: float) -> tuple[int, int]:
    """[start, end) after dropping flanking columns whose information content is below ``min_ic`` bits;
    the whole matrix if every column is below it."""
    p = np.clip(pwm, 1e-9, 1.0)
    ic = 2.0 + (p * np.log2(p)).sum(1)
    keep = np.flatnonzero(ic >= min_ic)
    return (int(keep[0]), int(keep[-1]) + 1) if len(keep) else (0, len(pwm))


def tomtom_matches(
    queries: list[np.ndarray], targets: list[Target], *, top: int, min_ic: float
) -> list[list[Match]]:
    """The ``top`` best targets of each (L, 4) query by TOMTOM p-value. Queries are compared after trimming
    flanks below ``min_ic`` bits (0 keeps them): a 24-bp attention window is mostly flank, and near-uniform
    columns only dilute the score."""
    import warnings

    from memelite import tomtom
    from scipy.stats import false_discovery_control

    if not queries:
        return []
    spans = [trim(q, min_ic) for q in queries]
    qs = [np.ascontiguousarray(q[a:b].T) for q, (a, b) in zip(queries, spans, strict=True)]
    ts = [np.ascontiguousarray(t.pwm.T) for t in targets]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        p, _scores, offsets, _overlaps, strands = tomtom(qs, ts)  # each (Q, T)
    out = []
    for i, (a, _b) in enumerate(spans):
        pi = np.clip(np.nan_to_num(p[i], nan=1.0), 0.0, 1.0)
        qi = false_discovery_control(pi, method="bh")
        best = np.argsort(pi, kind="stable")[:top]
        out.append(
            [
                Match(
                    target=targets[j],
                    p=float(pi[j]),
                    e=float(pi[j] * len(targets)),
                    q=float(qi[j]),
                    offset=a - int(offsets[i, j]),
                    rc=bool(strands[i, j]),
                )
                for j in best
            ]
        )
    return out
