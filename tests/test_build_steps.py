"""The named build steps of a pretraining run and of an evaluation, each called on its own."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO, user_env
from tests.helpers import chr20_shards


@pytest.mark.slow
def test_each_pretraining_step_alone(tmp_path, ray_cluster):
    data = chr20_shards(tmp_path / "data", bases=100_000)
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests/scripts/pretrain_steps.py"), str(data), str(tmp_path / "run")],
        cwd=REPO,
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "shards use tokenizer dnagpt-6mer" in got["check_data_error"]
    assert got["fresh_step"] == 0 and got["restore_fresh"] == 0 and got["ds_micro_batch"] == 4
    assert got["run_id"] and got["outcome"] == "completed" and got["saved_steps"] == [2]
    assert (got["resume_tag"], got["resume_step"], got["restored_step"]) == ("step0000002", 2, 2)
    assert (
        got["restored_loader_state"] == got["loader_state"] and got["loader_state"]["samples_consumed"] == 8
    )
    assert got["same_weights_after_restore"] and got["export_equals_engine"]
    assert len((tmp_path / "run/metrics.jsonl").read_text().splitlines()) == 2


def test_scoring_step_alone():
    """eval.run.score: ours and the k-mer baseline on the same test split, each with bootstrap CIs."""
    from eval.datasets import LabelledSet, split
    from eval.run import score

    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACGT"), 40)) for _ in range(200)]
    labels = np.array([int("GGCC" in s) for s in seqs])
    seqs = [s[:10] + ("GGCC" if y else "ATAT") + s[14:] for s, y in zip(seqs, labels, strict=True)]
    data = LabelledSet(name="toy", sequences=seqs, labels=labels)
    parts = split(data, seed=0)
    perfect = np.eye(2)[labels[parts.test]]  # (N_test, 2): a model that is always right
    got = score(data, parts, perfect, seed=0)
    assert got["ours"]["mcc"]["value"] == 1.0 and got["ours"]["mcc"]["lo"] == 1.0
    assert got["baseline_prob"].shape == (len(parts.test), 2)
    assert got["baseline"]["accuracy"]["value"] > 0.9  # the 4-mer counts see GGCC vs ATAT


def test_task_run_step_alone(tmp_path):
    """eval.run.open_task_run: a nested MLflow run carrying what the task was trained and scored on."""
    from mlflow.tracking import MlflowClient

    from eval.datasets import LabelledSet, split
    from eval.run import EvalConfig, Job, open_task_run
    from eval.user_tasks import UserTaskConfig

    data = LabelledSet(name="toy", sequences=["ACGT" * 5] * 20, labels=np.array([0, 1] * 10))
    parts = split(data, seed=3)
    job = Job(data=data, species_token="R", task=None, source="toy set")
    cfg = EvalConfig(tasks=(), user_task=UserTaskConfig(data="toy.csv"), split_seed=3)
    run = open_task_run(job, cfg, parts, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", parent=None)
    run.finish()
    params = MlflowClient(run.tracking_uri).get_run(run.run_id).data.params
    assert params["task"] == "toy" and params["n_test"] == str(len(parts.test))
    assert params["split"] == "drawn, seed 3" and params["sha256.test"] == parts.hashes["test"]


def test_models_load_without_the_training_machinery(tmp_path):
    """trainer.models (architectures + exports) imports no DeepSpeed: eval and users load models cheaply."""
    code = (
        "import sys; from tests.helpers import untrained_export; from pathlib import Path;"
        "from trainer.models.export import load_export;"
        f"m, cfg, tok = load_export(untrained_export('tiny-dnabert', Path({str(tmp_path / 'e')!r})));"
        "print(sorted(k for k in sys.modules if k.split('.')[0] in ('deepspeed', 'ray', 'mlflow')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"
