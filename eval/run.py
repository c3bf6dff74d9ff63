"""`dnafm eval`: every task as a nested MLflow run under one parent; a summary table beside the published figures."""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datapipe.config import Config
from datapipe.tracking import PARENT_ENV, default_tracking_uri, start_tracker
from eval.baseline import kmer_baseline
from eval.datasets import LabelledSet, read_table, split
from eval.finetune import FinetuneConfig, finetune
from eval.metrics import METRICS, binary_metrics
from eval.plots import plot_task
from eval.tasks import load_task

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class EvalConfig(Config):
    tasks: tuple[str, ...] = ("pas-human",)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    split_seed: int = 0
    experiment: str = "dnafm-eval"
    data_root: str | None = None
    """Copy of the public data collection (shared/data layout) for the non-shipped tasks; see eval/tasks.py."""
    tracking: bool = True


def run_eval(
    cfg: EvalConfig, *, checkpoint: Path, out_dir: Path, data_file: Path | None = None
) -> list[dict[str, Any]]:
    import os

    from trainer.checkpoint import load_export
    from trainer.engine import init_distributed

    dist_info = init_distributed()
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg.save_json(out_dir / "eval_config.json")
    uri = default_tracking_uri(out_dir)
    parent = start_tracker(
        experiment=cfg.experiment, run_name=f"eval-{checkpoint.name}", tracking_uri=uri, enabled=cfg.tracking
    )
    parent.log_params({**cfg.flat(), "checkpoint": str(checkpoint)})
    rows = []
    root = Path(cfg.data_root) if cfg.data_root else None
    jobs = [(None, read_table(data_file))] if data_file else [load_task(t, root) for t in cfg.tasks]
    for task, data in jobs:
        t0 = time.perf_counter()
        model, pre_cfg, tok = load_export(checkpoint)  # fresh weights for every task
        child = start_tracker(
            experiment=cfg.experiment,
            run_name=f"task-{data.name}",
            tracking_uri=uri,
            enabled=cfg.tracking,
            parent_run_id=parent.run_id or os.environ.get(PARENT_ENV),
        )
        parts = split(data, seed=cfg.split_seed)
        child.log_params(
            {
                "task": data.name,
                "n_train": len(parts.train),
                "n_val": len(parts.val),
                "n_test": len(parts.test),
                **{f"sha256.{k}": v for k, v in parts.hashes.items()},
                **cfg.finetune.flat(),
            }
        )
        prob, info = finetune(
            model,
            pre_cfg.family,
            tok,
            cfg.finetune,
            data=data,
            parts=parts,
            species_token=task.species_token if task else "R",
            dist_info=dist_info,
            tracker=child,
        )
        ours = binary_metrics(data.labels[parts.test], prob, seed=cfg.split_seed)
        base_prob = _baseline(data, parts, cfg.split_seed)
        base = binary_metrics(data.labels[parts.test], base_prob, seed=cfg.split_seed)
        child.log_metrics(
            {
                **{f"test/{k}": v["value"] for k, v in ours.items()},
                **{f"baseline/{k}": v["value"] for k, v in base.items()},
            },
            step=0,
        )
        for png in plot_task(data.labels[parts.test], prob, base_prob, out_dir / f"{data.name}"):
            child.log_artifact(png, "plots")
        child.finish()
        row = _row(data.name, ours, base, task, parts.hashes, time.perf_counter() - t0)
        row["n_test"] = len(parts.test)
        rows.append(row)
        (out_dir / f"{data.name}.json").write_text(
            json.dumps({**row, "history": info["history"]}, indent=2) + "\n"
        )
    md, csv_path = write_summary(rows, out_dir)
    parent.log_artifact(md)
    parent.log_artifact(csv_path)
    parent.finish()
    return rows


def _baseline(data: LabelledSet, parts, seed: int):
    train = [data.sequences[i] for i in parts.train]
    test = [data.sequences[i] for i in parts.test]
    return kmer_baseline(train, data.labels[parts.train], test, seed=seed)


def _row(name: str, ours: dict, base: dict, task, hashes: dict, seconds: float) -> dict[str, Any]:
    row: dict[str, Any] = {
        "task": name,
        "n_test": None,
        "test_sha256": hashes["test"][:12],
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
    """summary.md and summary.csv: ours [95% CI], the k-mer baseline and the published figure, metric named."""
    header = (
        ["task"]
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
        cells = [r["task"], *ours, *base, pub, r["test_sha256"]]
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
