"""Sequence files for the interpretation commands: labels optional (``dnafm eval --data`` needs them).

- CSV / TSV (``.gz`` allowed; TAB when the name has ``.tsv``): a ``sequence`` column, optional ``label`` and
  ``id`` columns. Class ids follow the sorted label names, integers first, as ``dnafm eval --data`` numbers
  them (``eval.datasets.read_table``), so a model fine-tuned on the file reads the same ids.
- FASTA (``.fa/.fasta/.fna[.gz]``): ids are the record names; ``>id label=1`` or ``>id|1`` labels, on every
  record or on none.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datapipe.common.errors import InputError, MissingError

_FASTA = (".fa", ".fasta", ".fna")
_BASES = frozenset("ACGTN")


@dataclass(kw_only=True)
class Sequences:
    path: Path
    ids: list[str]
    sequences: list[str]
    labels: np.ndarray | None
    """(N,) int64 class ids, or None when the file has no labels."""
    classes: tuple[str, ...] | None = None
    """Label names by class id (CSV/TSV); None for FASTA, whose labels are the ids."""

    def __len__(self) -> int:
        return len(self.sequences)

    def sha256(self) -> str:
        """Of the sequences in order: ties scores to the file they were computed from."""
        h = hashlib.sha256()
        for s in self.sequences:
            h.update(s.encode() + b"\n")
        return h.hexdigest()


def read_sequences(path: str | Path) -> Sequences:
    path = Path(path)
    if not path.is_file():
        raise MissingError(f"{path}: no such file; give a CSV/TSV with a 'sequence' column or a FASTA file")
    name = path.name.lower().removesuffix(".gz")
    out = _read_fasta(path) if name.endswith(_FASTA) else _read_table(path)
    if not out.sequences:
        raise InputError(path, None, "no sequences found")
    return out


def _check_bases(seq: str, path: Path, line: int) -> str:
    seq = seq.strip().upper()
    if not seq or not set(seq) <= _BASES:
        bad = sorted(set(seq) - _BASES)[:3]
        raise InputError(path, line, f"sequence must be non-empty A/C/G/T/N (found {bad or 'nothing'})")
    return seq


def _read_table(path: Path) -> Sequences:
    opener = gzip.open if path.suffix == ".gz" else open
    delim = "\t" if ".tsv" in path.suffixes else ","
    ids, seqs, raw = [], [], []
    with opener(path, "rt", newline="") as f:
        reader = csv.DictReader(f, delimiter=delim)
        fields = reader.fieldnames or []
        if "sequence" not in fields:
            raise InputError(
                path, 1, f"header must name a 'sequence' column (got {fields}); delimiter {delim!r}"
            )
        for line, row in enumerate(reader, start=2):
            seqs.append(_check_bases(row["sequence"] or "", path, line))
            ids.append((row.get("id") or "").strip() or str(line - 2))
            if "label" in fields:
                label = (row["label"] or "").strip()
                if not label:
                    raise InputError(path, line, "empty label; give every row one, or drop the column")
                raw.append(label)
    if not raw:
        return Sequences(path=path, ids=ids, sequences=seqs, labels=None)
    classes = sorted(set(raw), key=lambda x: (not x.isdigit(), int(x) if x.isdigit() else x))
    index = {c: i for i, c in enumerate(classes)}
    labels = np.asarray([index[x] for x in raw], dtype=np.int64)
    return Sequences(path=path, ids=ids, sequences=seqs, labels=labels, classes=tuple(classes))


def _read_fasta(path: Path) -> Sequences:
    from datapipe.fasta import read_fasta
    from eval.readers import parse_label

    ids, seqs, labels = [], [], []
    for rec in read_fasta(path):
        header = f"{rec.name} {rec.description}".strip()
        try:
            label = parse_label(header)
        except ValueError as err:
            raise InputError(path, rec.line, str(err)) from None
        if labels and (label is None) != (labels[0] is None):
            raise InputError(path, rec.line, "label= is on some records but not this one: all or none")
        if len(rec.seq) == 0:
            raise InputError(path, rec.line, "empty sequence")
        ids.append(rec.name)
        seqs.append(rec.seq.tobytes().decode("ascii"))
        labels.append(label)
    has = bool(labels) and labels[0] is not None
    return Sequences(
        path=path, ids=ids, sequences=seqs, labels=np.asarray(labels, dtype=np.int64) if has else None
    )
