"""Training windows from a record's bases: where windows start, their GC and N content, their tokens.

Layout (a pure function of the record and the config, so any work unit computes the same grid):

- DNAGPT: non-overlapping windows of ``window_bp`` from the record start; the record's last,
  shorter window is kept with at least ``min_window_tokens``.
- DNABERT: the record is cut into anchors of ``ANCHOR_WINDOWS`` x the longest piece; inside each,
  consecutive pieces, ``full_length_frac`` of them at full length and the others of uniform random
  length in tokens, drawn from a generator seeded by (seed, record key, anchor). Anchors let a work
  unit that starts mid-record lay out its pieces without knowing those before it.

Pieces tile the record, so the per-window base counts add up to the record's composition; a window
with more than ``max_n_frac`` N or shorter than the minimum is dropped (counted, not written).

Speed (DNAGPT, the hot path): the full windows of a batch form an ``(m, W)`` matrix of bases (a
view when they are consecutive, a gather for MAF rows), so one tokenizer call encodes them all,
``(m, W/k)``; GC, N, A and G counts per window come from a gather of per-k-mer counts packed in
16-bit fields of a uint64 and one row sum (~0.5 ms per Mb, against ~3 ms for two passes of
translate + sum over the bases). Partial windows and DNABERT pieces take the general path: one
prefix sum of the same packed per-base counts, and a tokenizer call per window.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from datapipe.prepare_config import PrepareConfig
from datapipe.tokenizers import Tokenizer, get_tokenizer

GC_BINS = 20  # histogram bins of window GC content in the manifest
ANCHOR_WINDOWS = 64
_A, _C, _G, _T, _N = (ord(c) for c in "ACGTN")
_COMPLEMENT = np.arange(256, dtype=np.uint8)
for _x, _y in zip(b"ACGTN", b"TGCAN", strict=True):
    _COMPLEMENT[_x] = _y


@dataclass(slots=True)
class Rows:
    """Kept windows of a batch, column-wise (one Python object per field, not per window).

    Coordinates are 0-based on the record (or alignment row) as read, end exclusive; ``strands``
    is '-' for a reverse-complement copy, which follows its forward window.
    """

    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    strands: list[str] = field(default_factory=list)
    gc: list[float] = field(default_factory=list)  # (G + C) / (A + C + G + T): N is not a base
    n_frac: list[float] = field(default_factory=list)
    ids: list[bytes | memoryview] = field(default_factory=list)  # little-endian uint16 token ids
    n_tokens: list[int] = field(default_factory=list)
    masks: list[bytes] | None = None  # packed bits, 1 = soft-masked base, in strand order
    ctx: list[int] | None = None  # per window: index into the caller's (species, token, assembly, record)
    window: list[int] = field(default_factory=list)  # per row: index of the input window it was cut from

    def __len__(self) -> int:
        return len(self.starts)

    def extend(self, other: Rows) -> None:
        for name in ("starts", "ends", "strands", "gc", "n_frac", "ids", "n_tokens", "window"):
            getattr(self, name).extend(getattr(other, name))
        if other.masks is not None:
            self.masks = (self.masks or []) + other.masks
        if other.ctx is not None:
            self.ctx = (self.ctx or []) + other.ctx


@dataclass(slots=True)
class WindowStats:
    """What a batch of windows (or a whole unit) contributes to the manifest."""

    base_counts: np.ndarray = field(default_factory=lambda: np.zeros(5, np.int64))  # A C G T N
    kept: int = 0
    dropped_n: int = 0
    dropped_short: int = 0
    tokens: int = 0
    gc_hist: np.ndarray = field(default_factory=lambda: np.zeros(GC_BINS, np.int64))

    def add(self, other: WindowStats) -> None:
        self.base_counts += other.base_counts
        self.kept += other.kept
        self.dropped_n += other.dropped_n
        self.dropped_short += other.dropped_short
        self.tokens += other.tokens
        self.gc_hist += other.gc_hist

    def to_dict(self) -> dict[str, object]:
        return {
            "base_counts": dict(zip("ACGTN", (int(x) for x in self.base_counts), strict=True)),
            "kept": self.kept,
            "dropped_n": self.dropped_n,
            "dropped_short": self.dropped_short,
            "tokens": self.tokens,
            "gc_hist": [int(x) for x in self.gc_hist],
        }


# Per base: G+C, N, A and G counts in the 16-bit fields of a uint64 (the layout of _kmer_stats).
_BASE_FIELDS = np.zeros(256, np.uint64)
_BASE_FIELDS[ord("A")] = 1 << 32
_BASE_FIELDS[ord("C")] = 1
_BASE_FIELDS[ord("G")] = 1 | (1 << 48)
_BASE_FIELDS[ord("N")] = 1 << 16
_BASE_FIELDS.flags.writeable = False


@functools.cache
def _kmer_stats(name: str) -> np.ndarray:
    """Per DNAGPT token id: G+C, N, A and G counts of its bases in 16-bit fields of a uint64."""
    tok = get_tokenizer(name)
    table = np.zeros(tok.vocab_size, np.uint64)
    for i, text in enumerate(tok.vocab):
        if text.startswith("<"):
            continue  # reserved tokens carry no bases
        gc, n, a, g = text.count("G") + text.count("C"), text.count("N"), text.count("A"), text.count("G")
        table[i] = gc | (n << 16) | (a << 32) | (g << 48)
    table.flags.writeable = False
    return table


class WindowMaker:
    """Layout, filtering and tokenization of windows, for one prepare config."""

    def __init__(self, config: PrepareConfig) -> None:
        self.config = config
        self.tok: Tokenizer = get_tokenizer(config.tokenizer)
        self.gpt = self.tok.family == "dnagpt"
        self.k = self.tok.k
        self.window_bp = config.window_bp()
        self.min_bp = config.min_window_bp()
        self.anchor_bp = ANCHOR_WINDOWS * self.window_bp
        self.keep_mask = config.soft_mask == "mask"
        self.stats_table = _kmer_stats(config.tokenizer) if self.gpt else None

    # -- layout ---------------------------------------------------------------------------------

    def layout(self, key: tuple[int, ...], lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Starts in [lo, hi) of the record's windows and their ends (not yet cut at the record end)."""
        if self.gpt:
            first = -(-lo // self.window_bp) * self.window_bp
            starts = np.arange(first, hi, self.window_bp, dtype=np.int64)
            return starts, starts + self.window_bp
        parts = [self._anchor(key, a) for a in range(lo // self.anchor_bp, -(-hi // self.anchor_bp))]
        starts = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
        ends = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
        sel = (starts >= lo) & (starts < hi)
        return starts[sel], ends[sel]

    @functools.lru_cache(maxsize=64)  # noqa: B019 - one maker per task; anchors repeat across calls
    def _anchor(self, key: tuple[int, ...], anchor: int) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, *key, anchor])
        lo_t, hi_t = cfg.min_window_tokens, cfg.window_tokens
        count = 2 * self.anchor_bp // self.tok_bp(lo_t) + 2  # more than can fit: the sum passes the anchor
        full = rng.random(count) < cfg.full_length_frac
        tokens = np.where(full, hi_t, rng.integers(lo_t, hi_t + 1, count))
        lengths = tokens + self.k - 1  # overlapping k-mers: L - k + 1 tokens
        ends = np.cumsum(lengths)
        n = int(np.searchsorted(ends, self.anchor_bp)) + 1
        ends = np.minimum(ends[:n], self.anchor_bp)
        starts = np.concatenate([[0], ends[:-1]])
        base = anchor * self.anchor_bp
        return starts + base, ends + base

    def tok_bp(self, tokens: int) -> int:
        return self.config.tokens_to_bp(tokens)

    # -- windows --------------------------------------------------------------------------------

    def make(
        self,
        bases: np.ndarray,
        mask: np.ndarray | None,
        lo: np.ndarray,
        lengths: np.ndarray,
        starts: np.ndarray,
        ctx: np.ndarray | None = None,
    ) -> tuple[Rows, WindowStats]:
        """Windows of ``lengths`` bases at positions ``lo`` of ``bases`` (uint8 ACGTN).

        ``starts`` are the windows' coordinates on their record, ``ctx`` (optional) an index per
        window into the caller's list of (species, token, assembly, record). Returns the kept
        windows in the given order (each followed by its reverse complement when configured), and
        the stats of all of them.
        """
        out = Rows(masks=[] if mask is not None else None, ctx=[] if ctx is not None else None)
        stats = WindowStats()
        m = len(lo)
        if m == 0:
            return out, stats
        counts = np.empty((5, m), np.int64)  # A C G T N per window
        ids: list[bytes | memoryview | None] = [None] * m
        full = lengths == self.window_bp if self.gpt else np.zeros(m, bool)
        f_idx, g_idx = np.flatnonzero(full), np.flatnonzero(~full)
        mat, tokens = self._full_counts(bases, lo[f_idx], counts, f_idx) if f_idx.size else (None, None)
        if g_idx.size:
            self._general_counts(bases, lo[g_idx], lengths[g_idx], counts, g_idx)
        length = lengths.astype(np.int64)
        n = counts[4]
        acgt = length - n
        gc = np.where(acgt > 0, (counts[1] + counts[2]) / np.maximum(acgt, 1), 0.0)
        n_frac = n / np.maximum(length, 1)
        short = length < self.min_bp
        too_many_n = ~short & (n_frac > self.config.max_n_frac)
        keep = ~short & ~too_many_n
        stats.base_counts += counts.sum(axis=1)
        stats.kept += int(keep.sum())
        stats.dropped_n += int(too_many_n.sum())
        stats.dropped_short += int(short.sum())
        # GC histogram: bin floor(gc * BINS), gc = 1.0 in the last bin (np.histogram's closed last bin)
        stats.gc_hist += np.bincount(
            np.minimum((gc[keep] * GC_BINS).astype(np.int64), GC_BINS - 1), minlength=GC_BINS
        )
        if not keep.any():
            return out, stats
        rc = self.config.reverse_complement
        rc_ids: list[bytes | memoryview | None] = [None] * m
        fmask: list[bytes | None] = [None] * m
        rmask: list[bytes | None] = [None] * m
        if mat is not None:
            self._full_rows(mat, tokens, mask, lo, f_idx, keep, ids, rc_ids, fmask, rmask)
        for j in np.flatnonzero(keep & ~full).tolist():
            seg = bases[lo[j] : lo[j] + lengths[j]]
            ids[j] = self._encode(seg)
            if rc:
                rc_ids[j] = self._encode(_COMPLEMENT.take(seg)[::-1].copy())
            if mask is not None:
                msk = mask[lo[j] : lo[j] + lengths[j]]
                fmask[j] = np.packbits(msk).tobytes()
                rmask[j] = np.packbits(msk[::-1]).tobytes() if rc else None
        kept = np.flatnonzero(keep).tolist()
        gc_l, nf_l = np.round(gc, 6).tolist(), np.round(n_frac, 6).tolist()
        starts_l, lengths_l = starts.tolist(), lengths.tolist()
        ctx_l = ctx.tolist() if ctx is not None else None
        for j in kept:
            copies = (
                ((ids[j], "+", fmask[j]), (rc_ids[j], "-", rmask[j])) if rc else ((ids[j], "+", fmask[j]),)
            )
            for row, strand, msk in copies:
                out.starts.append(starts_l[j])
                out.ends.append(starts_l[j] + lengths_l[j])
                out.strands.append(strand)
                out.gc.append(gc_l[j])
                out.n_frac.append(nf_l[j])
                out.ids.append(row)
                out.n_tokens.append(len(row) // 2)
                out.window.append(j)
                if out.masks is not None:
                    out.masks.append(msk)
                if out.ctx is not None:
                    out.ctx.append(ctx_l[j])
        stats.tokens += sum(out.n_tokens)
        return out, stats

    def _encode(self, seg: np.ndarray) -> bytes:
        return self.tok.encode(seg).astype("<u2").tobytes()

    def _full_counts(
        self, bases: np.ndarray, lo: np.ndarray, counts: np.ndarray, idx: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Counts of full DNAGPT windows from their tokens; returns their (m, W) bases (a view when
        the windows are consecutive) and (m, T) tokens."""
        m, w = len(lo), self.window_bp
        if m == 1 or (np.diff(lo) == w).all():
            mat = bases[lo[0] : lo[0] + m * w].reshape(m, w)  # consecutive windows: no copy
        else:
            mat = bases[lo[:, None] + np.arange(w)]  # windows of separate rows (MAF): a gather
        tokens = self.tok.encode(mat.reshape(-1)).reshape(m, w // self.k)  # (m, T): one call
        packed = self.stats_table.take(tokens).sum(axis=1)  # (m,) uint64; fields < 2**16 (W < 65536)
        gc = (packed & 0xFFFF).astype(np.int64)
        n = ((packed >> 16) & 0xFFFF).astype(np.int64)
        a = ((packed >> 32) & 0xFFFF).astype(np.int64)
        g = (packed >> 48).astype(np.int64)
        counts[:, idx] = np.stack([a, gc - g, g, w - n - gc - a, n])
        return mat, tokens

    def _full_rows(self, mat, tokens, mask, lo, f_idx, keep, ids, rc_ids, fmask, rmask) -> None:
        """Token rows (and reverse complements, masks) of the kept full windows, vectorised."""
        sel = keep[f_idx]
        if not sel.any():
            return
        where = f_idx[sel].tolist()
        t = self.window_bp // self.k
        fw = memoryview(tokens[sel].astype("<u2").tobytes())
        for i, j in enumerate(where):
            ids[j] = fw[2 * t * i : 2 * t * (i + 1)]
        if self.config.reverse_complement:
            comp = np.ascontiguousarray(_COMPLEMENT.take(mat[sel])[:, ::-1])  # (m_keep, W) reverse complement
            rv = memoryview(self.tok.encode(comp.reshape(-1)).astype("<u2").tobytes())
            for i, j in enumerate(where):
                rc_ids[j] = rv[2 * t * i : 2 * t * (i + 1)]
        if mask is not None:
            w = self.window_bp
            mmat = mask[lo[f_idx][sel][:, None] + np.arange(w)]
            packed = np.packbits(mmat, axis=1)
            rpacked = np.packbits(mmat[:, ::-1], axis=1) if self.config.reverse_complement else None
            for i, j in enumerate(where):
                fmask[j] = packed[i].tobytes()
                if rpacked is not None:
                    rmask[j] = rpacked[i].tobytes()

    def _general_counts(
        self, bases: np.ndarray, lo: np.ndarray, lengths: np.ndarray, counts: np.ndarray, idx: np.ndarray
    ) -> None:
        """Base counts of any windows: one prefix sum of per-base counts packed like ``_kmer_stats``.

        The running sum wraps around 2**64 and its 16-bit fields carry into each other, but the
        difference over one window is exact (each field < 2**16 within a window), so one gather and
        one cumsum replace five indicator passes.
        """
        first, last = int(lo.min()), int((lo + lengths).max())
        cum = np.zeros(last - first + 1, np.uint64)
        np.cumsum(_BASE_FIELDS.take(bases[first:last]), out=cum[1:])
        s = lo - first
        packed = cum[s + lengths] - cum[s]
        length = lengths.astype(np.int64)
        gc = (packed & 0xFFFF).astype(np.int64)
        n = ((packed >> 16) & 0xFFFF).astype(np.int64)
        a = ((packed >> 32) & 0xFFFF).astype(np.int64)
        g = (packed >> 48).astype(np.int64)
        counts[:, idx] = np.stack([a, gc - g, g, length - n - gc - a, n])
