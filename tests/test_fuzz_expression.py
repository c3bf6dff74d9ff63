"""Fuzzing the readers of the expression regression task (#16): the expression table, the per-gene feature
table, the promoter BED as the builder checks it, and a --data regression table (``sequence,value``)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from eval.annotations import read_bed
from eval.expression import check_promoters, read_expression_table, read_features
from eval.regression import read_regression_table
from tests.fuzz import fuzz, mutated, outcome, packed, seed_lines, write
from tests.helpers import DATA_ROOT

_table = DATA_ROOT / "expression/1to1_orthologs_expression.txt.gz"
_bed = DATA_ROOT / "expression/hg19_promoters_cage_corrected_withChr.bed.gz"
EXPRESSION_SEEDS = [
    b"ENSG01\tENSMUSG01\tortholog_one2one\t0.52\t1.07\nENSG02\tENSMUSG02\tortholog_one2one\t-1\tNaN\n",
    b"gene\tlevel\nENSG01\t12.5\nENSG02\t0\n",
] + ([seed_lines(_table, 6)] if _table.exists() else [])
FEATURE_SEEDS = [b"gene\thalf_life\tutr_len\nENSG01\t3.5\t120\nENSG02\t-0.25\t1e3\n"]
PROMOTER_SEEDS = [
    b"chr20\t100\t20100\tENSG01\t0\t+\nchr20\t5000\t25000\tENSG02\t0\t-\n",
] + ([seed_lines(_bed, 6)] if _bed.exists() else [])
VALUE_SEEDS = [
    b"sequence,value\nACGTACGT,0.5\nTTTTGGGG,-1.25\nACGN,3\n",
    b"sequence,value,feature_a,split\nACGT,1,0.1,train\nGGCC,0,2,test\nAAAA,1e-3,-4,val\n",
]


def _promoters(path: Path):
    bed = read_bed(path)
    check_promoters(bed, path)
    return bed.to_dict("list")


def _values(path: Path):
    data = read_regression_table(path)
    return data.sequences, data.values.tolist()


@fuzz()
@given(data=mutated(EXPRESSION_SEEDS), pack=st.data(), column=st.integers(2, 6), log=st.booleans())
def test_expression_table(data: bytes, pack, column: int, log: bool) -> None:
    transform = "log10" if log else "none"
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), "expr.txt.gz", pack.draw(packed(data)))
        outcome(
            "expression.table", lambda p: read_expression_table(p, column=column, transform=transform), path
        )


@fuzz()
@given(data=mutated(FEATURE_SEEDS), pack=st.data())
def test_feature_table(data: bytes, pack) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), "features.tsv", pack.draw(packed(data)))
        outcome("expression.features", lambda p: read_features(p)[0], path)


@fuzz()
@given(data=mutated(PROMOTER_SEEDS), pack=st.data())
def test_promoter_bed(data: bytes, pack) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        outcome(
            "expression.promoters", _promoters, write(Path(tmp), "promoters.bed.gz", pack.draw(packed(data)))
        )


@fuzz()
@given(data=mutated(VALUE_SEEDS), tsv=st.booleans())
def test_value_table(data: bytes, tsv: bool) -> None:
    if tsv:
        data = data.replace(b",", b"\t")
    with tempfile.TemporaryDirectory() as tmp:
        outcome("task.values(--data)", _values, write(Path(tmp), "set.tsv" if tsv else "set.csv", data))
