"""`dnafm eval`: every task as a nested MLflow run under one parent; a summary table beside the published figures."""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from datapipe.common.config import Config, check
from datapipe.common.tracking import PARENT_ENV, Tracker, default_tracking_uri, start_tracker
from eval.baseline import kmer_baseline
from eval.datasets import LabelledSet, Split, split
from eval.finetune import FinetuneConfig, finetune
from eval.metrics import METRICS, averaging, classification_metrics
from eval.plots import plot_task
from eval.tasks import Task, load_task
from eval.user_tasks import UserTaskConfig, build_user_task, read_user_data

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class EvalConfig(Config):
    tasks: tuple[str, ...] = ("pas-human",)
    """Registry tasks (eval/tasks.py); empty when the examples come from user_task."""
    user_task: UserTaskConfig = field(default_factory=UserTaskConfig)
    """A user's own labelled file (user_task.data) or a task built from their genome + annotation."""
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    split_seed: int = 0
    experiment: str = "dnafm-eval"
    data_root: str | None = None
    """Folder of the public data collection for the non-shipped tasks (layout: eval/tasks.py)."""
    tracking: bool = True

    def __post_init__(self) -> None:
        sources = [bool(self.tasks), self.user_task.data is not None, self.user_task.build is not None]
        check(
            sum(sources) == 1,
            "tasks",
            "give exactly one source of examples: --tasks, --data or --build (user_task.data / .build); "
            "with --set user_task.data/build, also --set tasks= to drop the default task",
        )


@dataclass(kw_only=True)
class Job:
    """One set to evaluate: a registry task, or the user's (task None)."""

    data: LabelledSet
    species_token: str
    task: Task | None
    source: str


def load_jobs(cfg: EvalConfig) -> list[Job]:
    """Every set the config names, read or built before any output is written (bad input fails first)."""
    user = cfg.user_task
    if user.data is not None or user.build is not None:
        if user.data is not None:
            data = read_user_data(user.data)
        else:
            data = build_user_task(
                user.build, user.genome, user.annotation, chrom=user.chrom, max_examples=user.max_examples
            )
        return [Job(data=data, species_token=user.species_token, task=None, source=user.describe())]
    root = Path(cfg.data_root) if cfg.data_root else None
    jobs = []
    for name in cfg.tasks:
        task, data = load_task(name, root)
        jobs.append(Job(data=data, species_token=task.species_token, task=task, source=task.description))
    return jobs


class RunJobs(Protocol):
    """Runs :func:`evaluate_job` for every job, wherever the launcher puts them; the rows in job order."""

    def __call__(self, jobs: list[Job], cfg: EvalConfig, *, checkpoint: Path, out_dir: Path, tracking_uri: str,
                 parent: str | None) -> list[dict[str, Any]]: ...  # fmt: skip


def run_eval(cfg: EvalConfig, *, checkpoint: Path, out_dir: Path, run_jobs: RunJobs) -> list[dict[str, Any]]:
    """Every set: fine-tune, score, plot, one nested MLflow run each (``run_jobs`` runs them: in this process,
    or as Ray tasks); then summary.md / summary.csv."""
    jobs = load_jobs(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg.save_json(out_dir / "eval_config.json")
    uri = default_tracking_uri(out_dir)
    parent = start_tracker(
        experiment=cfg.experiment, run_name=f"eval-{checkpoint.name}", tracking_uri=uri, enabled=cfg.tracking
    )
    parent.log_params({**cfg.flat(), "checkpoint": str(checkpoint)})
    rows = run_jobs(jobs, cfg, checkpoint=checkpoint, out_dir=out_dir, tracking_uri=uri, parent=parent.run_id)
    md, csv_path = write_summary(rows, out_dir)
    parent.log_artifact(md)
    parent.log_artifact(csv_path)
    parent.finish()
    return rows


def open_task_run(
    job: Job, cfg: EvalConfig, parts: Split, *, tracking_uri: str, parent: str | None
) -> Tracker:
    """The task's MLflow run, nested under ``parent``, with what it was trained and scored on as params."""
    data = job.data
    child = start_tracker(
        experiment=cfg.experiment,
        run_name=f"task-{data.name}",
        tracking_uri=tracking_uri,
        enabled=cfg.tracking,
        parent_run_id=parent or os.environ.get(PARENT_ENV),
    )
    child.log_params(
        {
            "task": data.name,
            "source": job.source,
            "n_classes": data.num_classes,
            "averaging": averaging(data.num_classes),
            "species_token": job.species_token,
            "n_train": len(parts.train),
            "n_val": len(parts.val),
            "n_test": len(parts.test),
            "split": "given by the data" if data.given_split is not None else f"drawn, seed {cfg.split_seed}",
            **{f"sha256.{k}": v for k, v in parts.hashes.items()},
            **cfg.finetune.flat(),
        }
    )
    return child


def score(data: LabelledSet, parts: Split, prob: np.ndarray, seed: int) -> dict[str, Any]:
    """Test metrics of ours (``prob`` (N_test, C)) and of the k-mer baseline, with bootstrap CIs."""
    y_test = data.labels[parts.test]
    base_prob = _baseline(data, parts, seed)
    return {
        "ours": classification_metrics(y_test, prob, seed=seed),
        "baseline": classification_metrics(y_test, base_prob, seed=seed),
        "baseline_prob": base_prob,
    }


def evaluate_job(
    job: Job,
    cfg: EvalConfig,
    *,
    checkpoint: Path,
    out_dir: Path,
    dist_info: Any,
    tracking_uri: str,
    parent: str | None,
) -> dict[str, Any]:
    """One set from fresh pretrained weights: fine-tune, score, plots and ``<task>.json``; its summary row."""
    from trainer.models.export import load_export

    t0 = time.perf_counter()
    data = job.data
    model, pre_cfg, tok = load_export(checkpoint)
    parts = split(data, seed=cfg.split_seed)
    child = open_task_run(job, cfg, parts, tracking_uri=tracking_uri, parent=parent)
    prob, info = finetune(
        model,
        pre_cfg.family,
        tok,
        cfg.finetune,
        data=data,
        parts=parts,
        species_token=job.species_token,
        dist_info=dist_info,
        tracker=child,
    )
    scores = score(data, parts, prob, cfg.split_seed)
    ours, base = scores["ours"], scores["baseline"]
    child.log_metrics(
        {
            **{f"test/{k}": v["value"] for k, v in ours.items()},
            **{f"baseline/{k}": v["value"] for k, v in base.items()},
        },
        step=0,
    )
    y_test = data.labels[parts.test]
    pngs = plot_task(y_test, prob, scores["baseline_prob"], out_dir / data.name, class_names=data.class_names)
    for png in pngs:
        child.log_artifact(png, "plots")
    child.finish()
    row = _row(data, ours, base, job, parts, time.perf_counter() - t0)
    (out_dir / f"{data.name}.json").write_text(
        json.dumps({**row, "history": info["history"]}, indent=2) + "\n"
    )
    return row


def _baseline(data: LabelledSet, parts, seed: int):
    train = [data.sequences[i] for i in parts.train]
    test = [data.sequences[i] for i in parts.test]
    return kmer_baseline(train, data.labels[parts.train], test, num_classes=data.num_classes, seed=seed)


def _row(data: LabelledSet, ours: dict, base: dict, job: Job, parts, seconds: float) -> dict[str, Any]:
    task = job.task
    row: dict[str, Any] = {
        "task": data.name,
        "source": job.source,
        "n_test": len(parts.test),
        "n_classes": data.num_classes,
        "classes": list(data.class_names),
        "averaging": averaging(data.num_classes),
        "test_sha256": parts.hashes["test"][:12],
        "seconds": round(seconds, 1),
    }
    for m in METRICS:
        row[f"{m}"] = ours[m]["value"]
        row[f"{m}_ci"] = [ours[m]["lo"], ours[m]["hi"]]
        row[f"baseline_{m}"] = base[m]["value"]
    row["published"] = dict(task.published or {}) if task else {}
    row["published_note"] = task.published_note if task else "user data: no published figure"
    return row


def write_summary(rows: list[dict[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    """summary.md and summary.csv: ours [95% CI], the k-mer baseline and the published figure, metric named;
    'averaging' says per row whether F1/AUROC are binary or macro over C classes."""
    header = (
        ["task", "classes", "averaging"]
        + [f"{m} (dnafm)" for m in METRICS]
        + [f"{m} (4-mer LR)" for m in METRICS]
        + ["published", "test split sha256"]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table = []
    for r in rows:
        ours = [f"{r[m]:.4f} [{r[m + '_ci'][0]:.3f}, {r[m + '_ci'][1]:.3f}]" for m in METRICS]
        base = [f"{r['baseline_' + m]:.4f}" for m in METRICS]
        pub = ", ".join(f"{k} {v}" for k, v in r["published"].items()) or f"none ({r['published_note']})"
        cells = [r["task"], str(r["n_classes"]), r["averaging"], *ours, *base, pub, r["test_sha256"]]
        lines.append("| " + " | ".join(cells) + " |")
        table.append(cells)
    md = out_dir / "summary.md"
    md.write_text("\n".join(lines) + "\n")
    csv_path = out_dir / "summary.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(table)
    return md, csv_path
