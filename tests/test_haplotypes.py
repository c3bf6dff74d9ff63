"""Haplotype panels from .hapt, VCF/BCF (cyvcf2) and .haps + .sample; what is refused and what is skipped."""

from __future__ import annotations

import gzip
import zipfile

import numpy as np
import pytest

from datapipe.common.errors import InputError, MissingError
from eval.haplotypes import read_haplotypes, read_legend, write_hapt
from tests.helpers import DATA_ROOT, needs_data

REAL = "haplotypes/805_SNP_1000G_real.hapt.gz"
LEGEND = "haplotypes/805_SNP.legend"


def panel(n_samples: int = 5, n_snps: int = 23, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, (2 * n_samples, n_snps)).astype(np.uint8)


def vcf_text(x: np.ndarray, *, extra: dict[int, str] | None = None, fmt_gt: bool = True) -> str:
    """A phased VCF of panel ``x`` (rows in sample pairs); ``extra[i]``: a record line put before SNP i."""
    n = x.shape[0] // 2
    head = ["##fileformat=VCFv4.2", "##contig=<ID=20,length=10000000>"]
    if fmt_gt:
        head.append('##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">')
    head.append('##FORMAT=<ID=DP,Number=1,Type=Integer,Description="Depth">')
    head.append(
        "\t".join(
            ["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT"]
            + [f"S{i}" for i in range(n)]
        )
    )
    lines = []
    for j in range(x.shape[1]):
        if extra and j in extra:
            lines.append(extra[j])
        gts = [f"{x[2 * i, j]}|{x[2 * i + 1, j]}" for i in range(n)]
        lines.append("\t".join(["20", str(1000 + 100 * j), f"rs{j}", "A", "G", ".", "PASS", ".", "GT", *gts]))
    return "\n".join(head + lines) + "\n"


def test_hapt_round_trip_plain_gzip_and_zip(tmp_path):
    x = panel()
    ids = [f"P{i // 2}_{'AB'[i % 2]}" for i in range(len(x))]
    write_hapt(tmp_path / "a.hapt", x, ids, tag="Real")
    text = (tmp_path / "a.hapt").read_bytes()
    with gzip.open(tmp_path / "a.hapt.gz", "wb") as f:
        f.write(text)
    with zipfile.ZipFile(tmp_path / "a.hapt.zip", "w") as z:
        z.writestr("a.hapt", text)
    for name in ("a.hapt", "a.hapt.gz", "a.hapt.zip"):
        p = read_haplotypes(tmp_path / name)
        assert np.array_equal(p.alleles, x) and p.ids == ids
        assert p.groups == [f"P{i // 2}" for i in range(len(x))]


@needs_data(REAL, LEGEND)
def test_the_805_snp_1000_genomes_panel():
    p = read_haplotypes(DATA_ROOT / REAL)
    assert p.alleles.shape == (5008, 805) and p.alleles.dtype == np.uint8
    assert p.ids[:2] == ["HG00096_A", "HG00096_B"] and len(set(p.groups)) == 2504
    legend = read_legend(DATA_ROOT / LEGEND)
    assert len(legend.ids) == 805 and legend.chrom[0] == "1" and legend.pos[0] == 1243896
    assert len(set(legend.chrom)) == 22


def test_vcf_plain_bgzip_and_bcf_give_the_panel(tmp_path):
    from cyvcf2 import VCF, Writer

    x = panel()
    extra = {
        3: "20\t1250\tm1\tA\tG,T\t.\tPASS\t.\tGT\t" + "\t".join(["0|2"] + ["0|0"] * 4),  # multi-allelic
        9: "20\t1850\tm2\tC\tT\t.\tPASS\t.\tGT\t" + "\t".join([".|1"] + ["0|1"] * 4),  # a missing call
        12: "20\t2150\tm3\tC\tT\t.\tPASS\t.\tGT\t"
        + "\t".join(["1/1", "0/0"] + ["0|1"] * 3),  # homozygous '/'
    }
    src = tmp_path / "p.vcf"
    src.write_text(vcf_text(x, extra=extra))
    for mode, name in (("wz", "p.vcf.gz"), ("wb", "p.bcf")):
        w = Writer(str(tmp_path / name), VCF(str(src)), mode=mode)
        for rec in VCF(str(src)):
            w.write_record(rec)
        w.close()
    hom = np.array([[1, 1, 0, 0, 0, 1, 0, 1, 0, 1]], np.uint8).T
    want = np.concatenate([x[:, :12], hom, x[:, 12:]], axis=1)
    for name in ("p.vcf", "p.vcf.gz", "p.bcf"):
        p = read_haplotypes(tmp_path / name)
        assert np.array_equal(p.alleles, want), name
        assert p.ids[:3] == ["S0_A", "S0_B", "S1_A"] and p.groups[:3] == ["S0", "S0", "S1"]
        assert p.skipped == {"multi-allelic (or no ALT allele)": 1, "missing genotype call": 1}
        assert p.snps.pos[:4].tolist() == [1000, 1100, 1200, 1300] and p.snps.a1[0] == "G"


@needs_data(REAL)
def test_the_805_panel_through_vcf_and_haps_reads_back_the_same(tmp_path):
    x = read_haplotypes(DATA_ROOT / REAL).alleles
    (tmp_path / "real.vcf").write_text(vcf_text(x))
    assert np.array_equal(read_haplotypes(tmp_path / "real.vcf").alleles, x)
    write_haps(tmp_path / "real", x)
    assert np.array_equal(read_haplotypes(tmp_path / "real.haps").alleles, x)


def write_haps(stem, x: np.ndarray, *, gz: bool = False) -> None:
    n = x.shape[0] // 2
    rows = [f"20 rs{j} {1000 + j} A G " + " ".join(map(str, x[:, j])) for j in range(x.shape[1])]
    text = "\n".join(rows) + "\n"
    haps = stem.with_name(stem.name + (".haps.gz" if gz else ".haps"))
    if gz:
        with gzip.open(haps, "wt") as f:
            f.write(text)
    else:
        haps.write_text(text)
    sample = ["ID_1 ID_2 missing", "0 0 0"] + [f"F{i} S{i} 0" for i in range(n)]
    stem.with_name(stem.name + ".sample").write_text("\n".join(sample) + "\n")


def test_haps_and_sample(tmp_path):
    x = panel()
    write_haps(tmp_path / "p", x, gz=True)
    p = read_haplotypes(tmp_path / "p.haps.gz")
    assert np.array_equal(p.alleles, x)
    assert p.ids[:2] == ["S0_A", "S0_B"] and p.snps.pos[1] == 1001
    (tmp_path / "p.sample").unlink()
    with pytest.raises(MissingError, match="no .sample file"):
        read_haplotypes(tmp_path / "p.haps.gz")


def test_haps_multiallelic_and_missing_are_counted(tmp_path):
    x = panel(n_samples=2, n_snps=4)
    write_haps(tmp_path / "p", x)
    haps = tmp_path / "p.haps"
    lines = haps.read_text().splitlines()
    lines.insert(1, "20 m1 1500 A G,T 0 1 2 0")
    lines.insert(3, "20 m2 1600 A G 0 ? 1 0")
    haps.write_text("\n".join(lines) + "\n")
    p = read_haplotypes(haps)
    assert np.array_equal(p.alleles, x)
    assert p.skipped == {"multi-allelic (or no ALT allele)": 1, "missing genotype call": 1}


# --- bad input: one clear message each -------------------------------------------------------------------


def bad(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError) as err:
        read_haplotypes(path)
    return str(err.value)


def test_vcf_without_gt(tmp_path):
    text = vcf_text(panel(), fmt_gt=False).replace("\tGT\t", "\tDP\t")
    msg = bad(tmp_path, "nogt.vcf", text)
    assert msg.startswith(f"{tmp_path / 'nogt.vcf'}: ") and "no FORMAT GT field" in msg


def test_vcf_record_without_gt_names_its_line(tmp_path):
    extra = {2: "20\t1150\tx\tA\tG\t.\tPASS\t.\tDP\t" + "\t".join(["3"] * 5)}
    msg = bad(tmp_path, "somegt.vcf", vcf_text(panel(), extra=extra))
    assert ":8: record 20:1150: no GT value" in msg  # 5 header lines, then the third record


def test_vcf_mixed_ploidy(tmp_path):
    extra = {4: "20\t1350\tx\tA\tG\t.\tPASS\t.\tGT\t" + "\t".join(["1"] + ["0|1"] * 4)}
    msg = bad(tmp_path, "ploidy.vcf", vcf_text(panel(), extra=extra))
    assert ":10: record 20:1350: sample S0 has ploidy 1, others 2: mixed ploidy" in msg


def test_vcf_unphased_heterozygous(tmp_path):
    extra = {1: "20\t1050\tx\tA\tG\t.\tPASS\t.\tGT\t" + "\t".join(["0|0", "0/1"] + ["0|1"] * 3)}
    msg = bad(tmp_path, "unphased.vcf", vcf_text(panel(), extra=extra))
    assert ":7: record 20:1050: sample S1 has an unphased heterozygous genotype" in msg
    assert "phase the VCF first" in msg


def test_hapt_value_other_than_0_or_1(tmp_path):
    msg = bad(tmp_path, "x.hapt", "Real a_A 0 1 1 0\nReal a_B 0 1 2 0\n")
    assert (
        msg
        == f"{tmp_path / 'x.hapt'}:2: column 5: allele '2' is not 0 or 1; the panel must hold biallelic 0/1 alleles only"
    )
    assert "column 3: allele '01'" in bad(tmp_path, "y.hapt", "Real a_A 01 1 1 0\n")


def test_hapt_rows_of_unequal_length(tmp_path):
    msg = bad(tmp_path, "x.hapt", "Real a_A 0 1 1 0\nReal a_B 0 1 1 0\nReal b_A 0 1 1\n")
    assert msg == f"{tmp_path / 'x.hapt'}:3: 3 SNPs, but the first row has 4: rows must be equally long"


def test_haps_rows_must_fit_the_sample_file(tmp_path):
    write_haps(tmp_path / "p", panel(n_samples=2, n_snps=3))
    haps = tmp_path / "p.haps"
    haps.write_text(haps.read_text() + "20 rs9 2000 A G 0 1 1\n")
    with pytest.raises(InputError, match=r"p.haps:4: 3 haplotype columns .* lists 2 samples"):
        read_haplotypes(haps)


def test_unknown_format_and_missing_file(tmp_path):
    assert "unknown haplotype format" in bad(tmp_path, "x.csv", "a,b\n")
    with pytest.raises(MissingError, match="no such haplotype file"):
        read_haplotypes(tmp_path / "absent.hapt")
