"""`dnafm eval`: every task as a nested MLflow run under one parent; a summary table beside the published figures.

The evaluated checkpoint's provenance (``provenance.json`` of an export: the pretraining run, its store,
experiment, recipe and step) is recorded with the eval runs, which by default log into the same store and
experiment, so ``dnafm compare`` joins pretraining runs to their evaluations.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from datapipe.common.config import Config, check
from datapipe.common.errors import UsageError
from datapipe.common.files import write_atomic
from datapipe.common.tracking import (
    Tracker,
    default_tracking_uri,
    experiment_name,
    start_tracker,
)
from eval.baseline import kmer_baseline
from eval.datasets import LabelledSet, Split, split
from eval.finetune import FinetuneConfig, finetune
from eval.metrics import averaging, classification_metrics, paired_difference
from eval.plots import plot_task
from eval.regression import RegressionSet
from eval.report import mlflow_metrics, task_row, write_summary
from eval.task_run import start_task_run
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
    baselines: tuple[str, ...] = ("kmer",)
    """Beside the pretrained model: 'kmer' (a 4-mer logistic regression) and/or 'scratch' (the same
    architecture fine-tuned the same way from random initialisation: what pretraining bought)."""
    experiment: str | None = None
    """MLflow experiment; None: the pretraining run's (named by the checkpoint), else 'dnafm-eval'."""
    tracking_uri: str | None = None
    """None: $MLFLOW_TRACKING_URI, else the pretraining run's local store (so both are compared together),
    else OUT/mlflow.db."""
    data_root: str | None = None
    """Folder of the public data collection for the non-shipped tasks (layout: eval/tasks.py)."""
    tracking: bool = True
    save_model: bool = False
    """Also write each fine-tuned classifier to OUT/models/<task>/ (eval/saved_model.py), the checkpoint
    `dnafm attention` and `dnafm variants` read."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.baselines) - {"kmer", "scratch"})
        check(not unknown, "baselines", f"{unknown}: choose from kmer, scratch (comma-separated)")
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

    data: LabelledSet | RegressionSet
    species_token: str
    task: Task | None
    source: str


def load_jobs(cfg: EvalConfig) -> list[Job]:
    """Every set the config names, read or built before any output is written (bad input fails first)."""
    user = cfg.user_task
    if user.data is not None or user.build is not None:
        if user.data is not None:
            data = read_user_data(user.data)
        elif user.build == "expression":
            from eval.expression import build_expression_task

            data = build_expression_task(
                user.genome,
                user.promoters,
                user.expression,
                column=user.expression_column or 2,
                transform=user.expression_transform or "none",
                features=user.features,
                chrom=user.chrom,
                max_examples=user.max_examples,
            )
        else:
            data = build_user_task(
                user.build, user.genome, user.annotation, chrom=user.chrom, max_examples=user.max_examples
            )
        jobs = [Job(data=data, species_token=user.species_token, task=None, source=user.describe())]
    else:
        root = Path(cfg.data_root) if cfg.data_root else None
        jobs = []
        for name in cfg.tasks:
            task, data = load_task(name, root)
            jobs.append(Job(data=data, species_token=task.species_token, task=task, source=task.description))
    regression = [j.data.name for j in jobs if isinstance(j.data, RegressionSet)]
    if regression and cfg.save_model:
        raise UsageError(f"--save-model saves classifiers; {', '.join(regression)} is a regression task")
    return jobs


class RunJobs(Protocol):
    """Runs :func:`evaluate_job` for every job, wherever the launcher puts them; the rows in job order."""

    def __call__(self, jobs: list[Job], cfg: EvalConfig, *, checkpoint: Path, out_dir: Path, tracking_uri: str,
                 parent: str | None) -> list[dict[str, Any]]: ...  # fmt: skip


def where_to_log(cfg: EvalConfig, provenance: dict[str, Any], out_dir: Path) -> tuple[str, str]:
    """(tracking URI, experiment) of an eval run: set ones, else the pretraining run's, else OUT's own."""
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri is None:
        # A checkpoint pretrained with --no-mlflow records tracking_uri as null, not absent.
        theirs = provenance.get("tracking_uri") or ""
        local = theirs.startswith("sqlite:///") and Path(theirs.removeprefix("sqlite:///")).exists()
        uri = theirs if local else default_tracking_uri(out_dir)
    return uri, experiment_name(cfg.experiment, provenance.get("experiment") or "dnafm-eval")


def run_eval(cfg: EvalConfig, *, checkpoint: Path, out_dir: Path, run_jobs: RunJobs) -> list[dict[str, Any]]:
    """Every set: fine-tune, score, plot, one nested MLflow run each (``run_jobs`` runs them: in this process,
    or as Ray tasks); then summary.md / summary.csv, and every task's test metrics on the parent run."""
    from trainer.models.export import read_provenance

    jobs = load_jobs(cfg)
    provenance = read_provenance(checkpoint)
    uri, experiment = where_to_log(cfg, provenance, out_dir)
    cfg = cfg.with_overrides([f"experiment={experiment}", f"tracking_uri={uri}"])
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg.save_json(out_dir / "eval_config.json")
    links = _links(provenance)
    parent = start_tracker(experiment=experiment, run_name=f"eval-{checkpoint.name}", tracking_uri=uri,
                           enabled=cfg.tracking, stage="eval", tags=links)  # fmt: skip
    parent.log_params({**cfg.flat(), "checkpoint": str(checkpoint), **_provenance_params(provenance)})
    rows = run_jobs(jobs, cfg, checkpoint=checkpoint, out_dir=out_dir, tracking_uri=uri, parent=parent.run_id)
    for row in rows:
        parent.log_metrics(mlflow_metrics(row), step=0)
    md, csv_path = write_summary(rows, out_dir)
    parent.log_artifact(md)
    parent.log_artifact(csv_path)
    parent.finish()
    return rows


def _links(provenance: dict[str, Any]) -> dict[str, str]:
    return {"dnafm.pretrain_run_id": provenance["run_id"]} if provenance.get("run_id") else {}


def _provenance_params(provenance: dict[str, Any]) -> dict[str, Any]:
    """The pretraining run evaluated: its id, recipe and step (what the checkpoint's provenance says)."""
    keys = ("run_id", "recipe", "step", "tokens_seen")
    return {f"pretrain.{k}": provenance[k] for k in keys if provenance.get(k) is not None}


def open_task_run(
    job: Job,
    cfg: EvalConfig,
    parts: Split,
    *,
    tracking_uri: str,
    parent: str | None,
    tags: dict | None = None,
) -> Tracker:
    """The task's MLflow run, nested under ``parent``, with what it was trained and scored on as params."""
    params = {"n_classes": job.data.num_classes, "averaging": averaging(job.data.num_classes)}
    return start_task_run(job, cfg, parts, tracking_uri=tracking_uri, parent=parent, tags=tags, params=params)


def score(
    data: LabelledSet, parts: Split, prob: np.ndarray, seed: int, scratch: np.ndarray | None = None
) -> dict[str, Any]:
    """Test metrics of ours (``prob`` (N_test, C)), of the k-mer baseline and, when given, of the model fine-tuned
    from random initialisation (``scratch``), with bootstrap CIs; paired MCC differences of ours against each."""
    y_test = data.labels[parts.test]
    base_prob = _baseline(data, parts, seed)
    out = {
        "ours": classification_metrics(y_test, prob, seed=seed),
        "baseline": classification_metrics(y_test, base_prob, seed=seed),
        "baseline_prob": base_prob,
        "gain_vs_kmer": paired_difference(y_test, prob, base_prob, seed=seed),
    }
    if scratch is not None:
        out["scratch"] = classification_metrics(y_test, scratch, seed=seed)
        out["gain_vs_scratch"] = paired_difference(y_test, prob, scratch, seed=seed)
    return out


def write_predictions(
    out_dir: Path,
    data: LabelledSet,
    parts: Split,
    prob: np.ndarray,
    kmer_prob: np.ndarray,
    scratch: np.ndarray | None,
) -> Path:
    """OUT/<task>_predictions.tsv: one row per test example (``example``: its 0-based row in the task's set),
    its class id (``label``; names in ``<task>.json``'s classes) and every model's class probabilities,
    columns ``dnafm_p<c>``, ``kmer_p<c>`` (and ``scratch_p<c>``) by class id, written exactly (repr) so the
    file re-scores to ``<task>.json``. What a user needs to score the models their own way, or to pair two
    evals on the same split (bench/bench_transfer.py pairs each pretraining budget with the random twin)."""
    models = [("dnafm", prob), ("kmer", kmer_prob)] + ([("scratch", scratch)] if scratch is not None else [])
    for who, p in models:  # a programming error, not bad input: rows must be the test examples in order
        assert p.shape == (len(parts.test), data.num_classes), (who, p.shape)
    header = ["example", "label"] + [f"{who}_p{c}" for who, _ in models for c in range(data.num_classes)]
    lines = ["\t".join(header) + "\n"]
    for row, i in enumerate(parts.test):
        cells = [str(int(i)), str(int(data.labels[i]))]
        cells += [repr(float(p[row, c])) for _, p in models for c in range(data.num_classes)]
        lines.append("\t".join(cells) + "\n")
    path = out_dir / f"{data.name}_predictions.tsv"
    write_atomic(path, "".join(lines).encode())
    return path


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
    """One set from fresh pretrained weights (and, with the 'scratch' baseline, from random ones): fine-tune,
    score, plots and ``<task>.json``; its summary row."""
    from trainer.models.export import load_export, read_provenance

    if isinstance(job.data, RegressionSet):
        from eval.run_regression import evaluate_regression_job

        return evaluate_regression_job(job, cfg, checkpoint=checkpoint, out_dir=out_dir, dist_info=dist_info,
                                       tracking_uri=tracking_uri, parent=parent)  # fmt: skip
    t0 = time.perf_counter()
    data = job.data
    model, pre_cfg, tok = load_export(checkpoint)
    parts = split(data, seed=cfg.split_seed)
    child = open_task_run(job, cfg, parts, tracking_uri=tracking_uri, parent=parent,
                          tags=_links(read_provenance(checkpoint)))  # fmt: skip
    tune = dict(family=pre_cfg.family, tok=tok, cfg=cfg.finetune, data=data, parts=parts,
                species_token=job.species_token, dist_info=dist_info, tracker=child,
                prefix=f"eval/{data.name}/")  # fmt: skip
    prob, info = finetune(model, **tune)
    if cfg.save_model:
        saved = save_job_model(job, cfg, info, pre_cfg, tok, out_dir=out_dir, checkpoint=checkpoint)
        child.set_tags({"saved_model": str(saved)})
    scratch = None
    if "scratch" in cfg.baselines:
        scratch, _ = finetune(
            _random_twin(pre_cfg, cfg.finetune.seed), **{**tune, "prefix": f"eval/{data.name}/scratch/"}
        )
    scores = score(data, parts, prob, cfg.split_seed, scratch=scratch)
    y_test = data.labels[parts.test]
    pngs = plot_task(y_test, prob, scores["baseline_prob"], out_dir / data.name, class_names=data.class_names)
    for png in pngs:
        child.log_artifact(png, "plots")
    row = task_row(data, scores, job, parts, time.perf_counter() - t0)
    row.update(window_pool=info["pool"], windows_per_example=round(info["windows_per_example"], 2))
    child.log_metrics(mlflow_metrics(row), step=0)
    child.log_artifact(write_predictions(out_dir, data, parts, prob, scores["baseline_prob"], scratch))
    child.finish()
    (out_dir / f"{data.name}.json").write_text(
        json.dumps({**row, "history": info["history"]}, indent=2) + "\n"
    )
    return row


def _random_twin(pre_cfg: Any, seed: int):
    """The pretrained model's architecture with a fresh random initialisation (seeded)."""
    import torch

    from trainer.models import build_model

    torch.manual_seed(seed)
    return build_model(pre_cfg.family, pre_cfg.model).eval()


def save_job_model(
    job: Job, cfg: EvalConfig, info: dict, pre_cfg, tok, *, out_dir: Path, checkpoint: Path
) -> Path:
    """OUT/models/<task>/: the fine-tuned classifier of ``job`` (eval/saved_model.py)."""
    from eval.saved_model import classifier_info, save_classifier

    meta = classifier_info(
        job.data,
        mode=cfg.finetune.mode,
        species_token=job.species_token,
        crop=cfg.finetune.crop,
        source=f"dnafm eval of {checkpoint} on {job.source}",
        best_val_mcc=info["best_val_mcc"],
    )
    path = out_dir / "models" / job.data.name.replace("/", "_")
    save_classifier(
        info["classifier"],
        path,
        family=pre_cfg.family,
        pretrain_config=pre_cfg.to_dict(),
        tokenizer=tok,
        info=meta,
    )
    log.info("fine-tuned classifier saved to %s", path)
    return path


def _baseline(data: LabelledSet, parts, seed: int):
    train = [data.sequences[i] for i in parts.train]
    test = [data.sequences[i] for i in parts.test]
    return kmer_baseline(train, data.labels[parts.train], test, num_classes=data.num_classes, seed=seed)
