"""One regression set in `dnafm eval`: fine-tune, score against the ridge baseline (and the scratch twin when
asked for), the scatter plot, ``<task>.json`` + ``<task>_predictions.tsv``, one nested MLflow run. The
classification counterpart is ``eval.run.evaluate_job``, which hands regression jobs to this module."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from datapipe.common.files import write_atomic
from datapipe.common.tracking import Tracker
from eval.plots import plot_regression
from eval.regress_finetune import finetune_regression
from eval.regression import (
    RegressionSet,
    paired_r2_difference,
    regression_metrics,
    ridge_baseline,
    split_regression,
)
from eval.report import mlflow_metrics, regression_row
from eval.task_run import start_task_run


def open_regression_run(
    job, cfg, parts, *, tracking_uri: str, parent: str | None, tags: dict | None
) -> Tracker:
    """The task's MLflow run, nested under ``parent``, with what it was trained and scored on as params."""
    data: RegressionSet = job.data
    params = {
        "kind": "regression",
        "target": data.target,
        "n_features": data.num_features,
        "features": ",".join(data.feature_names) or "none",
        **{f"skipped.{k}": v for k, v in data.skipped.items()},
    }
    return start_task_run(job, cfg, parts, tracking_uri=tracking_uri, parent=parent, tags=tags, params=params)


def score_regression(
    data: RegressionSet, parts, pred: np.ndarray, seed: int, scratch: np.ndarray | None = None
) -> dict[str, Any]:
    """Test metrics with bootstrap CIs of ours, of the ridge baseline and (given) of the scratch twin; paired
    r^2 differences of ours against each."""
    y = data.values[parts.test]
    feats = data.features
    base = ridge_baseline(
        [data.sequences[i] for i in parts.train],
        data.values[parts.train],
        [data.sequences[i] for i in parts.test],
        train_features=None if feats is None else feats[parts.train],
        test_features=None if feats is None else feats[parts.test],
    )
    out = {
        "ours": regression_metrics(y, pred, seed=seed),
        "baseline": regression_metrics(y, base, seed=seed),
        "baseline_pred": base,
        "gain_vs_kmer": paired_r2_difference(y, pred, base, seed=seed),
    }
    if scratch is not None:
        out["scratch"] = regression_metrics(y, scratch, seed=seed)
        out["gain_vs_scratch"] = paired_r2_difference(y, pred, scratch, seed=seed)
    return out


def evaluate_regression_job(
    job, cfg, *, checkpoint: Path, out_dir: Path, dist_info: Any, tracking_uri: str, parent: str | None
) -> dict[str, Any]:
    from eval.run import _links, _random_twin
    from trainer.models.export import load_export, read_provenance

    t0 = time.perf_counter()
    data: RegressionSet = job.data
    model, pre_cfg, tok = load_export(checkpoint)
    parts = split_regression(data, seed=cfg.split_seed)
    child = open_regression_run(job, cfg, parts, tracking_uri=tracking_uri, parent=parent,
                                tags=_links(read_provenance(checkpoint)))  # fmt: skip
    tune = dict(family=pre_cfg.family, tok=tok, cfg=cfg.finetune, data=data, parts=parts,
                species_token=job.species_token, dist_info=dist_info, tracker=child,
                prefix=f"eval/{data.name}/")  # fmt: skip
    pred, info = finetune_regression(model, **tune)
    scratch = None
    if "scratch" in cfg.baselines:
        twin = _random_twin(pre_cfg, cfg.finetune.seed)
        scratch, _ = finetune_regression(twin, **{**tune, "prefix": f"eval/{data.name}/scratch/"})
    scores = score_regression(data, parts, pred, cfg.split_seed, scratch=scratch)
    y = data.values[parts.test]
    for png in plot_regression(y, pred, scores["baseline_pred"], out_dir / data.name, target=data.target):
        child.log_artifact(png, "plots")
    row = regression_row(data, scores, job, parts, time.perf_counter() - t0, info)
    child.log_metrics(mlflow_metrics(row), step=0)
    ids = data.ids or tuple(str(i) for i in range(len(data.values)))
    lines = ["id\tactual\tpredicted\tridge\n"] + [
        f"{ids[i]}\t{float(a):.6g}\t{float(p):.6g}\t{float(b):.6g}\n"
        for i, a, p, b in zip(parts.test, y, pred, scores["baseline_pred"], strict=True)
    ]
    predictions = out_dir / f"{data.name}_predictions.tsv"
    write_atomic(predictions, "".join(lines).encode())
    child.log_artifact(predictions)
    child.finish()
    (out_dir / f"{data.name}.json").write_text(
        json.dumps({**row, "history": info["history"]}, indent=2) + "\n"
    )
    return row
