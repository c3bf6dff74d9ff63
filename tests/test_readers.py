"""Task-file readers (eval.readers) on every shipped format, and annotation readers (eval.annotations).

Counts are those each file's public source publishes (see the reader docstrings); malformed inputs must give one error naming the
file and the line.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from datapipe.fasta import FastaFormatError
from eval.annotations import (
    AnnotationFormatError,
    chrom_key,
    five_prime,
    read_bed,
    read_gff3,
    read_gtf,
    read_hg19_table,
    select_chrom,
)
from eval.datasets import LabelledSet
from eval.readers import (
    DataFormatError,
    deepgsr_files,
    kmers_to_sequence,
    parse_label,
    read_cnnprom,
    read_deepgsr,
    read_deerect_polya,
    read_dnabert_tsv,
    read_labelled_fasta,
    read_zeng,
    write_labelled_fasta,
)
from tests.helpers import DATA_ROOT, needs_data

DATA = DATA_ROOT
needs_collection = needs_data("pas", "tfbs", "promoter", "annotations")


def counts(data: LabelledSet) -> tuple[int, int]:
    """(positives, negatives)."""
    return int((data.labels == 1).sum()), int((data.labels == 0).sum())


def write(path: Path, text: str) -> Path:
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


def raises_at(exc_type, path: Path, line: int | None, match: str = ""):
    where = re.escape(str(path) if line is None else f"{path}:{line}:")
    return pytest.raises(exc_type, match=where + ".*" + match)


# ------------------------------------------------------------------------------------------ real files


@needs_collection
@pytest.mark.parametrize(
    "species, n", [("Human", 3016), ("Mouse", 2447), ("Bovine", 1604), ("FruitFly", 3510)]
)
def test_deepgsr_attaaa_all_species(species, n):
    data = read_deepgsr(*deepgsr_files(DATA / "pas/deepgsr" / species / "PAS", "ATTAAA"), signal="ATTAAA")
    assert counts(data) == (n, n)
    assert {len(s) for s in data.sequences} == {606}
    assert {s[300:306] for s in data.sequences} == {"ATTAAA"}  # 1-based 301-306, true and pseudo sites


@needs_collection
@pytest.mark.parametrize(
    "folder, n",
    [
        ("human/omni_polyA_data", 18786),
        ("human/dragon_polyA_data", 7370),
        ("mouse/bl_mouse", 23112),
        ("mouse/sp_mouse", 20115),  # soft-masked lower-case bases in places: upper-cased
    ],
)
def test_deerect_polya_folders(folder, n):
    data = read_deerect_polya(DATA / "pas/deerect_polya" / folder)
    assert counts(data) == (n, n)
    assert {len(s) for s in data.sequences} == {206}
    assert all(set(s) <= set("ACGTN") for s in data.sequences)


@needs_collection
def test_deerect_polya_selects_hexamers_and_folds():
    one = read_deerect_polya(DATA / "pas/deerect_polya/human/omni_polyA_data", hexamers=["AATAAA"])
    assert counts(one)[0] == 12155 and {s[100:106] for s in one.sequences} == {"AATAAA"}
    folds = [
        read_deerect_polya(DATA / "pas/deerect_polya/human/dragon_polyA_data", folds=[k]) for k in range(1, 6)
    ]
    assert sum(counts(f)[0] for f in folds) == 7370


@needs_collection
@pytest.mark.parametrize(
    "experiment, part, pos, neg",
    [
        ("wgEncodeAwgTfbsSydhGm12878Stat3IggmusUniPk", "train", 5118, 5067),
        ("wgEncodeAwgTfbsSydhGm12878Stat3IggmusUniPk", "test", 1248, 1299),
        ("wgEncodeAwgTfbsSydhHelas3Stat3IggrabUniPk", "train", 10740, 10823),
        ("wgEncodeAwgTfbsSydhHelas3Stat3IggrabUniPk", "test", 2737, 2654),
        ("wgEncodeAwgTfbsSydhMcf10aesStat3TamUniPk", "test", 8617, 8695),
    ],
)
def test_zeng_stat3_sets(experiment, part, pos, neg):
    data = read_zeng(DATA / "tfbs/zeng690_stat3" / experiment / f"{part}.data.gz")
    assert counts(data) == (pos, neg)
    assert {len(s) for s in data.sequences} == {101}


@needs_collection
@pytest.mark.parametrize(
    "name, rows, pos, length", [("ft_6_dev", 1000, 500, 101), ("ft_prom-core_6_dev", 5919, 2915, 70)]
)
def test_dnabert_tsv_rebuilds_bases_that_give_back_the_file_kmers(name, rows, pos, length):
    path = DATA / "promoter" / f"{name}.tsv.gz"
    data = read_dnabert_tsv(path, k=6)
    assert len(data.sequences) == rows and counts(data)[0] == pos
    assert {len(s) for s in data.sequences} == {length}
    with gzip.open(path, "rt") as fh:  # independent check: re-cut 6-mers from the bases
        lines = fh.read().splitlines()[1:]
    for seq, line in zip(data.sequences, lines, strict=True):
        assert [seq[i : i + 6] for i in range(len(seq) - 5)] == line.split()[:-1]


@needs_collection
@pytest.mark.parametrize(
    "pos_files, neg_file, n_pos, n_neg, length",
    [
        (["Mouse_tata"], "Mouse_nonprom", 1255, 3530, 251),
        (["Mouse_tata", "Mouse_tata_dbtss"], "Mouse_nonprom", 1255 + 1354, 3530, 251),
        (["Arabidopsis_tata", "Arabidopsis_non_tata"], "Arabidopsis_non_prom", 1497 + 5905, 2879, 251),
        (["Ecoli_prom"], "Ecoli_non_prom", 839, 3000, 81),
        (["Bacillus_prom"], "Bacillus_non_prom", 373, 1000, 81),
    ],
)
def test_cnnprom_sets(pos_files, neg_file, n_pos, n_neg, length):
    folder = DATA / "promoter/cnnpromoter"
    data = read_cnnprom([folder / f"{p}.fa.gz" for p in pos_files], folder / f"{neg_file}.fa.gz")
    assert counts(data) == (n_pos, n_neg) and {len(s) for s in data.sequences} == {length}


@needs_collection
def test_cnnprom_refuses_mixed_organisms():
    folder = DATA / "promoter/cnnpromoter"
    with raises_at(DataFormatError, folder / "Mouse_nonprom.fa.gz", 1, "81 bp"):
        read_cnnprom(folder / "Ecoli_prom.fa.gz", folder / "Mouse_nonprom.fa.gz")


@needs_collection
def test_hg19_tables_convert_to_zero_based_half_open():
    ann = DATA / "annotations"
    exons = read_hg19_table(ann / "exons.parquet", chrom="20")  # '20' selects 'chr20' rows
    assert len(exons) == 25376 and set(exons["chrom"]) == {"chr20"}
    rawx = pd.read_parquet(ann / "exons.parquet")
    rawx = rawx[rawx["_labels"] == "chr20"]
    assert (exons["start"].to_numpy() == rawx["_starts"].to_numpy() - 1).all()
    assert (exons["end"].to_numpy() == rawx["_ends"].to_numpy()).all()
    assert {"gene_type", "level", "source"} <= set(exons.columns)
    tss = read_hg19_table(ann / "tss.parquet", chrom="chr20")
    assert ((tss["end"] - tss["start"]) == 1).all()  # single bases, not 2-bp intervals
    genes = read_hg19_table(ann / "genes.parquet", chrom="chr20")
    assert (tss["start"].to_numpy() == five_prime(genes)).all()  # TSS = the gene's 5' base, both strands
    sites = read_hg19_table(ann / "Top1000sites_TF.parquet", chrom="chr20")
    assert len(sites) == 13816 and sites["name"].nunique() > 400
    with raises_at(AnnotationFormatError, ann / "exons.parquet", None, "point=False"):
        read_hg19_table(ann / "exons.parquet", chrom="chr20", point=True)


# ---------------------------------------------------------------------------- labelled FASTA, tiny files


def test_labelled_fasta_both_header_styles_and_round_trip(tmp_path):
    path = write(tmp_path / "x.fa", ">a label=1\nACGT\nacgn\n>chr1:5-9 strand=+ label=0\nTTTT\n>b|2\nGGGG\n")
    data = read_labelled_fasta(path)
    assert data.sequences == ["ACGTACGN", "TTTT", "GGGG"] and data.labels.tolist() == [1, 0, 2]
    out = write_labelled_fasta(data, tmp_path / "y.fa.gz")
    again = read_labelled_fasta(out)
    assert again.sequences == data.sequences and again.labels.tolist() == data.labels.tolist()
    assert not list(tmp_path.glob(".*tmp"))  # written under a temporary name, then renamed
    assert parse_label("id") is None and parse_label("x|y|1") == 1


def test_labelled_fasta_errors_name_file_and_line(tmp_path):
    path = write(tmp_path / "bad.fa", ">a label=1\nACGT\n>b\nACGT\n")
    with raises_at(DataFormatError, path, 3, "no label"):
        read_labelled_fasta(path)
    path = write(tmp_path / "bad2.fa", ">a label=1\nACGT\n>b label=yes\nACGT\n")
    with raises_at(DataFormatError, path, 3, "'yes'"):
        read_labelled_fasta(path)
    path = write(tmp_path / "bad3.fa", ">a label=1\nACGT\nAC-T\n")
    with raises_at(FastaFormatError, path, 3, "gap"):
        read_labelled_fasta(path)


def test_kmers_to_sequence():
    assert kmers_to_sequence(["ACG", "CGT", "GTT"]) == "ACGTT"
    with pytest.raises(ValueError, match="k-mers 1 'ACG' and 2 'GGT' do not overlap"):
        kmers_to_sequence(["ACG", "GGT"])


@pytest.mark.parametrize(
    "text, line, match",
    [
        ("seq\tlabel\nACGTAC CGTACG\t1\n", 1, "header"),
        ("sequence\tlabel\nACGTAC CGTACG\t1\nACGTAC GGTACG\t0\n", 3, "do not overlap"),
        ("sequence\tlabel\nACGTAC CGTACG\t1\nACGTA CGTAC\t0\n", 3, "expected k = 6"),
        ("sequence\tlabel\nACGTAC CGTACG\tyes\n", 2, "label 'yes'"),
        ("sequence\tlabel\nACGTAC\n", 2, "k-mers then a label"),
        ("sequence\tlabel\nACGTAX CGTAXG\t1\n", 2, "character 'X'"),
    ],
)
def test_dnabert_tsv_errors(tmp_path, text, line, match):
    path = write(tmp_path / "dev.tsv.gz", text)
    with raises_at(DataFormatError, path, line, match):
        read_dnabert_tsv(path)


@pytest.mark.parametrize(
    "text, line, match",
    [
        (">chr1:1-5 ACGTA 1\n>chr1:1-5_shuf ACGTA\n", 2, "2 fields"),
        (">chr1:1-5 ACGTA 1\n>chr1:1-5_shuf ACGTA 1\n", 2, "disagree"),
        (">chr1:1-5 ACGTA 1\nchr1:1-5 ACGTA 1\n", 2, "is not '>chr:start-end'"),
        (">chr1:1-5 ACGTA 2\n", 1, "label '2'"),
        ("\n>chr1:1-5 ACGRA 1\n", 2, "character 'R'"),
    ],
)
def test_zeng_errors(tmp_path, text, line, match):
    path = write(tmp_path / "train.data.gz", text)
    with raises_at(DataFormatError, path, line, match):
        read_zeng(path)


def test_deepgsr_errors(tmp_path):
    flank = "A" * 300
    pos = write(tmp_path / "hs_ATTAAA_polyA.fa", f">1\n{flank}ATTAAA{flank}\n>2\n{flank}ATTAAA{flank}\n")
    neg = write(tmp_path / "hs_negATTAAA_polyA.fa", f">1\n{flank}ATTAAA{flank}\n>2\n{flank}AATAAA{flank}\n")
    assert deepgsr_files(tmp_path, "ATTAAA") == (pos, neg)
    with raises_at(DataFormatError, neg, 3, "not the signal 'ATTAAA'"):
        read_deepgsr(pos, neg, signal="ATTAAA")
    short = write(tmp_path / "hs_negATTAAA_polyA.fa", f">1\n{flank}ATTAAA{flank}\n>2\n{flank}ATTAAA\n")
    with raises_at(DataFormatError, short, 3, "306 bp, expected 606"):
        read_deepgsr(pos, short, signal="ATTAAA")
    with raises_at(DataFormatError, tmp_path, None, "AATAAA"):
        deepgsr_files(tmp_path, "AATAAA")


def test_deerect_errors(tmp_path):
    good = "A" * 100 + "AATAAA" + "C" * 100
    (tmp_path / "positive").mkdir()
    (tmp_path / "negative").mkdir()
    write(tmp_path / "positive" / "AATAAA.txt.gz", f"{good}\n{good}\n")
    neg = write(tmp_path / "negative" / "negAATAAA.txt.gz", f"{good}\n\n{good[:-1]}\n")
    with raises_at(DataFormatError, neg, 3, "205 bp, expected 206"):
        read_deerect_polya(tmp_path)
    write(neg, f"{good}\n{good.replace('AATAAA', 'ATTAAA')}\n")
    with raises_at(DataFormatError, neg, 2, "not the file's hexamer AATAAA"):
        read_deerect_polya(tmp_path)
    write(neg, f"{good}\n")
    assert counts(read_deerect_polya(tmp_path)) == (2, 1)
    odd = write(tmp_path / "negative" / "notes.txt", "x\n")
    with raises_at(DataFormatError, odd, None, "file name"):
        read_deerect_polya(tmp_path)


# ------------------------------------------------------------------------------------------ annotations

GTF = """\
#!genome-build GRCh37
chr20\tHAVANA\tgene\t100\t900\t.\t+\t.\tgene_id "G1"; gene_name "ABC"; gene_type "protein_coding";
chr20\tHAVANA\texon\t100\t200\t.\t+\t.\tgene_id "G1"; transcript_id "T1"; gene_name "ABC"; exon_number 1; tag "basic"; tag "CCDS";
chr20\tHAVANA\texon\t300\t900\t.\t+\t.\tgene_id "G1"; transcript_id "T1"; gene_name "ABC"; exon_number 2;
20\tHAVANA\tstart_codon\t150\t152\t.\t-\t0\tgene_id "G2"; transcript_id "T2";
"""


def test_gtf_reader_converts_coordinates_and_parses_attributes(tmp_path):
    path = write(tmp_path / "a.gtf.gz", GTF)
    exons = read_gtf(path, feature="exon")
    assert exons[["start", "end", "strand", "name"]].values.tolist() == [
        [99, 200, "+", "ABC"],
        [299, 900, "+", "ABC"],
    ]
    assert exons["tag"].tolist()[0] == "basic,CCDS" and exons["exon_number"].tolist() == ["1", "2"]
    everything = read_gtf(path)
    assert everything["feature"].tolist() == ["gene", "exon", "exon", "start_codon"]
    codon = read_gtf(path, feature={"start_codon"}, chrom="chr20")  # '20' row matched by chrom_key
    assert codon[["chrom", "start", "end", "strand", "name"]].values.tolist() == [["20", 149, 152, "-", "G2"]]
    assert len(select_chrom(everything, "20")) == 4 and chrom_key("chrM") == chrom_key("MT") == "MT"


@pytest.mark.parametrize(
    "line, match",
    [
        ("chr20\tX\texon\t100\t200\t.\t+\t.", "8 tab-separated columns"),
        ('chr20\tX\texon\t100\t99\t.\t+\t.\tgene_id "G";', "1 <= start <= end"),
        ('chr20\tX\texon\tone\t200\t.\t+\t.\tgene_id "G";', "not integers"),
        ('chr20\tX\texon\t100\t200\t.\t*\t.\tgene_id "G";', "strand '\\*'"),
        ("chr20\tX\texon\t100\t200\t.\t+\t.\tgene_id=G;", "not 'key \"value\";'"),
    ],
)
def test_gtf_errors_name_file_and_line(tmp_path, line, match):
    path = write(tmp_path / "bad.gtf", GTF + line + "\n")
    with raises_at(AnnotationFormatError, path, 6, match):
        read_gtf(path)


GFF3 = """\
##gff-version 3
chr20\tRefSeq\tgene\t1000\t2000\t.\t-\t.\tID=gene1;Name=XYZ%3B1;Dbxref=GeneID:1,HGNC:2
chr20\tRefSeq\texon\t1000\t1100\t.\t-\t.\tID=exon1;Parent=rna1
###
chr20\tRefSeq\tCDS\t1050\t1100\t.\t-\t0\tID=cds1;Parent=rna1
##FASTA
>chr20
ACGT
"""


def test_gff3_reader(tmp_path):
    path = write(tmp_path / "a.gff3", GFF3)
    genes = read_gff3(path, feature="gene")
    assert genes[["start", "end", "strand", "name"]].values.tolist() == [[999, 2000, "-", "XYZ;1"]]
    assert genes["Dbxref"].tolist() == ["GeneID:1,HGNC:2"]
    assert read_gff3(path)["feature"].tolist() == ["gene", "exon", "CDS"]  # stops at ##FASTA
    bad = write(tmp_path / "b.gff3", GFF3.replace("ID=exon1;Parent=rna1", "ID=exon1;Parent"))
    with raises_at(AnnotationFormatError, bad, 3, "not key=value"):
        read_gff3(bad)


def test_bed_reader_widths_and_errors(tmp_path):
    bed3 = read_bed(write(tmp_path / "a.bed", "track name=x\nchr20\t10\t20\nchr20\t30\t31\n"))
    assert bed3[["start", "end", "strand", "name"]].values.tolist() == [[10, 20, ".", ""], [30, 31, ".", ""]]
    bed6 = read_bed(
        write(tmp_path / "b.bed.gz", "#c\n20\t5\t9\tpk1\t900\t-\n20\t15\t19\tpk2\t0\t+\n"), chrom="chr20"
    )
    assert bed6[["name", "score", "strand"]].values.tolist() == [["pk1", "900", "-"], ["pk2", "0", "+"]]
    row = "chr1\t0\t100\tt\t0\t+\t10\t90\t0\t2\t20,30,\t0,70,\tx\n"
    bed13 = read_bed(write(tmp_path / "c.bed", row))
    assert bed13["blockStarts"].tolist() == ["0,70,"] and bed13["extra13"].tolist() == ["x"]
    cases = [
        ("chr1\t0\t10\nchr1\t5\t20\tname\n", 2, "4 columns where the first data line has 3"),
        ("chr1\t0\t10\tn\t0\t+\nchr1\t5\t20\tn\t0\tplus\n", 2, "strand"),
        ("chrom\tstart\tend\n", 1, "not integers"),
        ("chr1\t0\t10\nchr1\t20\t10\n", 2, "0 <= start <= end"),
        ("chr1\t5\n", 1, "at least chrom, start, end"),
    ]
    for i, (text, line, match) in enumerate(cases):
        path = write(tmp_path / f"bad{i}.bed", text)
        with raises_at(AnnotationFormatError, path, line, match):
            read_bed(path)


def test_five_prime_is_strand_aware():
    table = pd.DataFrame({"chrom": "1", "start": [10, 10], "end": [20, 20], "strand": ["+", "-"], "name": ""})
    assert five_prime(table).tolist() == [10, 19]
    assert np.issubdtype(five_prime(table).dtype, np.integer)
