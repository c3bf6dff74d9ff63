"""The benchmark task registry: name -> how to load the set, its species token and the published figure.

``pas-human`` ships in the repository's ``data/``. The other tasks read a copy of the project's public data
collection: a folder holding ``genomes/`` (GRCh37 chr20 ...), ``annotations/`` (hg19 tables as parquet),
``pas/`` (DeepGSR, DeeReCT-PolyA), ``tfbs/`` (Zeng et al. 690 sets) and ``promoter/`` (DNABERT, CNNProm) in the
layouts their readers document (``eval/readers.py``), found at ``EvalConfig.data_root``, else
``$DNAFM_DATA_ROOT``, else ``../shared/data`` beside the repository.
Builder tasks (tis-, splice-, prom300-, tf-human) cut their sets from GRCh37 chr20 and the hg19 annotation;
``expression-human`` (a regression, eval/expression.py) from chr20, Xpresso's promoter BED and expression table.
``splice-human`` has 3 classes (non-splice, donor, acceptor); the others have 2.
Published figures are from the DNAGPT paper (Zhang et al. 2023, arXiv:2307.05628), the DNABERT paper (Ji et
al. 2021, Bioinformatics btab083) and the DNABERT-2 paper's re-evaluation (Zhou et al. 2023, arXiv:2306.15006),
with the metric named; a set that is not the published one says so.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from datapipe.common.errors import MissingError, UsageError
from eval.datasets import REPO_DATA, LabelledSet
from eval.regression import RegressionSet

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, kw_only=True)
class Task:
    name: str
    description: str
    species_token: str
    load: Callable[[Path], LabelledSet | RegressionSet]
    """Called with the data root (ignored by tasks shipped in data/)."""
    shipped: bool = False
    published: dict[str, float] | None = None
    published_note: str = ""


def default_data_root() -> Path:
    return Path(os.environ.get("DNAFM_DATA_ROOT") or REPO.parent / "shared" / "data")


def _pas_shipped(_root: Path) -> LabelledSet:
    from eval.readers import read_deepgsr

    return read_deepgsr(
        REPO_DATA / "pas/hs_ATTAAA_pos.fa.gz",
        REPO_DATA / "pas/hs_ATTAAA_neg.fa.gz",
        signal="ATTAAA",
        name="pas-human",
    )


def _pas(species: str, folder: str) -> Callable[[Path], LabelledSet]:
    def load(root: Path) -> LabelledSet:
        from eval.readers import deepgsr_files, read_deepgsr

        pos, neg = deepgsr_files(root / "pas/deepgsr" / folder / "PAS", "ATTAAA")
        return read_deepgsr(pos, neg, signal="ATTAAA", name=f"pas-{species}")

    return load


def _chr20(root: Path):
    from eval.genome import Genome

    return Genome.from_fasta(root / "genomes/GRCh37_chr20.fa.gz")


def _tis(root: Path) -> LabelledSet:
    from eval.annotations import read_hg19_table
    from eval.builders import build_tis

    codons = read_hg19_table(root / "annotations/start_codons.parquet", chrom="chr20")
    return build_tis(_chr20(root), codons, name="tis-human", seed=0)


def _splice(root: Path) -> LabelledSet:
    from eval.annotations import read_hg19_table
    from eval.builders import SPLICE_LABELS, build_splice

    exons = read_hg19_table(root / "annotations/exons.parquet", chrom="chr20")
    transcripts = read_hg19_table(root / "annotations/transcripts.parquet", chrom="chr20")
    # chr20 has ~6,250 sites per class; 2,000 per class keeps fine-tuning time in line with the other
    # tasks (the capped set builds in ~0.1 s once chr20 is loaded; all 18,761 windows in ~0.7 s)
    data = build_splice(_chr20(root), exons, transcripts, name="splice-human", seed=0, max_examples=6000)
    return replace(data, classes=tuple(SPLICE_LABELS[c] for c in sorted(SPLICE_LABELS)))


def _prom300(root: Path) -> LabelledSet:
    from eval.annotations import read_hg19_table
    from eval.builders import build_prom300

    tss = read_hg19_table(root / "annotations/tss.parquet", chrom="chr20")
    return build_prom300(_chr20(root), tss, name="prom300-human", seed=0)


def _tf(root: Path) -> LabelledSet:
    from eval.annotations import read_hg19_table
    from eval.builders import build_tf_sites

    sites = read_hg19_table(root / "annotations/Top1000sites_TF.parquet", chrom="chr20")
    return build_tf_sites(_chr20(root), sites, name="tf-human", seed=0, max_examples=6000)


def _stat3(root: Path) -> LabelledSet:
    from eval.readers import read_zeng

    return read_zeng(
        root / "tfbs/zeng690_stat3/wgEncodeAwgTfbsSydhGm12878Stat3IggmusUniPk/train.data.gz",
        name="tfbs-stat3-gm12878",
    )


def _prom_core(root: Path) -> LabelledSet:
    from eval.readers import read_dnabert_tsv

    return read_dnabert_tsv(root / "promoter/ft_prom-core_6_dev.tsv.gz", name="prom-core")


def _prom_mouse(root: Path) -> LabelledSet:
    from eval.readers import read_cnnprom

    d = root / "promoter/cnnpromoter"
    return read_cnnprom(d / "Mouse_tata.fa.gz", d / "Mouse_nonprom.fa.gz", name="prom-mouse-tata")


def _expression(root: Path):
    from eval.expression import build_expression_task

    d = root / "expression"
    return build_expression_task(
        root / "genomes/GRCh37_chr20.fa.gz",
        d / "hg19_promoters_cage_corrected_withChr.bed.gz",
        d / "1to1_orthologs_expression.txt.gz",
        column=5,  # human log10(median expression + 0.1), as the file ships
        chrom="chr20",
        name="expression-human",
    )


TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task(
            name="pas-human",
            description="human PAS ATTAAA, true vs pseudo, 300 + 6 + 300 bp (DeepGSR; shipped)",
            species_token="R",
            load=_pas_shipped,
            shipped=True,
            published_note="DNAGPT-M (arXiv:2307.05628): PAS(AATAAA) acc 91.51, PAS(all) 90.63; the paper gives no "
            "figure for ATTAAA alone",
        ),
        Task(
            name="pas-mouse",
            description="mouse PAS ATTAAA (DeepGSR)",
            species_token="S",
            load=_pas("mouse", "Mouse"),
            published_note="the DNAGPT paper gives no mouse PAS figure",
        ),
        Task(
            name="pas-bovine",
            description="bovine PAS ATTAAA (DeepGSR)",
            species_token="V",
            load=_pas("bovine", "Bovine"),
            published_note="the DNAGPT paper gives no bovine PAS figure",
        ),
        Task(
            name="pas-fruitfly",
            description="fruit fly PAS ATTAAA (DeepGSR)",
            species_token="O",
            load=_pas("fruitfly", "FruitFly"),
            published_note="the DNAGPT paper gives no fruit fly PAS figure",
        ),
        Task(
            name="tis-human",
            description="human TIS: 300 + ATG + 300 bp vs non-start ATGs, built from chr20",
            species_token="R",
            load=_tis,
            published={"accuracy": 0.9746},
            published_note="DNAGPT-M human TIS(ATG) on DeepGSR's genome-wide set; ours is chr20 only",
        ),
        Task(
            name="splice-human",
            description="splice sites, 3 classes (non-splice / donor / acceptor), 400 bp, built from chr20",
            species_token="R",
            load=_splice,
            published={"accuracy": 0.923, "f1": 0.919, "mcc": 0.871},
            published_note="DNABERT splice (DNABERT-2 paper re-evaluation of DNABERT-6: MCC 0.8407); ours is "
            "chr20 only, 2,000 windows per class, and our F1 is macro over the 3 classes",
        ),
        Task(
            name="prom300-human",
            description="Prom-300 (-249..+50 around TSS) vs distal windows, built from chr20",
            species_token="R",
            load=_prom300,
            published={"mcc": 0.9048},
            published_note="DNABERT-6 Prom-300 all, MCC as re-evaluated in the DNABERT-2 paper; ours is chr20 only",
        ),
        Task(
            name="tf-human",
            description="101-bp TF sites (hg19 top sites, chr20) vs dinucleotide shuffles",
            species_token="R",
            load=_tf,
            published={"accuracy": 0.92, "f1": 0.92},
            published_note="DNABERT mean over 690 ENCODE sets (~0.92); ours pools the top sites of 504 TFs",
        ),
        Task(
            name="tfbs-stat3-gm12878",
            description="Zeng-690 STAT3 GM12878 ChIP-seq peaks vs shuffles, 101 bp",
            species_token="R",
            load=_stat3,
            published={"accuracy": 0.92, "f1": 0.92},
            published_note="DNABERT mean over the 690 sets (~0.92); this is one of them",
        ),
        Task(
            name="prom-core",
            description="DNABERT Prom-core 70 bp (sample dev set)",
            species_token="R",
            load=_prom_core,
            published={"mcc": 0.6890},
            published_note="DNABERT-6 Prom-core all, MCC (DNABERT-2 paper); ours is DNABERT's 5,919-row sample",
        ),
        Task(
            name="expression-human",
            description="mRNA level (log10(median + 0.1), Xpresso's human table) from -7,000..+3,500 bp around "
            "the CAGE-corrected TSS, chr20 genes; regression",
            species_token="R",
            load=_expression,
            published={"r2": 0.62},
            published_note="r^2 (squared Pearson) on Xpresso's human test genes: DNAGPT 0.62, Xpresso 0.59 "
            "(DNAGPT paper, arXiv:2307.05628); ours is another gene set (chr20's 460 labelled genes, random split)",
        ),
        Task(
            name="prom-mouse-tata",
            description="mouse TATA promoters vs non-promoters, 251 bp (CNNProm)",
            species_token="S",
            load=_prom_mouse,
            published_note="no published figure for this set in the DNAGPT or DNABERT papers",
        ),
    ]
}


def load_task(name: str, data_root: Path | None = None) -> tuple[Task, LabelledSet | RegressionSet]:
    if name not in TASKS:
        raise UsageError(f"unknown task '{name}'; available: {', '.join(TASKS)} (or pass --data FILE)")
    task = TASKS[name]
    root = data_root or default_data_root()
    if not task.shipped and not root.is_dir():
        raise MissingError(
            f"task {name} reads the public data collection, not found at {root}; pass "
            "--set data_root=PATH (or set DNAFM_DATA_ROOT) to a copy of the collection (README: Tasks)"
        )
    return task, task.load(root)
