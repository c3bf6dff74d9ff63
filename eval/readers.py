"""Readers for the published downstream-task file formats, each into an :class:`eval.datasets.LabelledSet`.

=================  =======================================================================================
format             layout (each from the supplementary data of the paper named)
=================  =======================================================================================
DeepGSR            FASTA pair ``<sp>_<SIGNAL>_<kind>.fa`` / ``<sp>_neg<SIGNAL>_<kind>.fa``: 300 bp + signal +
                   300 bp; pseudo sites (negatives) carry the same signal          :func:`read_deepgsr`
DeeReCT-PolyA      one 206-bp sequence per line, hexamer at 101-106, ``pos*/`` and ``neg*/`` folders, one
                   file per hexamer (``[pos|neg]<HEX>[_fold_<k>].txt[.gz]``)       :func:`read_deerect_polya`
Zeng et al. (690)  ``>chr:start-end[_shuf] SEQUENCE LABEL`` per line, space-separated; ``_shuf`` = the
                   dinucleotide-shuffled negative, label 0                         :func:`read_zeng`
DNABERT TSV        header ``sequence<TAB>label``; sequences as space-separated overlapping k-mers
                                                                                   :func:`read_dnabert_tsv`
CNNProm            FASTA files of promoters and of non-promoters, fixed length     :func:`read_cnnprom`
labelled FASTA     ``>id label=1`` or ``>id|1``, defined here                      :func:`read_labelled_fasta`
=================  =======================================================================================

Labels are int64 class ids; positive = 1, negative = 0 wherever a format has two classes. Sequences are
upper-cased; A/C/G/T/N only (FASTA inputs also map IUPAC codes to N, see datapipe.fasta). Any file may be
plain or gzip/bgzip (detected from the bytes). A malformed line raises one :class:`DataFormatError`
``"{path}:{line}: {what}; {what to do}"``; FASTA syntax errors come from datapipe.fasta's
FastaFormatError in the same form. Every reader checks the invariants its format promises (lengths, the
signal's position, k-mer overlaps, shuffled <-> label 0), because a violated one means a wrong file or a
wrong reader, and training on it would fail silently.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Collection, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from datapipe.common.errors import InputError, UsageError
from datapipe.common.files import write_atomic
from datapipe.fasta import read_fasta
from eval.annotations import text_lines
from eval.datasets import LabelledSet, split_name

PathLike = str | os.PathLike[str]

_NOT_BASE = re.compile(r"[^ACGTN]")
_LABEL_KEY = re.compile(r"(?:^|\s)label=(\S+)")
_SPLIT_KEY = re.compile(r"(?:^|\s)split=(\S+)")
_ZENG_NAME = re.compile(r"^>[^\s:]+:\d+-\d+(_shuf)?$")
_DEERECT_FILE = re.compile(r"^(?:pos|neg)?([ACGT]{6})(?:_fold_(\d+))?\.txt(?:\.gz)?$")


class DataFormatError(InputError):
    """Malformed task file. ``str(err)`` is ``"{path}:{line}: {message}"`` (no line: the whole file)."""


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    if not path.is_file():
        raise DataFormatError(path, None, "no such file")
    return text_lines(path, DataFormatError)


def _bases(seq: str, path: Path, line: int) -> str:
    seq = seq.upper()
    bad = _NOT_BASE.search(seq)
    if not seq or bad:
        what = "empty sequence" if not seq else f"character {bad.group()!r} at base {bad.start() + 1}"
        raise DataFormatError(path, line, f"{what}; sequences must be A/C/G/T/N")
    return seq


# Labels are class indexes (the head gets max + 1 outputs): a larger one is a wrong column, not a class.
MAX_LABEL = 1_000_000


def _labelled(name: str, seqs: list[str], labels: list[int], where: PathLike) -> LabelledSet:
    if not seqs:
        raise DataFormatError(where, None, "no sequences found")
    if max(labels) > MAX_LABEL:
        raise DataFormatError(
            where,
            None,
            f"label {max(labels)}: labels are class indexes 0..{MAX_LABEL:,}; is it the right column?",
        )
    return LabelledSet(name=name, sequences=seqs, labels=np.asarray(labels, dtype=np.int64))


def _fasta_seqs(path: Path) -> Iterator[tuple[int, str]]:
    """(header line, sequence) of each record, through datapipe.fasta (its errors name file and line)."""
    if not path.is_file():
        raise DataFormatError(path, None, "no such file")
    for rec in read_fasta(path):
        yield rec.line, rec.seq.tobytes().decode("ascii")


# --------------------------------------------------------------------------------------------- DeepGSR


def deepgsr_files(folder: PathLike, signal: str) -> tuple[Path, Path]:
    """(positive, negative) files of one signal in a DeepGSR species folder, e.g. ``Human/PAS``, 'ATTAAA'."""
    folder = Path(folder)
    pos = sorted(p for p in folder.glob(f"*_{signal}_*.fa*") if "_neg" not in p.name)
    neg = sorted(folder.glob(f"*_neg{signal}_*.fa*"))
    if len(pos) != 1 or len(neg) != 1:
        have = ", ".join(sorted(p.name for p in folder.glob("*.fa*"))[:6])
        raise DataFormatError(
            folder,
            None,
            f"need one <sp>_{signal}_*.fa and one <sp>_neg{signal}_*.fa, found {len(pos)} and "
            f"{len(neg)} (files: {have or 'none'}); is the signal spelled as in the file names?",
        )
    return pos[0], neg[0]


def read_deepgsr(
    positive: PathLike,
    negative: PathLike,
    *,
    signal: str | None = None,
    flank: int = 300,
    name: str | None = None,
) -> LabelledSet:
    """DeepGSR pair: label 1 = true sites (positive file), 0 = pseudo sites. Every record must be
    ``flank`` + len(signal) + ``flank`` bp with ``signal`` at 1-based ``flank + 1`` (e.g. ATTAAA at
    301-306 of 606 bp) in both files; ``signal=None`` only checks that all records have one length."""
    seqs: list[str] = []
    labels: list[int] = []
    expect = None if signal is None else 2 * flank + len(signal)
    for label, path in ((1, Path(positive)), (0, Path(negative))):
        for line, seq in _fasta_seqs(path):
            expect = expect or len(seq)
            if len(seq) != expect:
                raise DataFormatError(
                    path,
                    line,
                    f"record is {len(seq)} bp, expected {expect} (DeepGSR: {flank} + signal + {flank})",
                )
            if signal is not None and seq[flank : flank + len(signal)] != signal:
                raise DataFormatError(
                    path,
                    line,
                    f"bases {flank + 1}-{flank + len(signal)} read {seq[flank : flank + len(signal)]!r}, "
                    f"not the signal {signal!r}; wrong signal or flank for this file?",
                )
            seqs.append(seq)
            labels.append(label)
    return _labelled(name or Path(positive).name.split(".")[0], seqs, labels, positive)


# --------------------------------------------------------------------------------------- DeeReCT-PolyA


def read_deerect_polya(
    folder: PathLike,
    *,
    hexamers: Collection[str] | None = None,
    folds: Collection[int] | None = None,
    length: int = 206,
    name: str | None = None,
) -> LabelledSet:
    """A DeeReCT-PolyA data folder with ``pos*/`` (label 1) and ``neg*/`` (label 0) subfolders.

    Files ``[pos|neg]<HEXAMER>[_fold_<k>].txt[.gz]``, one sequence per line (blank lines skipped), each
    ``length`` bp with its file's hexamer centred (1-based 101-106 of 206). ``hexamers`` / ``folds`` select
    files (Dragon's 5-fold files carry ``_fold_k``); order is positives then negatives, files sorted."""
    folder = Path(folder)
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir()) if folder.is_dir() else []
    dirs = {
        label: [d for d in subdirs if d.name.startswith(prefix)] for label, prefix in ((1, "pos"), (0, "neg"))
    }
    if len(dirs[1]) != 1 or len(dirs[0]) != 1:
        raise DataFormatError(
            folder, None, "expected exactly one 'pos*' and one 'neg*' subfolder (e.g. positive/, negative/)"
        )
    mid = (length - 6) // 2  # 0-based start of the centred hexamer: 100 for 206 bp
    wanted = None if hexamers is None else {h.upper() for h in hexamers}
    seqs: list[str] = []
    labels: list[int] = []
    for label in (1, 0):
        files = []
        for path in sorted(dirs[label][0].iterdir()):
            m = _DEERECT_FILE.match(path.name)
            if m is None:
                raise DataFormatError(path, None, "file name is not [pos|neg]<HEXAMER>[_fold_<k>].txt[.gz]")
            if (wanted is None or m[1] in wanted) and (
                folds is None or (m[2] is not None and int(m[2]) in folds)
            ):
                files.append((path, m[1]))
        if not files:
            raise DataFormatError(
                dirs[label][0], None, f"no file for hexamers {sorted(wanted or [])} folds {folds}"
            )
        for path, hexamer in files:
            for line, text in _lines(path):
                if not text.strip():
                    continue
                seq = _bases(text.strip(), path, line)
                if len(seq) != length:
                    raise DataFormatError(path, line, f"sequence is {len(seq)} bp, expected {length}")
                if seq[mid : mid + 6] != hexamer:
                    raise DataFormatError(
                        path,
                        line,
                        f"bases {mid + 1}-{mid + 6} read {seq[mid : mid + 6]!r}, not the file's hexamer {hexamer}",
                    )
                seqs.append(seq)
                labels.append(label)
    return _labelled(name or folder.name, seqs, labels, folder)


# ------------------------------------------------------------------------------------------- Zeng 690


def read_zeng(path: PathLike, *, name: str | None = None) -> LabelledSet:
    """Zeng et al. motif-discovery file (train.data / test.data): ``>chr:start-end[_shuf] SEQ LABEL``.

    Label 1 = ChIP-seq peak, 0 = dinucleotide-shuffled peak; a ``_shuf`` name with label 1 (or a peak name
    with label 0) is an error, as is a line without exactly three space-separated fields."""
    path = Path(path)
    seqs: list[str] = []
    labels: list[int] = []
    for line, text in _lines(path):
        if not text.strip():
            continue
        fields = text.split()
        if len(fields) != 3:
            raise DataFormatError(
                path, line, f"{len(fields)} fields, need 3: '>chr:start-end[_shuf] SEQUENCE LABEL'"
            )
        head, seq, label = fields
        m = _ZENG_NAME.match(head)
        if m is None:
            raise DataFormatError(
                path, line, f"name {head[:40]!r} is not '>chr:start-end' or '>chr:start-end_shuf'"
            )
        if label not in ("0", "1"):
            raise DataFormatError(path, line, f"label {label!r}; Zeng files use 1 (peak) and 0 (shuffled)")
        if (m[1] is not None) != (label == "0"):
            raise DataFormatError(
                path, line, f"name {head!r} and label {label} disagree ('_shuf' marks label 0)"
            )
        seqs.append(_bases(seq, path, line))
        labels.append(int(label))
    return _labelled(name or f"{path.parent.name}/{path.name.split('.')[0]}", seqs, labels, path)


# ---------------------------------------------------------------------------------------- DNABERT TSV


def kmers_to_sequence(kmers: Sequence[str]) -> str:
    """Bases from overlapping stride-1 k-mers: the first k-mer plus the last base of each next one.

    Raises ValueError (with the 1-based k-mer index) when lengths differ or neighbours do not overlap by
    k - 1 bases, which is how a wrong k, a dropped token or non-overlapping k-mers show up."""
    if not kmers:
        raise UsageError("no k-mers")
    k = len(kmers[0])
    for i in range(1, len(kmers)):
        if len(kmers[i]) != k:
            raise UsageError(f"k-mer {i + 1} {kmers[i]!r} has {len(kmers[i])} bases, k-mer 1 has {k}")
        if kmers[i][:-1] != kmers[i - 1][1:]:
            raise UsageError(
                f"k-mers {i} {kmers[i - 1]!r} and {i + 1} {kmers[i]!r} do not overlap by {k - 1} bases "
                "(DNABERT files hold overlapping k-mers with stride 1)"
            )
    return kmers[0] + "".join(t[-1] for t in kmers[1:])


def read_dnabert_tsv(path: PathLike, *, k: int | None = None, name: str | None = None) -> LabelledSet:
    """DNABERT fine-tuning TSV (header ``sequence<TAB>label``): k-mer rows rebuilt into bases.

    ``k`` is checked when given, else taken from the first row; every k-mer must overlap the previous one
    by k - 1 bases (:func:`kmers_to_sequence`). Labels must be integers >= 0."""
    path = Path(path)
    seqs: list[str] = []
    labels: list[int] = []
    for line, text in _lines(path):
        if line == 1:
            # the published files differ: ft/6/dev.tsv has a TAB, prom-core/6/dev.tsv two spaces and CRLF
            if text.split() != ["sequence", "label"]:
                raise DataFormatError(path, 1, f"header {text[:60]!r}; expected 'sequence<TAB>label'")
            continue
        if not text.strip():
            continue
        fields = text.split()  # k-mers, then the label; TAB or space separated
        if len(fields) < 2:
            raise DataFormatError(path, line, "need k-mers then a label, separated by a TAB")
        tokens = fields[:-1]
        k = k or len(tokens[0])  # the first row fixes k for the file
        if len(tokens[0]) != k:
            raise DataFormatError(
                path, line, f"k-mer {tokens[0]!r} has {len(tokens[0])} bases, expected k = {k}"
            )
        try:
            seq = kmers_to_sequence(tokens)
        except ValueError as exc:
            raise DataFormatError(path, line, str(exc)) from None
        try:
            label = int(fields[-1])
        except ValueError:
            label = -1
        if label < 0:
            raise DataFormatError(path, line, f"label {fields[-1]!r}; labels are integers >= 0")
        seqs.append(_bases(seq, path, line))
        labels.append(label)
    return _labelled(name or path.name.split(".")[0], seqs, labels, path)


# -------------------------------------------------------------------------------------------- CNNProm


def read_cnnprom(
    positive: PathLike | Sequence[PathLike],
    negative: PathLike | Sequence[PathLike],
    *,
    name: str | None = None,
) -> LabelledSet:
    """CNNProm FASTA files: label 1 = promoters (e.g. Mouse_tata.fa), 0 = non-promoters (Mouse_nonprom.fa).

    Each side may be several files. All records must have one length (251 bp eukaryotic, 81 bp bacterial
    sets), so mixing e.g. E. coli promoters with mouse non-promoters is refused."""
    groups = [(1, positive), (0, negative)]
    seqs: list[str] = []
    labels: list[int] = []
    expect: int | None = None
    first: Path | None = None
    for label, paths in groups:
        for path in [Path(paths)] if isinstance(paths, str | os.PathLike) else [Path(p) for p in paths]:
            first = first or path
            for line, seq in _fasta_seqs(path):
                expect = expect or len(seq)
                if len(seq) != expect:
                    raise DataFormatError(
                        path,
                        line,
                        f"record is {len(seq)} bp but the set's first record is {expect} bp; "
                        "CNNProm sets have one length (251 or 81): are the files from one organism?",
                    )
                seqs.append(seq)
                labels.append(label)
    assert first is not None
    return _labelled(name or first.name.split(".")[0], seqs, labels, first)


# ------------------------------------------------------------------------------------ labelled FASTA


def parse_label(header: str) -> int | None:
    """Label of a labelled-FASTA header (without '>'), or None if it has none.

    ``label=<int>`` anywhere after the name wins (``>chr1:100-200 label=1``); else the last '|' field of
    the name (``>seq17|0``). Labels are integers >= 0; a present but malformed label raises ValueError."""
    parts = header.split(None, 1)
    if not parts:
        return None
    found = _LABEL_KEY.search(parts[1]) if len(parts) > 1 else None
    text = found[1] if found else parts[0].rsplit("|", 1)[1] if "|" in parts[0] else None
    if text is None:
        return None
    if not text.isdigit():
        raise UsageError(f"label {text!r} is not an integer >= 0")
    return int(text)


def read_labelled_fasta(path: PathLike, *, name: str | None = None) -> LabelledSet:
    """FASTA whose headers carry the label: ``>id label=1`` or ``>id|1`` (see :func:`parse_label`), and
    optionally the split: ``>id label=1 split=test`` (train / val / test; dev means val), then on every record."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, None, "no such file")
    seqs: list[str] = []
    labels: list[int] = []
    parts: list[str | None] = []
    for rec in read_fasta(path):
        header = f"{rec.name} {rec.description}".strip()
        try:
            label = parse_label(header)
        except ValueError as exc:
            raise DataFormatError(path, rec.line, str(exc)) from None
        if label is None:
            raise DataFormatError(
                path, rec.line, f"header {header[:40]!r} has no label; write '>id label=1' or '>id|1'"
            )
        found = _SPLIT_KEY.search(header)
        part = split_name(found[1]) if found else None
        if found and part is None:
            raise DataFormatError(
                path, rec.line, f"split={found[1]!r}; write split=train, val (or dev) or test"
            )
        if parts and (part is None) != (parts[0] is None):
            raise DataFormatError(
                path,
                rec.line,
                "split= is on some records but not this one: give it on every record or on none",
            )
        seqs.append(rec.seq.tobytes().decode("ascii"))
        labels.append(label)
        parts.append(part)
    data = _labelled(name or path.name.split(".")[0], seqs, labels, path)
    if parts and parts[0] is not None:
        try:  # LabelledSet checks the split (train, val and test each present) and names the set, not the file
            data = replace(data, given_split=np.asarray(parts, dtype=object))
        except UsageError as err:
            raise DataFormatError(path, None, str(err)) from None
    return data


def write_labelled_fasta(data: LabelledSet, path: PathLike) -> Path:
    """Write ``>{name}_{i} label={y}`` records, one sequence line each; gzip when the name ends in .gz.

    Written to a temporary name and renamed, so a crash never leaves a partial file under ``path``."""
    path = Path(path)
    text = "".join(
        f">{data.name}_{i} label={int(y)}\n{s}\n"
        for i, (s, y) in enumerate(zip(data.sequences, data.labels, strict=True))
    ).encode("ascii")
    # mtime=0: the same set gives the same bytes, so the file's sha256 can stand for its content
    return write_atomic(path, gzip.compress(text, mtime=0) if path.suffix == ".gz" else text)
