"""mRNA expression from the promoter: the regression task of Xpresso (Agarwal & Shendure 2020, Cell Reports)
and DNAGPT (Zhang et al. 2023, arXiv:2307.05628), cut from a genome, a promoter BED and an expression table.

Inputs (``dnafm eval --build expression``):

- promoters: a BED6 of one region per gene, ``chrom start end gene_id score strand``, in the layout of
  Xpresso's ``hg19_promoters_cage_corrected`` file: the region reaches ``flank`` = 10,000 bp upstream of the
  (CAGE-corrected) TSS, so the TSS is at 0-based ``start + 10000`` on '+' and ``end - 10000`` on '-' (the
  region's upstream edge is what places the TSS; the downstream edge of a few regions is a base or two off
  20 kb and is not used). Checked on the chr20 genes against the initiator: the TSS base is a purine, the base
  before it a pyrimidine, in ~85% of genes on either strand (~45% one base off).
- expression: a tab-separated table, gene id in column 1, the target in column ``column`` (counted from 1,
  as ``cut -f`` counts). Xpresso's ``1to1_orthologs_expression.txt`` holds log10(median expression + 0.1)
  already (human in column 5, mouse in column 4), so ``transform='none'``; ``transform='log10'`` applies
  log10(x + 0.1) to raw levels. A first line whose target field is not a number is a header.
- features (optional): a TSV with a header, gene id then one numeric column per feature (e.g. Xpresso's
  mRNA half-life features), joined by gene id; they enter the model as numbers (eval/regress_heads.py).

Each gene gives the sequence -``upstream``..+``downstream`` around its TSS (default -7,000..+3,500, 10,500 bp,
Xpresso's input), reverse-complemented on '-' so it reads 5' -> 3' on the gene's strand with the TSS at
0-based index ``upstream``. Windows keep their N bases (assembly gaps near a promoter are rare; the
tokenizers read N). Genes are left out, and counted in ``RegressionSet.skipped``, when their chromosome is
not in the genome, their window runs off the chromosome, the table has no finite target for them, or
(with features) the feature table lacks them. A gene id twice in the BED, the table or the feature table
is an error, as is a non-numeric target or feature field.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from datapipe.common.errors import InputError, MissingError, UsageError
from eval.annotations import AnnotationFormatError, read_bed, text_lines
from eval.genome import Genome
from eval.regression import RegressionSet

log = logging.getLogger(__name__)

Transform = Literal["none", "log10"]
PSEUDOCOUNT = 0.1  # Xpresso's: log10(x + 0.1)


@dataclass(frozen=True, kw_only=True)
class Layout:
    """Where the sequence is cut, in bp relative to the TSS."""

    flank: int = 10_000
    """bp from the promoter region's upstream edge to the TSS."""
    upstream: int = 7_000
    downstream: int = 3_500

    @property
    def length(self) -> int:
        return self.upstream + self.downstream


def read_expression_table(
    path: str | Path, *, column: int = 2, transform: Transform = "none"
) -> tuple[dict[str, float], int]:
    """({gene id: target}, number of rows whose target is not a finite number, skipped)."""
    path = Path(path)
    if column < 2:
        raise UsageError(
            f"--expression-column {column}: counted from 1 as cut -f, and column 1 is the gene id"
        )
    if transform not in ("none", "log10"):
        raise UsageError(f"expression transform {transform!r}: choose none or log10")
    out: dict[str, float] = {}
    non_finite = 0
    for line, text in text_lines(path, InputError):
        if not text.strip():
            continue
        cols = text.split("\t")
        if len(cols) < column:
            raise InputError(
                path, line, f"{len(cols)} tab-separated column(s); the target is column {column}"
            )
        gene, field = cols[0].strip(), cols[column - 1].strip()
        try:
            value = float(field)
        except ValueError:
            if line == 1:  # a header line
                continue
            raise InputError(
                path, line, f"column {column} {field[:30]!r} is not a number; is --expression-column right?"
            ) from None
        if not math.isfinite(value):
            non_finite += 1
            continue
        if transform == "log10":
            if value + PSEUDOCOUNT <= 0:
                raise InputError(path, line, f"{value:g}: log10(x + 0.1) needs x > -0.1; is it already log?")
            value = math.log10(value + PSEUDOCOUNT)
        if gene in out:
            raise InputError(path, line, f"gene {gene!r} appears twice; give one target per gene")
        out[gene] = value
    if not out:
        raise InputError(path, None, f"no row with a finite number in column {column}")
    return out, non_finite


def read_features(path: str | Path) -> tuple[tuple[str, ...], dict[str, np.ndarray]]:
    """(feature names, {gene id: (F,) values}) from a TSV with a header: gene id, then numeric columns."""
    path = Path(path)
    names: tuple[str, ...] | None = None
    out: dict[str, np.ndarray] = {}
    for line, text in text_lines(path, InputError):
        if not text.strip():
            continue
        cols = [c.strip() for c in text.split("\t")]
        if names is None:
            if len(cols) < 2:
                raise InputError(
                    path, line, "header needs the gene id column and at least one feature column"
                )
            names = tuple(cols[1:])
            continue
        if len(cols) != len(names) + 1:
            raise InputError(path, line, f"{len(cols)} columns where the header has {len(names) + 1}")
        row = []
        for name, field in zip(names, cols[1:], strict=True):
            try:
                x = float(field)
            except ValueError:
                raise InputError(path, line, f"feature {name!r} = {field[:30]!r} is not a number") from None
            if not math.isfinite(x):
                raise InputError(path, line, f"feature {name!r} = {field!r} is not finite; give a number")
            row.append(x)
        if cols[0] in out:
            raise InputError(path, line, f"gene {cols[0]!r} appears twice; give one row per gene")
        out[cols[0]] = np.asarray(row)
    if names is None or not out:
        raise InputError(path, None, "no feature rows (a header line, then gene id + numbers per line)")
    return names, out


def promoter_windows(genome: Genome, promoters: pd.DataFrame, layout: Layout) -> tuple[pd.DataFrame, Counter]:
    """(window table: gene, record, start, end, strand; Counter of skip reasons), in BED order."""
    skipped: Counter = Counter()
    rows = []
    for gene, chrom, start, end, strand in promoters[["name", "chrom", "start", "end", "strand"]].itertuples(
        index=False
    ):
        record = genome.resolve(str(chrom))
        if record is None:
            skipped["chromosome not in the genome"] += 1
            continue
        tss = start + layout.flank if strand == "+" else end - layout.flank
        lo = tss - layout.upstream if strand == "+" else tss - layout.downstream + 1
        if lo < 0 or lo + layout.length > len(genome.records[record]):
            skipped["window off the chromosome"] += 1
            continue
        rows.append((gene, record, lo, lo + layout.length, strand))
    return pd.DataFrame(rows, columns=["gene", "record", "start", "end", "strand"]), skipped


def check_promoters(promoters: pd.DataFrame, path: Path) -> None:
    """Every row needs a gene id and a strand; ids are unique (the join key)."""
    if not len(promoters):
        raise AnnotationFormatError(path, None, "no promoter rows (on the chosen chromosome?)")
    names = promoters["name"].astype(str)
    if (names == "").any():
        raise AnnotationFormatError(path, None, "rows without a gene id (column 4); the id joins the table")
    if not promoters["strand"].isin(["+", "-"]).all():
        bad = names[~promoters["strand"].isin(["+", "-"]).to_numpy()].iloc[0]
        raise AnnotationFormatError(path, None, f"gene {bad!r} has no strand ('+'/'-' in column 6)")
    dup = names[names.duplicated()]
    if len(dup):
        raise AnnotationFormatError(
            path, None, f"gene {dup.iloc[0]!r} has two rows; give one region per gene"
        )


def build_expression(
    genome: Genome,
    promoters: pd.DataFrame,
    targets: dict[str, float],
    *,
    features: tuple[tuple[str, ...], dict[str, np.ndarray]] | None = None,
    layout: Layout = Layout(),
    name: str = "expression",
    target: str = "value",
    max_examples: int | None = None,
    seed: int = 0,
    skipped: Counter | None = None,
) -> RegressionSet:
    """A RegressionSet of the genes with a window, a finite target (and features, when given), BED order;
    ``max_examples`` keeps a seeded random subset (in BED order)."""
    windows, skips = promoter_windows(genome, promoters, layout)
    skips.update(skipped or {})
    has = windows["gene"].map(lambda g: g in targets).to_numpy(bool)
    skips["no target in the table"] += int((~has).sum())
    windows = windows[has]
    if features is not None:
        has = windows["gene"].map(lambda g: g in features[1]).to_numpy(bool)
        skips["no row in the feature table"] += int((~has).sum())
        windows = windows[has]
    if max_examples is not None and len(windows) > max_examples:
        keep = np.sort(np.random.default_rng(seed).choice(len(windows), max_examples, replace=False))
        skips["over max_examples"] += len(windows) - max_examples
        windows = windows.iloc[keep]
    if not len(windows):
        raise UsageError(f"{name}: no gene has both a promoter window and a target ({dict(+skips)}); do the gene "
                         "ids of the BED (column 4) and the table (column 1) match, and the chromosome names?")  # fmt: skip
    seqs = []
    for row in windows.itertuples(index=False):
        cut = genome.cut(row.record, np.array([row.start]), layout.length, np.array([row.strand == "-"]))
        seqs.append(cut[0].tobytes().decode("ascii"))
    genes = windows["gene"].astype(str).tolist()
    feats = np.stack([features[1][g] for g in genes]) if features is not None else None
    skips = {k: v for k, v in skips.items() if v}
    if skips:
        log.info(
            "%s: %d genes kept; left out: %s",
            name,
            len(genes),
            ", ".join(f"{v} {k}" for k, v in skips.items()),
        )
    return RegressionSet(
        name=name,
        sequences=seqs,
        values=np.array([targets[g] for g in genes]),
        features=feats,
        feature_names=features[0] if features is not None else (),
        ids=tuple(genes),
        target=target,
        skipped=skips,
    )


def build_expression_task(
    genome: str | Path,
    promoters: str | Path,
    expression: str | Path,
    *,
    column: int = 2,
    transform: Transform = "none",
    features: str | Path | None = None,
    chrom: str | None = None,
    max_examples: int | None = None,
    name: str | None = None,
) -> RegressionSet:
    """The expression task from files (``dnafm eval --build expression``); every file is read and checked
    before the genome is loaded."""
    named = [(genome, "--genome"), (promoters, "--promoters"), (expression, "--expression")]
    for path, flag in named + ([(features, "--features")] if features else []):
        if not Path(path).is_file():
            raise MissingError(f"{path}: no such file; give {flag} as an existing file")
    bed = read_bed(promoters, chrom=chrom)
    check_promoters(bed, Path(promoters))
    targets, non_finite = read_expression_table(expression, column=column, transform=transform)
    feats = read_features(features) if features else None
    from eval.user_tasks import load_genome_for

    records = load_genome_for(Path(genome), sorted(bed["chrom"].astype(str).unique()), Path(promoters))
    shown = "log10(x + 0.1) of" if transform == "log10" else "as written in"
    return build_expression(
        records,
        bed,
        targets,
        features=feats,
        name=name or f"expression-{Path(expression).name.split('.')[0]}",
        target=f"{shown} column {column} of {Path(expression).name}",
        max_examples=max_examples,
        skipped=Counter({"non-finite target in the table": non_finite}) if non_finite else None,
    )
