"""`dnafm eval` on a DNABERT checkpoint (linear probe), with plots and nested MLflow runs."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from datapipe.tokenizers import get_tokenizer
from tests.conftest import run_cli
from trainer.checkpoint import export_model
from trainer.families import bare_model
from trainer.recipes import get_recipe

pytestmark = pytest.mark.slow


def test_eval_probe_on_a_dnabert_checkpoint(tmp_path):
    cfg = get_recipe("tiny-dnabert")
    # An untrained checkpoint in the export layout: the plumbing is under test here, not the score.
    export_model(
        bare_model(cfg).state_dict(),
        tmp_path / "ckpt",
        config=cfg.to_dict(),
        tokenizer=get_tokenizer(cfg.tokenizer),
    )
    out = tmp_path / "eval"
    proc = run_cli(
        "eval",
        "--checkpoint",
        str(tmp_path / "ckpt"),
        "--out",
        str(out),
        "--tasks",
        "pas-human",
        "--set",
        "finetune.mode=probe",
        "--set",
        "finetune.epochs=1",
        "--set",
        "finetune.max_train_samples=200",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    row = json.loads((out / "pas-human.json").read_text())
    assert row["n_test"] == 1508 and 0 <= row["auroc"] <= 1
    assert (out / "pas-human_confusion.png").stat().st_size > 1000 and (out / "pas-human_roc.png").exists()
    assert "auroc (dnafm)" in (out / "summary.csv").read_text()
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = {
        r.info.run_name: r
        for r in client.search_runs([client.get_experiment_by_name("dnafm-eval").experiment_id])
    }
    child = runs["task-pas-human"]
    assert child.data.params["mode"] == "probe" and len(child.data.params["sha256.test"]) == 64
    assert {a.path for a in client.list_artifacts(child.info.run_id, "plots")} == {
        "plots/pas-human_confusion.png",
        "plots/pas-human_roc.png",
    }
