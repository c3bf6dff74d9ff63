"""Motif discovery from attention, following DNABERT-viz (Ji et al. 2021, Bioinformatics btab083, 2.5):

1. in each positive sequence, the regions whose per-base score is above the sequence's mean and above
   ``min_factor`` (10) x its minimum, at least ``min_len`` (5) bp long, are candidate motifs;
2. each distinct candidate is tested for enrichment in the positives: hypergeometric survival function of
   the number of positives containing it, given how many sequences (positive or negative) contain it
   (``scipy.stats.hypergeom``), Benjamini-Hochberg adjusted (``scipy.stats.false_discovery_control``), kept
   below ``q_cutoff``;
3. similar candidates are merged by pairwise alignment (Biopython ``PairwiseAligner``: ungapped overlaps,
   score = identities; merged when the score reaches max(min_len - 1, half the shorter motif)), the most
   supported candidate first, so it becomes the key the others align to;
4. every instance, placed in its key's frame by the alignment, becomes a ``window`` (24) bp window centred
   on it (windows that leave the sequence are dropped, each window counted once);
5. motifs with at least ``min_instances`` (3) windows are reported, with a position probability matrix.

Where we differ from DNABERT's released ``motif_utils.py`` (read for the procedure, not copied): candidates
are ordered by support rather than by length before merging, every instance is moved into its key's frame
by the alignment's offset (the released code's offset cases leave some alignments unhandled, which crashes),
and an instance window found twice through two merged candidates counts once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from datapipe.common.config import Config, check

log = logging.getLogger(__name__)

BASES = "ACGT"


@dataclass(kw_only=True)
class MotifConfig(Config):
    min_len: int = 5
    """Shortest high-attention region kept as a candidate (bp)."""
    min_factor: float = 10.0
    """A base is high-attention when its score is above the sequence's mean and above this times its minimum."""
    q_cutoff: float = 0.005
    """Benjamini-Hochberg adjusted hypergeometric p-value below which a candidate is kept (DNABERT: 0.005)."""
    window: int = 24
    """Width of the instance windows, hence of the reported matrices (bp)."""
    min_instances: int = 3
    """Fewest windows a reported motif has."""
    positive_class: int = 1
    """The class whose sequences are searched; every other class is the background."""
    max_motifs: int = 50
    """Report at most this many motifs (the most instances first)."""

    def __post_init__(self) -> None:
        check(self.min_len >= 2, "min_len", "must be >= 2")
        check(self.min_factor >= 0, "min_factor", "must be >= 0")
        check(0 < self.q_cutoff <= 1, "q_cutoff", "must be in (0, 1]")
        check(self.window >= self.min_len, "window", f"must be >= min_len ({self.min_len})")
        check(self.min_instances >= 1, "min_instances", "must be >= 1")
        check(self.max_motifs >= 1, "max_motifs", "must be >= 1")


@dataclass
class Candidate:
    seq: str
    hits: list[tuple[int, int]] = field(default_factory=list)
    """(sequence index, start) of each high-attention region with this sequence."""
    n_pos: int = 0
    """Positive sequences containing it anywhere."""
    n_all: int = 0
    """Sequences (positive or negative) containing it anywhere."""
    p: float = 1.0
    q: float = 1.0


@dataclass
class Motif:
    key: Candidate
    members: list[Candidate]
    instances: list[tuple[int, int]]
    """(positive sequence index, window start) of each window."""
    pwm: np.ndarray | None = None
    """(window, 4) probabilities over A, C, G, T."""
    windows: list[str] = field(default_factory=list)


def high_attention_regions(score: np.ndarray, *, min_len: int, min_factor: float) -> list[tuple[int, int]]:
    """[start, end) runs of bases above the mean and above ``min_factor`` x the minimum, >= min_len long."""
    from scipy import ndimage

    score = np.asarray(score, dtype=np.float64)
    above = (score > score.mean()) & (score > min_factor * score.min())
    runs, _ = ndimage.label(above)
    return [(s.start, s.stop) for (s,) in ndimage.find_objects(runs) if s.stop - s.start >= min_len]


def candidates(pos_seqs: list[str], pos_scores: list[np.ndarray], cfg: MotifConfig) -> dict[str, Candidate]:
    """Every distinct high-attention region of the positive sequences, with where it was found."""
    out: dict[str, Candidate] = {}
    for i, (seq, score) in enumerate(zip(pos_seqs, pos_scores, strict=True)):
        for start, end in high_attention_regions(score, min_len=cfg.min_len, min_factor=cfg.min_factor):
            region = seq[start:end]
            if "N" in region:
                continue
            out.setdefault(region, Candidate(region)).hits.append((i, start))
    return out


def enrichment(cands: dict[str, Candidate], pos_seqs: list[str], neg_seqs: list[str]) -> None:
    """Fill n_pos, n_all, p (hypergeometric, one-sided: more positives contain it than chance) and q
    (Benjamini-Hochberg over all candidates). Costs one substring search per candidate and sequence."""
    from scipy.stats import false_discovery_control, hypergeom

    if not cands:
        return
    n_total, n_positive = len(pos_seqs) + len(neg_seqs), len(pos_seqs)
    pos_text, neg_text = "\n".join(pos_seqs), "\n".join(neg_seqs)
    for c in cands.values():
        # a motif cannot span the '\n' separators: joined texts spare the per-sequence loop when it is absent
        c.n_pos = sum(c.seq in s for s in pos_seqs) if c.seq in pos_text else 0
        c.n_all = c.n_pos + (sum(c.seq in s for s in neg_seqs) if c.seq in neg_text else 0)
    items = list(cands.values())
    x = np.array([c.n_pos for c in items])
    n = np.array([c.n_all for c in items])
    p = hypergeom.sf(x - 1, n_total, n_positive, n)  # P(X >= x)
    q = false_discovery_control(np.clip(p, 0.0, 1.0), method="bh")
    for c, pi, qi in zip(items, p, q, strict=True):
        c.p, c.q = float(pi), float(qi)


def _aligner():
    from Bio.Align import PairwiseAligner

    aligner = PairwiseAligner(mode="global", match_score=1.0, mismatch_score=0.0)
    aligner.internal_gap_score = -1e4  # no gaps inside: an alignment is an overlap at one offset
    aligner.end_gap_score = 0.0  # overhangs are free
    return aligner


def merge(cands: list[Candidate], cfg: MotifConfig) -> list[Motif]:
    """Group similar candidates; each member's hits are moved into its key's frame (same length as the key)."""
    aligner = _aligner()
    order = sorted(cands, key=lambda c: (-len(c.hits), -len(c.seq), c.seq))
    motifs: list[Motif] = []
    for cand in order:
        best, best_score, shift = None, -1.0, 0
        for m in motifs:
            need = max(cfg.min_len - 1, 0.5 * min(len(cand.seq), len(m.key.seq)))
            score = aligner.score(cand.seq, m.key.seq)  # cheaper than building the alignment
            if score < need or score <= best_score:
                continue
            aln = aligner.align(cand.seq, m.key.seq)[0]
            (c_start, _), (k_start, _) = aln.aligned[0][0], aln.aligned[1][0]
            best, best_score, shift = m, score, int(c_start - k_start)
        if best is None:
            motifs.append(Motif(key=cand, members=[cand], instances=list(cand.hits)))
        else:
            # key position j is candidate position j + shift: the key's frame starts shift bases later
            best.members.append(cand)
            best.instances.extend((i, start + shift) for i, start in cand.hits)
    return motifs


def windows(motifs: list[Motif], pos_seqs: list[str], cfg: MotifConfig) -> list[Motif]:
    """Centre a ``cfg.window`` bp window on each instance; keep motifs with >= min_instances windows."""
    kept = []
    for m in motifs:
        lead = (cfg.window - len(m.key.seq)) // 2  # bases before the key's frame (negative: cut into it)
        unique = sorted({(i, start - lead) for i, start in m.instances})
        m.instances = [(i, s) for i, s in unique if s >= 0 and s + cfg.window <= len(pos_seqs[i])]
        m.windows = [pos_seqs[i][s : s + cfg.window] for i, s in m.instances]
        if len(m.instances) >= cfg.min_instances:
            m.pwm = position_matrix(m.windows)
            kept.append(m)
    kept.sort(key=lambda m: (-len(m.instances), m.key.q, m.key.seq))
    return kept[: cfg.max_motifs]


def position_matrix(seqs: list[str]) -> np.ndarray:
    """(L, 4) base frequencies per column over A, C, G, T (N not counted; an all-N column is uniform)."""
    arr = np.frombuffer("".join(seqs).encode("ascii"), dtype=np.uint8).reshape(len(seqs), -1)
    counts = np.stack([(arr == ord(b)).sum(0) for b in BASES], axis=1).astype(np.float64)  # (L, 4)
    totals = counts.sum(1, keepdims=True)
    return np.where(totals > 0, counts / np.maximum(totals, 1), 0.25)


def find_motifs(
    pos_seqs: list[str], pos_scores: list[np.ndarray], neg_seqs: list[str], cfg: MotifConfig
) -> tuple[list[Motif], list[Candidate]]:
    """DNABERT-viz's motif search (module docstring) -> (reported motifs, every candidate with its test)."""
    cands = candidates(pos_seqs, pos_scores, cfg)
    log.info("%d distinct high-attention regions in %d positive sequences", len(cands), len(pos_seqs))
    enrichment(cands, pos_seqs, neg_seqs)
    kept = [c for c in cands.values() if c.q < cfg.q_cutoff]
    log.info("%d enriched in the positives (BH q < %g)", len(kept), cfg.q_cutoff)
    merged = merge(kept, cfg)
    motifs = windows(merged, pos_seqs, cfg)
    log.info("%d merged groups, %d with >= %d windows", len(merged), len(motifs), cfg.min_instances)
    return motifs, sorted(cands.values(), key=lambda c: (c.q, c.seq))


def background(seqs: list[str]) -> np.ndarray:
    """(4,) A, C, G, T frequencies of ``seqs`` (the MEME file's background line)."""
    text = "".join(seqs).encode("ascii")
    counts = np.array([text.count(b.encode()) for b in BASES], dtype=np.float64)
    return counts / max(counts.sum(), 1.0)


def write_meme(motifs: list[Motif], names: list[str], bg: np.ndarray) -> str:
    """MEME motif format (version 4; meme-suite.org/meme/doc/meme-format.html): one letter-probability
    matrix per motif, nsites its windows, E its key candidate's adjusted p-value."""
    lines = [
        "MEME version 4",
        "",
        "ALPHABET= ACGT",
        "",
        "strands: + -",
        "",
        "Background letter frequencies",
        " ".join(f"{b} {f:.4f}" for b, f in zip(BASES, bg, strict=True)),
        "",
    ]
    for m, name in zip(motifs, names, strict=True):
        assert m.pwm is not None
        lines += [
            f"MOTIF {name} {m.key.seq}",
            f"letter-probability matrix: alength= 4 w= {len(m.pwm)} nsites= {len(m.instances)} E= {m.key.q:.3g}",
            *(" ".join(f"{v:.6f}" for v in row) for row in m.pwm),
            "",
        ]
    return "\n".join(lines)
