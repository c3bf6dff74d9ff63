"""Fuzzing the small text files a user writes or downloads: the species table, labelled CSV/TSV and FASTA
task files (--data), and the published task formats (DNABERT TSV, Zeng 690)."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from datapipe.species import read_species_table
from eval.datasets import read_table
from eval.readers import read_dnabert_tsv, read_labelled_fasta, read_zeng
from eval.user_tasks import read_user_data
from tests.fuzz import fuzz, mutated, outcome, packed, seed_lines, write
from tests.helpers import DATA_ROOT

SPECIES_SEEDS = [
    b"# name species [token]\nGRCh38 human\nhg19 human\npanTro4 chimp <W>\n",
    b"ecoli_k12_mg1655.fa.gz ecoli\nmm10\tmouse\t# comment\n\n",
]
TABLE_SEEDS = [
    b"sequence,label\nACGTACGT,pos\nTTTTGGGG,neg\nACGN,pos\n",
    b"sequence,label,split\nACGT,1,train\nGGCC,0,test\nAAAA,1,dev\n",
    b'sequence,label\n"ACGT",0\nacgt ,1\n',
]
TSV_SEEDS = [s.replace(b",", b"\t") for s in TABLE_SEEDS]
LABELLED_FASTA_SEEDS = [
    b">a label=1\nACGT\n>b label=0\nGGCC\n",
    b">a|1\nACGT\n>b|0\nGGCCNN\n>c|2 split=test\nA\n",
    b">s1 label=pos split=train\nACGTACGT\n>s2 label=neg split=val\nTTTT\n",
]
_promoter = DATA_ROOT / "promoter/ft_6_dev.tsv.gz"
DNABERT_SEEDS = [b"sequence\tlabel\nACGTAC CGTACG GTACGT\t1\nTTTTTT TTTTTG\t0\n"] + (
    [seed_lines(_promoter, 4)] if _promoter.exists() else []
)
ZENG_SEEDS = [b">chr1:100-108 ACGTACGT 1\n>chr1:100-108_shuf AGCTAGCT 0\n"]


def _species(path: Path):
    return read_species_table(str(path))


def _table(path: Path):
    data = read_table(path)
    return data.sequences, data.labels.tolist(), data.classes


def _user(path: Path):
    data = read_user_data(path)
    return data.sequences, data.labels.tolist()


@fuzz(2)
@given(data=mutated(SPECIES_SEEDS))
def test_species_table(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        outcome("species_table", _species, write(Path(tmp), "species.txt", data))


@fuzz()
@given(data=mutated(TABLE_SEEDS), gz=st.booleans())
def test_csv_table(data: bytes, gz: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        name = "set.csv.gz" if gz else "set.csv"
        outcome("task.csv", _table, write(Path(tmp), name, gzip.compress(data) if gz else data))


@fuzz()
@given(data=mutated(TSV_SEEDS), pack=st.data())
def test_tsv_user_data(data: bytes, pack) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        outcome("task.tsv(--data)", _user, write(Path(tmp), "set.tsv.gz", pack.draw(packed(data))))


@fuzz()
@given(data=mutated(LABELLED_FASTA_SEEDS), pack=st.data())
def test_labelled_fasta(data: bytes, pack) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), "set.fa", pack.draw(packed(data)))
        outcome("task.labelled_fasta", lambda p: read_labelled_fasta(p).sequences, path)
        outcome("task.labelled_fasta(--data)", _user, path)


@fuzz()
@given(data=mutated(DNABERT_SEEDS), pack=st.data())
def test_dnabert_tsv(data: bytes, pack) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), "dev.tsv", pack.draw(packed(data)))
        outcome("task.dnabert_tsv", lambda p: read_dnabert_tsv(p).sequences, path)


@fuzz()
@given(data=mutated(ZENG_SEEDS), pack=st.data())
def test_zeng(data: bytes, pack) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), "train.data", pack.draw(packed(data)))
        outcome("task.zeng", lambda p: read_zeng(p).sequences, path)


# ----------------------------------------------------------------------------- same content, same result

_SEQ = st.text("ACGTN", min_size=1, max_size=40)


@fuzz()
@given(
    rows=st.lists(st.tuples(_SEQ, st.sampled_from(["0", "1", "pos", "neg"])), min_size=2, max_size=8),
    crlf=st.booleans(),
    tsv=st.booleans(),
    gz=st.booleans(),
)
def test_table_same_content(rows, crlf: bool, tsv: bool, gz: bool) -> None:
    sep = "\t" if tsv else ","
    text = "sequence" + sep + "label\n" + "".join(f"{s}{sep}{lab}\n" for s, lab in rows)
    if len({lab for _, lab in rows}) < 2:
        rows = [*rows, ("A", "zz")]
        text += f"A{sep}zz\n"
    data = text.encode().replace(b"\n", b"\r\n") if crlf else text.encode()
    with tempfile.TemporaryDirectory() as tmp:
        name = "set" + (".tsv" if tsv else ".csv") + (".gz" if gz else "")
        seqs, labels, classes = _table(write(Path(tmp), name, gzip.compress(data) if gz else data))
    assert seqs == [s for s, _ in rows]
    assert [classes[i] for i in labels] == [lab for _, lab in rows]
    assert np.all(np.asarray(labels) >= 0)


@fuzz()
@given(
    rows=st.lists(
        st.tuples(
            st.from_regex(r"[A-Za-z0-9_.]{1,12}", fullmatch=True),
            st.sampled_from(["human", "mouse", "chimp <W>"]),
        ),
        min_size=1,
        max_size=6,
        unique_by=lambda r: r[0],
    ),
    crlf=st.booleans(),
)
def test_species_same_content(rows, crlf: bool) -> None:
    text = "".join(f"{n} {s}\n" for n, s in rows).encode()
    with tempfile.TemporaryDirectory() as tmp:
        table = _species(write(Path(tmp), "species.txt", text.replace(b"\n", b"\r\n") if crlf else text))
    assert list(table) == [n for n, _ in rows]
