"""The expression regression task (eval/expression.py): windows checked against plain string slicing of real
chr20, targets joined by gene id, counted skips and clear errors for bad input; ``--data`` value tables."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pytest

from datapipe.common.errors import InputError, UsageError
from eval.expression import Layout, build_expression, build_expression_task, read_expression_table
from eval.regression import RegressionSet, read_regression_table, split_regression
from eval.user_tasks import read_user_data
from tests.conftest import run_cli
from tests.helpers import DATA_ROOT, needs_data, untrained_export

BED = DATA_ROOT / "expression/hg19_promoters_cage_corrected_withChr.bed.gz"
TABLE = DATA_ROOT / "expression/1to1_orthologs_expression.txt.gz"
GENOME = DATA_ROOT / "genomes/GRCh37_chr20.fa.gz"
needs_expression = needs_data(
    "expression/hg19_promoters_cage_corrected_withChr.bed.gz",
    "expression/1to1_orthologs_expression.txt.gz",
    "genomes/GRCh37_chr20.fa.gz",
)
_RC = str.maketrans("ACGTN", "TGCAN")


def _revcomp(s: str) -> str:
    return s.translate(_RC)[::-1]


def _rows(path) -> list[list[str]]:
    with gzip.open(path, "rt") as f:
        return [line.rstrip("\n").split("\t") for line in f if line.strip()]


@pytest.fixture(scope="module")
def human_chr20():
    from eval.tasks import load_task

    return load_task("expression-human", DATA_ROOT)[1]


@needs_expression
def test_registry_task_cuts_every_chr20_gene_at_its_tss(human_chr20):
    from eval.genome import Genome

    data = human_chr20
    bed = [r for r in _rows(BED) if r[0] == "chr20"]
    human = {r[0]: float(r[4]) for r in _rows(TABLE)}
    labelled = [r for r in bed if r[3] in human]
    assert len(bed) == 517 and len(labelled) == 460  # the chr20 genes, those with a human label
    assert len(data.values) == 460 and data.skipped == {"no target in the table": 57}
    assert data.features is None and "column 5" in data.target
    chrom = Genome.from_fasta(GENOME).records["20"].tobytes().decode("ascii")
    by_id = dict(zip(data.ids, range(len(data.ids)), strict=True))
    for strand in "+-":
        picked = [r for r in labelled if r[5] == strand][:3]
        for r in picked:
            start, end = int(r[1]), int(r[2])
            # -7,000..+3,500 around the TSS, 10 kb from the region's upstream edge
            want = (
                chrom[start + 3000 : start + 13500]
                if strand == "+"
                else _revcomp(chrom[end - 13499 : end - 2999])
            )
            i = by_id[r[3]]
            assert data.sequences[i] == want and len(want) == 10_500
            assert data.values[i] == human[r[3]]
    # The TSS sits at index 7,000 on both strands: there the initiator's YR (pyrimidine at -1, purine at the
    # TSS) in most genes (measured ~0.85 on chr20 with either strand; ~0.45 one base off, as '-' once was).
    strand_of = {r[3]: r[5] for r in labelled}
    for strand in "+-":
        seqs = [s for g, s in zip(data.ids, data.sequences, strict=True) if strand_of[g] == strand]
        assert sum(s[7000] in "AG" for s in seqs) / len(seqs) > 0.75, strand
        assert sum(s[6999] in "CT" for s in seqs) / len(seqs) > 0.75, strand


def _toy(n_genes: int = 8, seed: int = 0):
    """A 60-kb record '20' and BED rows ('chr20' names) for ``n_genes`` genes, 20 kb each, both strands."""
    from eval.genome import Genome

    rng = np.random.default_rng(seed)
    seq = "".join(rng.choice(list("ACGT"), 60_000))
    import pandas as pd

    starts = np.linspace(0, 40_000, n_genes).astype(int)
    bed = pd.DataFrame(
        {
            "chrom": "chr20",
            "start": starts,
            "end": starts + 20_000,
            "strand": ["+" if i % 2 == 0 else "-" for i in range(n_genes)],
            "name": [f"G{i}" for i in range(n_genes)],
        }
    )
    return Genome.from_sequences({"20": seq}), seq, bed


def test_windows_strands_and_counted_skips():
    import pandas as pd

    genome, seq, bed = _toy()
    off = pd.DataFrame([{"chrom": "chr20", "start": 55_000, "end": 75_000, "strand": "+", "name": "OFF"},
                        {"chrom": "chr7", "start": 0, "end": 20_000, "strand": "+", "name": "OTHER"}])  # fmt: skip
    bed = pd.concat([bed, off], ignore_index=True)
    targets = {f"G{i}": float(i) for i in range(7)} | {"OFF": 1.0, "OTHER": 2.0}  # G7 has no target
    data = build_expression(genome, bed, targets, name="toy")
    assert data.ids == tuple(f"G{i}" for i in range(7))
    assert data.skipped == {
        "window off the chromosome": 1,
        "chromosome not in the genome": 1,
        "no target in the table": 1,
    }
    for i, row in enumerate(bed.iloc[:7].itertuples()):
        want = seq[row.start + 3000 : row.start + 13500]
        assert data.sequences[i] == (
            want if row.strand == "+" else _revcomp(seq[row.end - 13499 : row.end - 2999])
        )
    # another layout: the TSS base sits at 0-based index `upstream` of every window, on both strands
    lay = Layout(flank=10_000, upstream=5, downstream=3)
    small = build_expression(genome, bed, targets, layout=lay, name="toy")
    for i, row in enumerate(bed.iloc[:7].itertuples()):
        tss = row.start + 10_000 if row.strand == "+" else row.end - 10_000
        base = seq[tss] if row.strand == "+" else _revcomp(seq[tss])
        assert len(small.sequences[i]) == 8 and small.sequences[i][5] == base


def test_features_join_by_gene_and_missing_rows_are_counted(tmp_path):
    genome, _, bed = _toy()
    feats = tmp_path / "f.tsv"
    feats.write_text(
        "gene\thalf_life\tutr_len\n" + "".join(f"G{i}\t{i * 0.5}\t{100 + i}\n" for i in range(6))
    )
    from eval.expression import read_features

    data = build_expression(genome, bed, {f"G{i}": float(i) for i in range(8)}, features=read_features(feats))
    assert data.feature_names == ("half_life", "utr_len") and data.skipped == {
        "no row in the feature table": 2
    }
    np.testing.assert_array_equal(data.features[:, 1], 100 + np.arange(6))
    np.testing.assert_array_equal(data.values, np.arange(6))


def _files(tmp_path, *, table: str, features: str | None = None):
    genome, seq, bed = _toy()
    fa = tmp_path / "g.fa"
    fa.write_text(">20 toy\n" + "\n".join(seq[i : i + 80] for i in range(0, len(seq), 80)) + "\n")
    bed_path = tmp_path / "p.bed"
    bed_path.write_text(
        "".join(f"{r.chrom}\t{r.start}\t{r.end}\t{r.name}\t0\t{r.strand}\n" for r in bed.itertuples())
    )
    tab = tmp_path / "expr.txt"
    tab.write_text(table)
    out = {"genome": fa, "promoters": bed_path, "expression": tab}
    if features is not None:
        (tmp_path / "feat.tsv").write_text(features)
        out["features"] = tmp_path / "feat.tsv"
    return out


def test_table_column_transform_and_non_finite_targets(tmp_path):
    table = (
        "gene\tmouse\thuman\n"
        + "".join(f"G{i}\tx\t{10**i - 0.1}\n" for i in range(6))
        + "G6\tx\tNaN\nG7\tx\tinf\n"
    )
    f = _files(tmp_path, table=table)
    data = build_expression_task(
        f["genome"], f["promoters"], f["expression"], column=3, transform="log10", chrom="20"
    )
    np.testing.assert_allclose(data.values, np.arange(6), atol=1e-12)  # log10(x + 0.1) of 10^i - 0.1
    assert data.skipped == {"no target in the table": 2, "non-finite target in the table": 2}
    assert "log10(x + 0.1)" in data.target and "column 3" in data.target
    raw, non_finite = read_expression_table(f["expression"], column=3)
    assert non_finite == 2 and math.isclose(raw["G2"], 99.9)


@pytest.mark.parametrize(
    ("table", "features", "message"),
    [
        ("G0\t1\nG1\tabc\n", None, "expr.txt:2: column 2 'abc' is not a number"),
        ("G0\t1\nG0\t2\n", None, "expr.txt:2: gene 'G0' appears twice"),
        ("G0\t-5\n", None, "log10(x + 0.1) needs x > -0.1"),
        ("G0\n", None, "expr.txt:1: 1 tab-separated column(s); the target is column 2"),
        ("".join(f"G{i}\t3.5\n" for i in range(8)), None, "every target is 3.5; regression needs targets that vary"),
        ("".join(f"G{i}\t{i}\n" for i in range(8)), "gene\tdecay\nG0\t1.0\nG1\tfast\n", "feat.tsv:3: feature 'decay'"),
        ("".join(f"G{i}\t{i}\n" for i in range(8)), "gene\tdecay\nG0\tnan\n", "feat.tsv:2: feature 'decay' = 'nan' is not finite"),
        ("G99\t1\nG98\t2\n", None, "no gene has both a promoter window and a target"),
    ],
)  # fmt: skip
def test_bad_expression_input_is_one_clear_error(tmp_path, table, features, message):
    f = _files(tmp_path, table=table, features=features)
    transform = "log10" if "-5" in table else "none"
    with pytest.raises((InputError, UsageError)) as err:
        build_expression_task(
            f["genome"], f["promoters"], f["expression"], transform=transform, features=f.get("features")
        )
    assert message in str(err.value)


def test_cli_bad_input_exits_1_with_one_line_and_writes_nothing(tmp_path):
    f = _files(tmp_path, table="G0\t1\nG1\tabc\n")
    out = tmp_path / "eval"
    ckpt = untrained_export("tiny-dnagpt", tmp_path / "ckpt")
    proc = run_cli("eval", "--build", "expression", *[a for k, v in f.items() for a in (f"--{k}", str(v))],
                   "--checkpoint", str(ckpt), "--out", str(out))  # fmt: skip
    assert proc.returncode == 1 and not out.exists()
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .endswith("column 2 'abc' is not a number; is --expression-column right?")
    )
    proc = run_cli("eval", "--build", "expression", "--genome", str(f["genome"]), "--dry-run")
    assert proc.returncode == 1 and "--promoters" in proc.stderr


def test_data_file_with_a_value_column_is_a_regression_set(tmp_path):
    rows = ["sequence,value,feature_gc,split"] + [
        f"{'ACGT' * (i + 3)},{i * 0.5},{i % 3},{['train', 'val', 'test'][i % 3]}" for i in range(12)
    ]
    path = tmp_path / "mine.csv"
    path.write_text("\n".join(rows) + "\n")
    data = read_user_data(path)
    assert isinstance(data, RegressionSet) and data.feature_names == ("feature_gc",)
    np.testing.assert_array_equal(data.values, np.arange(12) * 0.5)
    parts = split_regression(data, seed=0)
    assert list(parts.test) == [2, 5, 8, 11] and len(parts.hashes["test"]) == 64
    path.write_text("sequence,value\nACGT,1\nACGT,nan\n")
    with pytest.raises(InputError, match=r"mine.csv:3: value 'nan' is not finite"):
        read_regression_table(path)
    path.write_text("sequence,value,feature_x\nACGT,1,2\nACGT,2,high\n")
    with pytest.raises(InputError, match=r"mine.csv:3: feature_x 'high' is not a number"):
        read_user_data(path)
    path.write_text("sequence,value\nACGT,1\nACGA,1\n")
    with pytest.raises(InputError, match="every value is 1; regression needs targets that vary"):
        read_user_data(path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("chr20\t30000\t50000\tG0\t0\t+\n", "gene 'G0' has two rows"),
        ("chr20\t30000\t50000\tG9\t0\t.\n", "gene 'G9' has no strand"),
    ],
)
def test_bad_promoter_rows_are_one_clear_error(tmp_path, line, message):
    f = _files(tmp_path, table="".join(f"G{i}\t{i}\n" for i in range(8)))
    f["promoters"].write_text(f["promoters"].read_text() + line)
    with pytest.raises(InputError, match=message):
        build_expression_task(f["genome"], f["promoters"], f["expression"])
