"""Cut a region of genome into training windows, with per-window GC and N statistics.

Vectorised: one pass of cumulative sums over the region gives N and GC counts of every window;
only the per-window tokenizer call is a Python-level loop (one call per ~1-3 kb window).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_A, _C, _G, _T, _N = (ord(c) for c in "ACGTN")
GC_BINS = 20  # histogram bins of window GC content in the manifest


@dataclass(kw_only=True, slots=True)
class Window:
    start: int  # 0-based offset in the record
    end: int  # exclusive
    gc: float  # (G + C) / (A + C + G + T): N is not counted as a base here
    n_frac: float


@dataclass(kw_only=True, slots=True)
class RegionStats:
    base_counts: dict[str, int]
    kept: int
    dropped_n: int
    dropped_short: int
    gc_hist: list[int]


def cut_windows(
    seq: np.ndarray, *, offset: int, window_bp: int, min_window_bp: int, max_n_frac: float
) -> tuple[list[Window], RegionStats]:
    """Non-overlapping windows of ``window_bp`` over ``seq`` (uint8 ACGTN), the last one possibly shorter.

    Windows with more than ``max_n_frac`` N are dropped (DNAGPT drops > 5%); so is a last window
    shorter than ``min_window_bp``. ``offset`` is the region's start in its record.
    """
    n = len(seq)
    is_n = seq == _N
    is_gc = (seq == _G) | (seq == _C)
    starts = np.arange(0, n, window_bp, dtype=np.int64)
    ends = np.minimum(starts + window_bp, n)
    # Per-window counts from prefix sums: (num_windows,)
    cn = np.concatenate([[0], np.cumsum(is_n, dtype=np.int64)])
    cg = np.concatenate([[0], np.cumsum(is_gc, dtype=np.int64)])
    n_count = cn[ends] - cn[starts]
    gc_count = cg[ends] - cg[starts]
    length = ends - starts
    acgt = length - n_count
    n_frac = n_count / np.maximum(length, 1)
    gc = np.where(acgt > 0, gc_count / np.maximum(acgt, 1), 0.0)
    too_short = length < min_window_bp
    too_many_n = (n_frac > max_n_frac) & ~too_short
    keep = ~too_short & ~too_many_n

    windows = [
        Window(start=offset + int(s), end=offset + int(e), gc=float(g), n_frac=float(f))
        for s, e, g, f in zip(starts[keep], ends[keep], gc[keep], n_frac[keep], strict=True)
    ]
    counts = np.bincount(seq, minlength=256)
    hist = np.histogram(gc[keep], bins=GC_BINS, range=(0.0, 1.0))[0]
    stats = RegionStats(
        base_counts={b: int(counts[ord(b)]) for b in "ACGTN"},
        kept=int(keep.sum()),
        dropped_n=int(too_many_n.sum()),
        dropped_short=int(too_short.sum()),
        gc_hist=[int(x) for x in hist],
    )
    return windows, stats
