"""`dnafm genomes`: fine-tune DNAGPT on real haplotypes, generate artificial ones, and score them against held-out
real haplotypes side by side with other generators' sets (e.g. the published GAN and RBM of Yelmen et al.).

A run is the named steps ``load_inputs`` (every file read and checked before anything is written),
``split_panel``, ``finetune_haplotypes`` and ``generate_haplotypes`` (``eval.genomes_model``), ``score_all``
and ``write_report`` (``eval.genomes_report``), each set's scores a nested MLflow run under the run's own.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datapipe.common.config import Config, check
from datapipe.common.errors import InputError, UsageError
from datapipe.common.tracking import PARENT_ENV, default_tracking_uri, start_tracker
from eval.genomes_metrics import LD_MAX_SNPS, SetScore, copies, decay_edges, ld_decay, ld_r2, score_set
from eval.genomes_model import HaploTuneConfig
from eval.haplotypes import HaplotypePanel, SnpTable, read_haplotypes, read_legend
from trainer.generate import SamplingConfig

log = logging.getLogger(__name__)

REFERENCE = "real (held-in)"
"""The reference 'generator': training haplotypes not used for AATS(train). What a perfect generator, one that
draws new genomes from the same population, would score."""


@dataclass(kw_only=True)
class GenomesConfig(Config):
    haplotypes: str = ""
    """The real panel: .hapt (.gz, .zip), .vcf / .vcf.gz / .bcf (phased), or .haps (+ .sample)."""
    sample: str | None = None
    """The .sample file of a .haps panel (default: the same stem beside it)."""
    legend: str | None = None
    """IMPUTE2 legend (id position a0 a1) giving a .hapt panel's positions (for LD decay)."""
    compare: tuple[str, ...] = ()
    """Other artificial sets, 'NAME=FILE', scored side by side (same SNPs, same order)."""
    num: int = 5000
    """Artificial haplotypes to generate."""
    test_fraction: float = 0.2
    """Fraction of individuals held out (never trained on) to score against."""
    split_seed: int = 0
    score_n: int = 0
    """Haplotypes per set in the distance measures (Hamming, AATS, PCA); 0 = as many as held out (capped
    by the smallest set and half the training set)."""
    finetune: HaploTuneConfig = field(default_factory=HaploTuneConfig)
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(batch_size=256))
    """temperature / top_k / top_p / seed / batch_size of the generation (max_new_tokens follows the windows)."""
    experiment: str = "dnafm-genomes"
    tracking: bool = True

    def __post_init__(self) -> None:
        check(self.num >= 2, "num", "must be >= 2")
        check(0 < self.test_fraction < 1, "test_fraction", "must be in (0, 1)")
        check(self.score_n >= 0, "score_n", "must be >= 0 (0 = all held-out haplotypes)")
        for item in self.compare:
            name, sep, path = item.partition("=")
            check(bool(sep and name and path), "compare", f"expected NAME=FILE, got {item!r}")
        names = [c.partition("=")[0] for c in self.compare]
        check(len(set(names)) == len(names), "compare", "names must be distinct")
        check("dnafm" not in names and REFERENCE not in names, "compare", "'dnafm' is the name of our set")


@dataclass(kw_only=True)
class Inputs:
    panel: HaplotypePanel
    compare: dict[str, np.ndarray]


@dataclass(kw_only=True)
class Split:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def load_inputs(cfg: GenomesConfig) -> Inputs:
    """Read the panel, its legend and every --compare set; check they fit together."""
    if not cfg.haplotypes:
        raise UsageError("--haplotypes is required")
    panel = read_haplotypes(cfg.haplotypes, sample=cfg.sample)
    if cfg.legend:
        snps = read_legend(cfg.legend)
        if len(snps.ids) != panel.n_snps:
            raise InputError(
                cfg.legend,
                None,
                f"{len(snps.ids)} SNPs, but {cfg.haplotypes} has {panel.n_snps}: not its legend",
            )
        panel.snps = snps
    compare = {}
    for item in cfg.compare:
        name, _, path = item.partition("=")
        other = read_haplotypes(path)
        if other.n_snps != panel.n_snps:
            raise InputError(
                path, None, f"{other.n_snps} SNPs, but the real panel has {panel.n_snps}: not the same SNPs"
            )
        compare[name] = other.alleles
    return Inputs(panel=panel, compare=compare)


def split_panel(panel: HaplotypePanel, cfg: GenomesConfig) -> Split:
    """Individuals (both haplotypes of a person together) -> test, validation and training haplotypes."""
    groups, inverse = np.unique(np.asarray(panel.groups), return_inverse=True)
    order = np.random.default_rng(cfg.split_seed).permutation(len(groups))
    n_test = int(round(cfg.test_fraction * len(groups)))
    n_val = int(round(cfg.finetune.val_fraction * (len(groups) - n_test)))
    n_val = max(n_val, 1) if cfg.finetune.val_fraction > 0 else 0
    n_train = len(groups) - n_test - n_val
    if min(n_test, n_train) < 2 or (cfg.finetune.val_fraction > 0 and n_val < 1):
        raise UsageError(
            f"{panel.source}: too few haplotypes for the split: {panel.n_haplotypes} haplotypes of "
            f"{len(groups)} individuals give {n_test} test, {n_val} validation and {n_train} training "
            "individuals; at least 2 test and 2 training individuals are needed (more haplotypes, or "
            "another --test-fraction)"
        )
    parts = np.split(order, [n_test, n_test + n_val])
    test, val, train = (np.flatnonzero(np.isin(inverse, p)) for p in parts)
    return Split(train=train, val=val, test=test)


def score_all(
    sets: dict[str, np.ndarray], panel: HaplotypePanel, split: Split, cfg: GenomesConfig
) -> tuple[list[SetScore], dict]:
    """Score every set (ours, the --compare ones, and the held-in reference) against the held-out haplotypes.
    Returns the scores and what the shared figures need (real r^2, LD decay of the real set, n)."""
    x = panel.alleles
    rng = np.random.default_rng(cfg.split_seed + 1)
    train = x[rng.permutation(split.train)]  # [:n] for AATS(train), the rest is the held-in reference set
    n = min(len(split.test), len(train) // 2, *(len(s) for s in sets.values()))
    if cfg.score_n:
        n = min(n, cfg.score_n)
    test = x[split.test]
    test_n = x[np.sort(rng.choice(split.test, n, replace=False))]
    ld_cols = np.arange(panel.n_snps)
    if panel.n_snps > LD_MAX_SNPS:
        ld_cols = np.sort(rng.choice(panel.n_snps, LD_MAX_SNPS, replace=False))
    real_ld = ld_r2(test[:, ld_cols])
    decay = shared_decay = None
    if panel.snps is not None:
        sub = _subset(panel.snps, ld_cols)
        edges = decay_edges(sub)
        if edges is not None:
            decay = (sub, edges)
            shared_decay = {"edges": edges, "real": ld_decay(test[:, ld_cols], sub, edges, r2=real_ld)[0]}
    common = dict(
        test=test, test_n=test_n, train_sample=train[:n], real_ld=real_ld, ld_cols=ld_cols, decay=decay
    )
    scores = []
    for name, ag in {**sets, REFERENCE: train[n:]}.items():
        held_in = name == REFERENCE
        s = score_set(name, ag, train_all=None if held_in else x[split.train], seed=cfg.split_seed, **common)
        if held_in:  # the natural rate: held-out haplotypes identical to some training haplotype
            s.metrics["train_copies_fraction"] = copies(test, x[split.train]) / len(test)
        scores.append(s)
    return scores, {"real_ld": real_ld, "decay": shared_decay, "n": n, "ld_snps": len(ld_cols)}


def _subset(snps: SnpTable, cols: np.ndarray) -> SnpTable:
    return SnpTable(
        chrom=snps.chrom[cols],
        pos=snps.pos[cols],
        ids=[snps.ids[i] for i in cols],
        a0=[snps.a0[i] for i in cols],
        a1=[snps.a1[i] for i in cols],
    )


def run_genomes(cfg: GenomesConfig, *, checkpoint: Path, out_dir: Path, init_group: Any) -> list[SetScore]:
    """The whole run (module docstring); returns the scores (ours first). ``init_group()`` sets up the
    single-rank process group the fine-tuning engine runs on (``cluster.launch.init_process_group``)."""
    from eval.genomes_model import finetune_haplotypes, generate_haplotypes
    from eval.genomes_report import write_report
    from eval.haplotypes import write_hapt
    from trainer.models.export import load_export

    inputs = load_inputs(cfg)
    panel = inputs.panel
    split = split_panel(panel, cfg)
    model, pcfg, _ = load_export(checkpoint)
    if pcfg.family != "dnagpt":
        raise UsageError(f"{checkpoint}: a {pcfg.family} checkpoint cannot generate; pass a DNAGPT one")
    dist_info = init_group()
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg.save_json(out_dir / "genomes_config.json")
    uri = default_tracking_uri(out_dir)
    parent = start_tracker(
        experiment=cfg.experiment,
        run_name=f"genomes-{Path(cfg.haplotypes).name}",
        tracking_uri=uri,
        enabled=cfg.tracking,
        parent_run_id=os.environ.get(PARENT_ENV),
    )
    parent.log_params({**cfg.flat(), "checkpoint": str(checkpoint), "n_snps": panel.n_snps})
    child = start_tracker(
        experiment=cfg.experiment,
        run_name="finetune",
        tracking_uri=uri,
        enabled=cfg.tracking,
        parent_run_id=parent.run_id,
    )
    child.log_params({"n_train": len(split.train), "n_val": len(split.val), "n_test": len(split.test)})
    x = panel.alleles
    clock = time.perf_counter()
    tuned, history = finetune_haplotypes(
        model, x[split.train], x[split.val], cfg.finetune, dist_info=dist_info, tracker=child
    )
    child.finish()
    history["seconds"] = {"finetune": time.perf_counter() - clock}
    clock = time.perf_counter()
    ours = generate_haplotypes(
        tuned, cfg.num, panel.n_snps, sampling=cfg.sampling, overlap=cfg.finetune.window_overlap
    )
    history["seconds"]["generate"] = time.perf_counter() - clock
    log.info("generated %d haplotypes in %.1f s", len(ours), history["seconds"]["generate"])
    write_hapt(out_dir / "generated.hapt", ours, [f"dnafm_AG{i}" for i in range(len(ours))])
    clock = time.perf_counter()
    scores, shared = score_all({"dnafm": ours, **inputs.compare}, panel, split, cfg)
    history["seconds"]["score"] = time.perf_counter() - clock
    log.info("scored %d sets in %.1f s", len(scores), history["seconds"]["score"])
    for s in scores:
        run = start_tracker(
            experiment=cfg.experiment,
            run_name=f"score-{s.name}",
            tracking_uri=uri,
            enabled=cfg.tracking,
            parent_run_id=parent.run_id,
        )
        run.log_params({"set": s.name, "n_distance": shared["n"]})
        run.log_metrics({k: v for k, v in s.metrics.items() if np.isfinite(v)}, step=0)
        run.finish()
    files = write_report(
        out_dir, scores, shared, panel=panel, split=split, cfg=cfg, history=history, checkpoint=checkpoint
    )
    for path in files:
        parent.log_artifact(path)
    parent.finish()
    return scores
