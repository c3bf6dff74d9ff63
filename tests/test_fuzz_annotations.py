"""Fuzzing the annotation readers (GTF, GFF3, BED, BED12 exon structure as `dnafm eval --task` reads them)
and the haplotype panels (.hapt, .legend, VCF, IMPUTE2 .haps + .sample)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from eval.annotations import read_bed, read_gff3, read_gtf
from eval.haplotypes import read_haplotypes, read_legend
from eval.user_tasks import _read_tables
from tests.fuzz import fuzz, mutated, outcome, packed, seed_lines, write
from tests.helpers import DATA_ROOT

GTF = [
    b'#!genome-build GRCh37\nchr20\tHAVANA\tgene\t100\t900\t.\t+\t.\tgene_id "G1"; gene_name "ABC";\n'
    b'chr20\tHAVANA\ttranscript\t100\t900\t.\t+\t.\tgene_id "G1"; transcript_id "T1"; tag "basic";\n'
    b'chr20\tHAVANA\texon\t100\t300\t.\t+\t.\tgene_id "G1"; transcript_id "T1"; exon_number 1;\n'
    b'chr20\tHAVANA\texon\t500\t900\t.\t+\t.\tgene_id "G1"; transcript_id "T1"; exon_number 2;\n'
    b'chr20\tHAVANA\tstart_codon\t150\t152\t.\t+\t0\tgene_id "G1"; transcript_id "T1";\n'
]
GFF3 = [
    b"##gff-version 3\nchr20\tEns\tgene\t100\t900\t.\t-\t.\tID=g1;Name=ABC\n"
    b"chr20\tEns\tmRNA\t100\t900\t.\t-\t.\tID=t1;Parent=g1\n"
    b"chr20\tEns\texon\t100\t300\t.\t-\t.\tParent=t1,t2;Note=a%3Bb\n"
    b"chr20\tEns\tstart_codon\t898\t900\t.\t-\t0\tParent=t1\n##FASTA\n>x\nACGT\n"
]
BED = [
    b"track name=x\nchr20\t100\t200\tsite1\t0\t+\nchr20\t300\t400\tsite2\t5\t-\n",
    b"chr20 100 200\nchr20 150 250\n",
    b"chr20\t100\t900\ttx1\t0\t+\t100\t900\t0\t2\t200,400,\t0,400,\n"
    b"chr20\t1000\t1500\ttx2\t0\t-\t1000\t1500\t0\t1\t500\t0\n",
]


@fuzz()
@given(data=mutated(GTF), pack=st.data())
def test_gtf(data: bytes, pack) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), "genes.gtf.gz", pack.draw(packed(data)))
        outcome("annotation.gtf", lambda p: read_gtf(p, chrom="20"), path)
        outcome("annotation.gtf(splice)", lambda p: _read_tables("splice", "gtf", p, None), path)


@fuzz()
@given(data=mutated(GFF3), pack=st.data())
def test_gff3(data: bytes, pack) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), "genes.gff3", pack.draw(packed(data)))
        outcome("annotation.gff3", read_gff3, path)
        outcome("annotation.gff3(tis)", lambda p: _read_tables("tis", "gff3", p, None), path)


@fuzz()
@given(data=mutated(BED), pack=st.data())
def test_bed(data: bytes, pack) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), "sites.bed", pack.draw(packed(data)))
        outcome("annotation.bed", read_bed, path)
        outcome("annotation.bed12(splice)", lambda p: _read_tables("splice", "bed", p, None), path)


# ------------------------------------------------------------------------------------------ haplotypes

_hapt = DATA_ROOT / "haplotypes/805_SNP_1000G_real.hapt.gz"
_legend = DATA_ROOT / "haplotypes/805_SNP.legend"
HAPT = [b"AG HG1_A 0 1 1 0\nAG HG1_B 1 1 0 0\nAG HG2_A 0 0 0 1\n"] + (
    [b"\n".join(line[:120] for line in seed_lines(_hapt, 6).split(b"\n"))] if _hapt.exists() else []
)
LEGEND = [b"id position a0 a1\n1:100_C_T 100 C T\nrs2 200 A G\n"] + (
    [seed_lines(_legend, 8)] if _legend.exists() else []
)
VCF = [
    b"##fileformat=VCFv4.2\n##contig=<ID=20>\n"
    b'##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
    b"#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tS1\tS2\n"
    b"20\t100\trs1\tA\tG\t.\tPASS\t.\tGT\t0|1\t1|1\n"
    b"20\t200\t.\tC\tT\t.\tPASS\t.\tGT\t0|0\t1|0\n"
    b"20\t300\t.\tC\tT,G\t.\tPASS\t.\tGT\t0|2\t1|0\n"
]
HAPS = [b"20 rs1 100 A G 0 1 1 1\n20 rs2 200 C T 0 0 1 0\n20 rs3 300 C T,G 0 0 1 0\n"]
SAMPLE = [b"ID_1 ID_2 missing\n0 0 0\nS1 S1 0\nS2 S2 0\n"]


@fuzz()
@given(data=mutated(HAPT), pack=st.data(), zipped=st.booleans())
def test_hapt(data: bytes, pack, zipped: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if zipped:
            import io
            import zipfile

            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as zf:
                zf.writestr("panel.hapt", data)
            raw = buf.getvalue()
            if pack.draw(st.booleans()):  # a damaged archive
                i = pack.draw(st.integers(0, len(raw) - 1))
                raw = raw[:i] if pack.draw(st.booleans()) else raw[:i] + bytes([raw[i] ^ 0x5A]) + raw[i + 1 :]
            path = write(Path(tmp), "panel.hapt.zip", raw)
        else:
            path = write(Path(tmp), "panel.hapt.gz", pack.draw(packed(data)))
        outcome("haplotypes.hapt", read_haplotypes, path)


@fuzz(2)
@given(data=mutated(LEGEND), pack=st.data())
def test_legend(data: bytes, pack) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        outcome("haplotypes.legend", read_legend, write(Path(tmp), "snps.legend", pack.draw(packed(data))))


@fuzz()
@given(data=mutated(VCF), pack=st.data())
def test_vcf(data: bytes, pack) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), "panel.vcf.gz", pack.draw(packed(data)))
        outcome("haplotypes.vcf", read_haplotypes, path)


@fuzz()
@given(haps=mutated(HAPS), sample=mutated(SAMPLE), which=st.sampled_from(["haps", "sample", "both"]))
def test_haps(haps: bytes, sample: bytes, which: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), "panel.haps", haps if which != "sample" else HAPS[0])
        spath = write(Path(tmp), "panel.sample", sample if which != "haps" else SAMPLE[0])
        outcome("haplotypes.haps", read_haplotypes, path, names=(path, spath))
