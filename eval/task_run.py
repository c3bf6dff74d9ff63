"""The nested MLflow run of one task of `dnafm eval`, for classification (``eval.run``) and regression
(``eval.run_regression``) alike: the params every task logs, plus the kind's own."""

from __future__ import annotations

import os
from typing import Any

from datapipe.common.tracking import PARENT_ENV, Tracker, experiment_name, start_tracker


def start_task_run(
    job: Any,
    cfg: Any,
    parts: Any,
    *,
    tracking_uri: str,
    parent: str | None,
    tags: dict | None,
    params: dict[str, Any],
) -> Tracker:
    """The task's MLflow run, nested under ``parent`` (else the one named by ``PARENT_ENV``), with
    what it was trained and scored on as params. ``job``: an ``eval.run.Job``; ``cfg``: its EvalConfig;
    ``parts``: the split (train / val / test indexes and their hashes); ``params``: the kind's own."""
    data = job.data
    child = start_tracker(
        experiment=experiment_name(cfg.experiment, "dnafm-eval"),
        run_name=f"task-{data.name}",
        tracking_uri=tracking_uri,
        enabled=cfg.tracking,
        parent_run_id=parent or os.environ.get(PARENT_ENV),
        stage="eval-task",
        tags=tags,
    )
    child.log_params(
        {
            "task": data.name,
            "source": job.source,
            **params,
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
