"""Task sets cut from GRCh37 chr20 with the hg19 annotation (eval.builders), checked against the raw tables.

The coordinates are re-derived here from the raw parquet columns (1-based ``_starts``/``_ends``) and the
genome bytes, not through eval.annotations, so a wrong conversion there cannot hide behind itself.
"""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from eval.annotations import read_hg19_table
from eval.builders import (
    ACCEPTOR,
    DONOR,
    NON_SPLICE,
    Genome,
    build_prom300,
    build_splice,
    build_tf_sites,
    build_tis,
    dinucleotide_shuffle,
    promoter_windows,
    splice_windows,
    tf_windows,
    tis_windows,
    to_labelled_set,
)
from tests.helpers import DATA_ROOT, needs_data

GENOME = DATA_ROOT / "genomes" / "GRCh37_chr20.fa.gz"
ANN = DATA_ROOT / "annotations"
needs_chr20 = needs_data("genomes/GRCh37_chr20.fa.gz", "annotations")

_RC = bytes.maketrans(b"ACGTN", b"TGCAN")


def revcomp(s: str) -> str:
    return s.encode().translate(_RC)[::-1].decode()


def genomic(genome: Genome, row) -> str:
    """The window of a table row cut independently of Genome.cut: plain bytes, reverse complement for '-'."""
    s = genome.records[row.chrom][row.start : row.end].tobytes().decode()
    return revcomp(s) if row.strand == "-" else s


def raw(name: str) -> pd.DataFrame:
    df = pd.read_parquet(ANN / f"{name}.parquet")
    return df[df["_labels"] == "chr20"].reset_index(drop=True)


@pytest.fixture(scope="module")
def chr20() -> Genome:
    return Genome.from_fasta(GENOME)  # ~1 s; record '20', while the annotation says 'chr20'


@pytest.fixture(scope="module")
def ann() -> dict[str, pd.DataFrame]:
    names = ("start_codons", "exons", "transcripts", "tss", "genes", "Top1000sites_TF")
    return {n: read_hg19_table(ANN / f"{n}.parquet", chrom="chr20") for n in names}


@pytest.fixture(scope="module")
def tis(chr20, ann) -> pd.DataFrame:
    return tis_windows(chr20, ann["start_codons"], seed=0)


@pytest.fixture(scope="module")
def splice(chr20, ann) -> pd.DataFrame:
    return splice_windows(chr20, ann["exons"], ann["transcripts"], seed=0, max_examples=6000)


# ------------------------------------------------------------------------------------------------- TIS


@needs_chr20
def test_tis_positives_are_the_annotated_start_codons_with_atg_at_301_303(chr20, ann, tis):
    data = to_labelled_set(chr20, tis, name="tis")
    assert all(len(s) == 603 for s in data.sequences)
    assert {s[300:303] for s in data.sequences} == {"ATG"}  # positives and negatives, both strands
    pos = tis[tis["label"] == 1]
    assert set(pos["strand"]) == {"+", "-"}
    # Expected positives straight from the raw table: whole 3-bp codons (1-based inclusive), distinct.
    sc = raw("start_codons")
    sc = sc[sc["_ends"] - sc["_starts"] == 2].drop_duplicates(["_starts", "Strand"])
    expected = {(int(s) - 1, str(st)) for s, st in zip(sc["_starts"], sc["Strand"], strict=True)}
    got = set(zip(pos["site_start"], pos["strand"], strict=True))
    # measured: 1,815 rows = 802 distinct whole codons (all read ATG, none near an N) + split codon pieces
    assert got == expected and len(pos) == 802
    assert (pos["start"] == pos["site_start"] - 300).all()
    for row in pos.itertuples():  # the cut equals an independent slice, '-' reverse-complemented
        assert genomic(chr20, row) == data.sequences[row.Index]


@needs_chr20
def test_tis_negatives_are_unannotated_atgs_balanced_per_strand(chr20, ann, tis):
    pos, neg = tis[tis["label"] == 1], tis[tis["label"] == 0]
    assert pos.groupby("strand").size().to_dict() == neg.groupby("strand").size().to_dict()
    annotated = set(zip(ann["start_codons"]["start"], ann["start_codons"]["strand"], strict=True))
    assert not set(zip(neg["site_start"], neg["strand"], strict=True)) & annotated
    data = to_labelled_set(chr20, tis, name="tis")
    assert not set(np.array(data.sequences)[data.labels == 0]) & set(
        np.array(data.sequences)[data.labels == 1]
    )
    assert all("N" not in s for s in data.sequences)


@needs_chr20
def test_tis_is_deterministic_and_max_examples_caps(chr20, ann, tis):
    again = tis_windows(chr20, ann["start_codons"], seed=0)
    pd.testing.assert_frame_equal(tis, again)
    other = tis_windows(chr20, ann["start_codons"], seed=1)
    assert not tis["site_start"].equals(other["site_start"])
    small = build_tis(
        chr20, ann["start_codons"], seed=3, max_examples=101, negative_region=ann["transcripts"]
    )
    assert len(small.sequences) == 100 and small.labels.sum() == 50


# ---------------------------------------------------------------------------------------------- splice


@needs_chr20
def test_splice_sites_are_canonical_at_the_right_positions(chr20, splice):
    data = to_labelled_set(chr20, splice, name="splice")
    labels = data.labels
    donors = [s for s, y in zip(data.sequences, labels, strict=True) if y == DONOR]
    acceptors = [s for s, y in zip(data.sequences, labels, strict=True) if y == ACCEPTOR]
    gt = np.mean([s[200:202] == "GT" for s in donors])  # 1-based 201-202, right after the exon's last base
    ag = np.mean([s[198:200] == "AG" for s in acceptors])  # 1-based 199-200, right before the exon's first
    # Measured on chr20, all gene types: 97.1% GT donors (GC ~1.7%), 98.7% AG acceptors.
    assert gt >= 0.95 and ag >= 0.95, (gt, ag)
    assert len(donors) == len(acceptors) == 2000  # max_examples 6000 -> 2000 per class
    nonsplice = [s for s, y in zip(data.sequences, labels, strict=True) if y == NON_SPLICE]
    assert all(s[200:202] == "GT" or s[198:200] == "AG" for s in nonsplice)
    assert abs(sum(s[200:202] == "GT" for s in nonsplice) - len(nonsplice) / 2) <= len(nonsplice) * 0.05
    assert not set(nonsplice) & (set(donors) | set(acceptors))
    assert all(len(s) == 400 and "N" not in s for s in data.sequences)


@needs_chr20
def test_splice_boundaries_map_exactly_to_the_exon_table(chr20, ann, splice):
    ex = raw("exons")
    tx = raw("transcripts")
    # 1-based inclusive: the intron after a '+' exon starts at 0-based _ends; its first base is 0-based _starts-1
    first_base = {st: set(ex.loc[ex["Strand"] == st, "_starts"] - 1) for st in "+-"}
    after_end = {st: set(ex.loc[ex["Strand"] == st, "_ends"]) for st in "+-"}
    tx_first = {st: set(tx.loc[tx["Strand"] == st, "_starts"] - 1) for st in "+-"}
    tx_after = {st: set(tx.loc[tx["Strand"] == st, "_ends"]) for st in "+-"}
    for row in splice[splice["label"] != NON_SPLICE].itertuples():
        b = row.start + 200  # the boundary sits between window bases 200 and 201 (1-based)
        exon_end_side = (row.label == DONOR) == (row.strand == "+")
        edges, tx_edges = (after_end, tx_after) if exon_end_side else (first_base, tx_first)
        assert b in edges[row.strand] and b not in tx_edges[row.strand], row
    for row in splice.sample(300, random_state=0).itertuples():  # site columns = the GT/AG the window shows
        site = chr20.records[row.chrom][row.site_start : row.site_end].tobytes().decode()
        site = revcomp(site) if row.strand == "-" else site
        window = genomic(chr20, row)
        assert site == (window[198:200] if row.label == ACCEPTOR else window[200:202]) or (
            row.label == NON_SPLICE and site == window[198:200]
        ), row
    for row in splice.sample(200, random_state=0).itertuples():
        assert genomic(chr20, row) == to_labelled_set(chr20, splice.loc[[row.Index]], name="x").sequences[0]


@needs_chr20
def test_splice_is_deterministic_configurable_and_balanced(chr20, ann, splice):
    again = splice_windows(chr20, ann["exons"], ann["transcripts"], seed=0, max_examples=6000)
    pd.testing.assert_frame_equal(splice, again)
    assert splice["label"].value_counts().to_dict() == {DONOR: 2000, ACCEPTOR: 2000, NON_SPLICE: 2000}
    short = build_splice(
        chr20, ann["exons"], ann["transcripts"], length=100, gene_types=["protein_coding"], max_examples=300
    )
    donors = [s for s, y in zip(short.sequences, short.labels, strict=True) if y == DONOR]
    assert len(donors) == 100 and np.mean([s[50:52] == "GT" for s in donors]) >= 0.95
    with pytest.raises(ValueError, match="even"):
        splice_windows(chr20, ann["exons"], ann["transcripts"], length=401)


# ------------------------------------------------------------------------------------------- Prom-300


@needs_chr20
def test_prom300_tss_at_position_250_on_the_genes_strand(chr20, ann):
    table = promoter_windows(chr20, ann["tss"], avoid=ann["transcripts"], seed=0)
    data = to_labelled_set(chr20, table, name="prom")
    assert all(len(s) == 300 and "N" not in s for s in data.sequences)
    pos = table[table["label"] == 1]
    # raw tss table: _starts is the 1-based TSS; it equals the gene's 5' end (genes _starts on '+', _ends on '-')
    tss, genes = raw("tss"), raw("genes")
    assert (tss["gene_name"].astype(str) == genes["gene_name"].astype(str)).all()  # row-aligned tables
    five = np.where(genes["Strand"] == "+", genes["_starts"], genes["_ends"])
    assert (tss["_starts"].to_numpy() == five).all()
    expected = set(zip(tss["_starts"] - 1, tss["Strand"].astype(str), strict=True))
    assert set(zip(pos["site_start"], pos["strand"], strict=True)) <= expected
    assert len(pos) >= 0.99 * len(expected)  # measured: 1,314 of 1,317
    # 0-based index 249 of the oriented window is the TSS: '+' start + 249, '-' end - 1 - 249
    at = np.where(pos["strand"] == "+", pos["start"] + 249, pos["end"] - 1 - 249)
    assert (at == pos["site_start"]).all()
    for row in pos.itertuples():
        assert data.sequences[row.Index] == genomic(chr20, row)
    neg = table[table["label"] == 0]
    assert len(neg) == len(pos) and set(neg["strand"]) == {"+", "-"}
    tx = ann["transcripts"]
    five_prime = np.where(tx["strand"] == "-", tx["end"] - 1, tx["start"])  # transcript TSSs
    known = np.sort(np.concatenate([tss["_starts"] - 1, five_prime]))
    p = neg["site_start"].to_numpy()
    i = np.searchsorted(known, p)
    gap = np.minimum(
        np.abs(p - known[np.clip(i - 1, 0, None)]), np.abs(known[np.clip(i, None, len(known) - 1)] - p)
    )
    assert (gap >= 5000).all()
    again = build_prom300(chr20, ann["tss"], avoid=ann["transcripts"], seed=0)
    assert again.sequences == data.sequences


# ------------------------------------------------------------------------------------------- TF sites


@needs_chr20
def test_tf_windows_are_101_bp_centred_and_negatives_are_dinucleotide_shuffles(chr20, ann):
    sites = ann["Top1000sites_TF"]
    table = tf_windows(chr20, sites, tf="ZNF329")
    assert len(table) == 88  # measured: ZNF329 has the most sites on chr20
    raw_sites = raw("Top1000sites_TF")
    raw_sites = raw_sites[raw_sites["Gene"] == "ZNF329"]
    assert set(table["site_start"]) == set(raw_sites["_starts"] - 1)
    assert ((table["end"] - table["start"]) == 101).all() and (
        table["start"] + 50 == table["site_start"]
    ).all()
    data = build_tf_sites(chr20, sites, tf="ZNF329", seed=0)
    pos = [s for s, y in zip(data.sequences, data.labels, strict=True) if y == 1]
    neg = [s for s, y in zip(data.sequences, data.labels, strict=True) if y == 0]
    assert len(pos) == len(neg) == 88 and all(len(s) == 101 for s in data.sequences)
    for p, n in zip(pos, neg, strict=True):
        assert Counter(zip(p, p[1:], strict=False)) == Counter(zip(n, n[1:], strict=False)) and p != n
    assert not set(pos) & set(neg)
    assert build_tf_sites(chr20, sites, tf="ZNF329", seed=0).sequences == data.sequences
    assert build_tf_sites(chr20, sites, tf="ZNF329", seed=1).sequences[88:] != neg
    capped = build_tf_sites(chr20, sites, seed=0, max_examples=500)
    assert len(capped.sequences) == 500 and capped.labels.sum() == 250
    with pytest.raises(ValueError, match="NOT_A_TF"):
        tf_windows(chr20, sites, tf="NOT_A_TF")


# ------------------------------------------------------------------------------ synthetic, no data needed


def test_dinucleotide_shuffle_keeps_dinucleotides_and_ends():
    rng = random.Random(0)
    for n in (3, 10, 101, 250):
        for _ in range(20):
            seq = "".join(rng.choice("ACGTN") for _ in range(n))
            out = dinucleotide_shuffle(seq, rng)
            assert Counter(zip(seq, seq[1:], strict=False)) == Counter(zip(out, out[1:], strict=False))
            assert out[0] == seq[0] and out[-1] == seq[-1]


def _toy() -> tuple[Genome, pd.DataFrame]:
    """A 2 kb random genome named 'chr1', annotated as '1': start codons on each strand, one at the edge."""
    rng = np.random.default_rng(5)
    seq = bytearray(rng.choice(list(b"ACGT"), 2000).astype(np.uint8).tobytes())
    seq[700:703] = b"ATG"  # '+' start codon at 0-based 700
    seq[1200:1203] = b"CAT"  # '-' start codon: reads ATG on the reverse strand
    seq[10:13] = b"ATG"  # too close to the record's start for 300 bp of flank
    genome = Genome.from_sequences({"chr1": bytes(seq)})
    codons = pd.DataFrame(
        {
            "chrom": "1",
            "start": [700, 1200, 10],
            "end": [703, 1203, 13],
            "strand": ["+", "-", "+"],
            "name": "g",
        }
    )
    return genome, codons


def test_toy_tis_windows_exact_on_both_strands_with_chrom_name_matching():
    genome, codons = _toy()
    table = tis_windows(genome, codons, flank=300, seed=0)
    pos = table[table["label"] == 1].set_index("strand")
    assert len(pos) == 2  # the codon at 10 is skipped: its window would run off the record
    assert (pos.loc["+", "start"], pos.loc["+", "end"]) == (400, 1003)
    assert (pos.loc["-", "start"], pos.loc["-", "end"]) == (900, 1503)
    seq = genome.records["chr1"].tobytes().decode()
    data = to_labelled_set(genome, table, name="toy")
    by_strand = {(r.strand, r.label): data.sequences[r.Index] for r in table.itertuples()}
    assert by_strand["+", 1] == seq[400:1003]
    assert by_strand["-", 1] == revcomp(seq[900:1503]) and by_strand["-", 1][300:303] == "ATG"
    assert by_strand["-", 0][300:303] == by_strand["+", 0][300:303] == "ATG"
    assert 10 not in set(table["site_start"])  # an annotated codon is never a negative either


def test_toy_tis_negatives_never_take_an_annotated_codon():
    genome, codons = _toy()
    seq = bytearray(genome.records["chr1"].tobytes())
    seq[690:720] = b"CCCCCCCCCC" + b"ATG" + b"CCCCCCC" + b"ATG" + b"CCCCCCC"  # ATGs at 700 (annotated), 710
    genome = Genome.from_sequences({"chr1": bytes(seq)})
    region = pd.DataFrame({"chrom": ["1"], "start": [690], "end": [720], "strand": ["+"], "name": [""]})
    for seed in range(10):  # the only other ATG in the region must be picked, whatever the seed
        table = tis_windows(genome, codons[codons["strand"] == "+"], negative_region=region, seed=seed)
        assert table[table["label"] == 0]["site_start"].tolist() == [710]


def test_toy_splice_windows_on_the_minus_strand():
    seq = bytearray(b"A" * 1000)
    seq[398:400] = b"AC"  # '-' strand exon [400, 600): its donor GT reads AC just left of the exon start
    seq[600:602] = b"CT"  # and its acceptor AG reads CT just right of the exon end
    genome = Genome.from_sequences({"1": bytes(seq)})
    exons = pd.DataFrame(
        {"chrom": "1", "start": [100, 400, 800], "end": [300, 600, 900], "strand": "-", "name": "g"}
    )
    tx = pd.DataFrame({"chrom": ["1"], "start": [100], "end": [900], "strand": ["-"], "name": ["g"]})
    table = splice_windows(genome, exons, tx, length=100, seed=0)
    # '-' strand, 3' <- 5': donors at exon starts 400 and 800, acceptors at exon ends 300 and 600; the
    # transcript's own edges (100, 900) are not splice sites. Windows are [b - 50, b + 50).
    got = {(int(r.start), int(r.label)) for r in table.itertuples()}
    assert got == {(350, DONOR), (750, DONOR), (250, ACCEPTOR), (550, ACCEPTOR)}  # poly-A: no GT/AG negatives
    data = to_labelled_set(genome, table, name="toy")
    by_start = dict(zip(table["start"], data.sequences, strict=True))
    assert by_start[350][50:52] == "GT" and by_start[550][48:50] == "AG"
    assert by_start[350] == revcomp(seq[350:450].decode())


def test_builder_errors_name_the_problem():
    genome, codons = _toy()
    with pytest.raises(ValueError, match="no annotated chromosome"):
        tis_windows(genome, codons.assign(chrom="chr2"))
    with pytest.raises(ValueError, match="max_examples"):
        tis_windows(genome, codons, max_examples=1)
    with pytest.raises(ValueError, match="missing columns"):
        tis_windows(genome, codons.drop(columns="strand"))


def test_genome_from_fasta_keeps_matching_records(tmp_path):
    path = tmp_path / "g.fa"
    path.write_text(">chr1 first\nACGTNacgt\n>chr2\nGGGG\n")
    genome = Genome.from_fasta(path, chroms=["1"])
    assert list(genome.records) == ["chr1"] and genome.resolve("1") == "chr1" and genome.resolve("2") is None
    assert genome.records["chr1"].tobytes() == b"ACGTNACGT"
    assert genome.windows_ok("chr1", np.array([0, 1, 5, 6]), 4).tolist() == [True, False, True, False]
    with pytest.raises(ValueError, match="no FASTA record matches"):
        Genome.from_fasta(path, chroms=["X"])
