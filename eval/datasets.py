"""Labelled sequence sets, a user's own CSV/TSV, and deterministic, content-hashed splits."""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datapipe.common.errors import UsageError
from datapipe.fasta import COMPRESSION_ERRORS, open_maybe_compressed

REPO_DATA = Path(__file__).resolve().parents[1] / "data"


@dataclass(kw_only=True)
class LabelledSet:
    name: str
    sequences: list[str]
    labels: np.ndarray  # (N,) int64 class ids 0..C-1
    classes: tuple[str, ...] | None = None
    """Class names by class id (e.g. ('non-splice', 'donor', 'acceptor')); None: the ids are the names."""
    given_split: np.ndarray | None = None
    """(N,) 'train' / 'val' / 'test' per example when the source fixes the split; None: :func:`split` draws it."""

    def __post_init__(self) -> None:
        if len(self.sequences) != len(self.labels):
            raise UsageError(f"{self.name}: {len(self.sequences)} sequences but {len(self.labels)} labels")
        if len(self.sequences) == 0:
            raise UsageError(f"{self.name}: no sequences")
        if self.given_split is not None:
            self.given_split = np.asarray(self.given_split, dtype=object)
            have = set(self.given_split.tolist())
            if len(self.given_split) != len(self.labels) or not have <= set(SPLITS):
                raise UsageError(f"{self.name}: given_split must hold one of {SPLITS} per example")
            for part in SPLITS:  # early stopping reads val, the scores test
                if part not in have:
                    raise UsageError(
                        f"{self.name}: the given split has no '{part}' examples; mark some rows {part} "
                        "(or leave the split out entirely to have one drawn from the seed)"
                    )
        if self.classes is not None:
            self.classes = tuple(self.classes)
            if int(self.labels.max()) >= len(self.classes) or int(self.labels.min()) < 0:
                raise UsageError(
                    f"{self.name}: labels {int(self.labels.min())}..{int(self.labels.max())} but "
                    f"{len(self.classes)} class names {list(self.classes)}"
                )

    @property
    def num_classes(self) -> int:
        """C: len(classes) when named, else max(label) + 1. A classifier needs C >= 2 (a builder's
        positives-only table is a LabelledSet too, so this is checked here, not on construction)."""
        n = len(self.classes) if self.classes is not None else int(self.labels.max()) + 1
        if n < 2:
            raise UsageError(f"{self.name}: {n} class; classification needs at least 2 classes")
        return n

    @property
    def class_names(self) -> tuple[str, ...]:
        """Names by class id, for reports and plots: ``classes``, else '0', '1', ..."""
        return self.classes if self.classes is not None else tuple(str(i) for i in range(self.num_classes))


SPLITS = ("train", "val", "test")
_SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
}


def split_name(text: str) -> str | None:
    """'train' / 'val' / 'test' for a split written as train/training, val/valid/validation/dev, test (any
    case); None for anything else."""
    return _SPLIT_NAMES.get(text.strip().lower())


def read_table(path: str | Path) -> LabelledSet:
    """A user's own set: CSV or TSV (by extension, .gz allowed) with columns ``sequence`` and ``label``.

    Labels are names or integers, 2 or more distinct values; class ids follow the sorted names, integers
    first in numeric order ('0' < '1' < '2' < '10' < 'neg' < 'pos'), and ``classes`` keeps the names.
    An optional ``split`` column (train / val / test; dev and valid mean val) fixes the split, e.g. a
    benchmark's published one; every row then needs one."""
    path = Path(path)
    delim = "\t" if ".tsv" in path.suffixes else ","
    seqs: list[str] = []
    raw_labels: list[str] = []
    parts: list[str] = []
    reader = None
    try:
        with open_maybe_compressed(path) as fh, io.TextIOWrapper(fh, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter=delim)
            _table_rows(path, reader, delim, seqs, raw_labels, parts)
    except (UnicodeDecodeError, csv.Error, *COMPRESSION_ERRORS) as exc:
        line = (reader.line_num if reader is not None else 0) + 1  # the line being read when it failed
        what = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else "unreadable"
        raise UsageError(
            f"{path}:{line}: {what} ({exc}); give a plain or gzip CSV/TSV text file (fields under 128 KiB, "
            "quotes closed)"
        ) from None
    if not seqs:
        raise UsageError(f"{path}: no rows after the header")
    classes = sorted(set(raw_labels), key=_label_order)
    if len(classes) < 2:
        raise UsageError(
            f"{path}: every row has label {classes[0]!r}; classification needs at least "
            "2 classes in the 'label' column"
        )
    index = {c: i for i, c in enumerate(classes)}
    labels = np.asarray([index[x] for x in raw_labels], dtype=np.int64)
    given = np.asarray(parts, dtype=object) if parts else None
    return LabelledSet(
        name=path.name, sequences=seqs, labels=labels, classes=tuple(classes), given_split=given
    )


def _label_order(label: str) -> tuple[bool, int, str, str]:
    """Integers first in numeric order, then names. Compared as digit strings (length, then text), not int():
    int() refuses more than 4,300 digits, and str.isdigit() is true of '²', which int() does not read."""
    digits = label.isascii() and label.isdigit()
    core = label.lstrip("0") if digits else label
    return (not digits, len(core) if digits else 0, core, label)


def _table_rows(
    path: Path, reader: csv.DictReader, delim: str, seqs: list[str], raw_labels: list[str], parts: list[str]
) -> None:
    """Check and collect the rows of a CSV/TSV task file (read_table)."""
    if reader.fieldnames is None or not {"sequence", "label"} <= set(reader.fieldnames):
        raise UsageError(
            f"{path}:1: header must name the columns 'sequence' and 'label' "
            f"(got {reader.fieldnames}); delimiter {'TAB' if delim == chr(9) else 'comma'}"
        )
    for line, row in enumerate(reader, start=2):
        seq = (row["sequence"] or "").strip().upper().replace(" ", "")
        if not seq or set(seq) - set("ACGTN"):
            raise UsageError(f"{path}:{line}: sequence must be non-empty A/C/G/T/N (got {seq[:30]!r})")
        label = (row["label"] or "").strip()
        if not label:
            raise UsageError(f"{path}:{line}: empty label; every row needs one in the 'label' column")
        if "split" in reader.fieldnames:
            part = split_name(row["split"] or "")
            if part is None:
                raise UsageError(
                    f"{path}:{line}: split {row['split']!r}; write train, val (or dev) or test in every row"
                )
            parts.append(part)
        seqs.append(seq)
        raw_labels.append(label)


@dataclass(kw_only=True)
class Split:
    train: np.ndarray  # indices into the set
    val: np.ndarray
    test: np.ndarray
    hashes: dict[str, str]


def split(
    data: LabelledSet, *, seed: int, fractions: tuple[float, float, float] = (0.6, 0.15, 0.25)
) -> Split:
    """The set's given split if it has one, else a stratified split (per class, same fractions) from a
    seed; sha256 of each part's content."""
    if data.given_split is not None:
        out = {k: np.flatnonzero(data.given_split == k) for k in SPLITS}
    else:
        rng = np.random.default_rng(seed)
        parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
        for label in np.unique(data.labels):
            idx = rng.permutation(np.flatnonzero(data.labels == label))
            n_train = int(round(fractions[0] * len(idx)))
            n_val = int(round(fractions[1] * len(idx)))
            parts["train"].append(idx[:n_train])
            parts["val"].append(idx[n_train : n_train + n_val])
            parts["test"].append(idx[n_train + n_val :])
        out = {k: np.sort(np.concatenate(v)) for k, v in parts.items()}
    hashes = {}
    for k, idx in out.items():
        h = hashlib.sha256()
        for i in idx:
            h.update(f"{data.sequences[i]}\t{data.labels[i]}\n".encode())
        hashes[k] = h.hexdigest()
    return Split(train=out["train"], val=out["val"], test=out["test"], hashes=hashes)
