"""End to end: `dnafm demo --quick` with a real Ray instance, a DeepSpeed engine and an MLflow store."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from datapipe.shards.manifest import verify
from trainer.models.export import load_export

pytestmark = pytest.mark.slow


def test_demo_prepares_verifiable_shards(demo_run):
    manifest = json.loads((demo_run / "shards" / "manifest.json").read_text())
    assert manifest["tokenizer"] == "dnagpt-6mer" and manifest["totals"]["samples"] > 1000
    assert manifest["tokens_per_species"] == {"human": manifest["totals"]["tokens"]}
    assert sum(manifest["gc_histogram"]["counts"]) == manifest["totals"]["samples"]
    assert all(len(s["sha256"]) == 64 for s in manifest["shards"])
    assert verify(demo_run / "shards") == []


def test_demo_pretraining_loss_falls_and_exports(demo_run):
    metrics = [
        json.loads(line) for line in (demo_run / "pretrain" / "metrics.jsonl").read_text().splitlines()
    ]
    assert metrics[-1]["step"] == 20
    assert metrics[-1]["train/loss"] < metrics[0]["train/loss"] - 1.0
    assert (demo_run / "pretrain" / "checkpoints" / "latest").read_text().strip() == "step0000020"
    state = load_file(str(demo_run / "pretrain" / "final" / "model.safetensors"))
    assert "wte.weight" in state
    model, cfg, tok = load_export(demo_run / "pretrain")
    assert cfg.recipe == "tiny-dnagpt" and tok.name == "dnagpt-6mer"


def test_demo_eval_reports_with_metrics_named(demo_run):
    summary = (demo_run / "eval" / "summary.md").read_text()
    assert "mcc (dnafm)" in summary and "mcc (4-mer LR)" in summary and "pas-human" in summary
    row = json.loads((demo_run / "eval" / "pas-human.json").read_text())
    assert 0.0 <= row["accuracy"] <= 1.0 and row["n_test"] == 1508


def test_demo_logs_every_stage_to_one_mlflow_experiment_linked(demo_run):
    """One experiment (tagged for MLflow's runs view), the stages nested under the demo run, and linked: the
    pretraining run names its prepare run, the eval run its pretraining run."""
    client = MlflowClient(tracking_uri=f"sqlite:///{demo_run / 'mlflow.db'}")
    # MLflow makes its own empty 'Default' experiment in every store: nothing of ours may land there
    assert sorted(e.name for e in client.search_experiments()) == ["Default", "dnafm-demo"]
    assert not client.search_runs([client.get_experiment_by_name("Default").experiment_id])
    exp = client.get_experiment_by_name("dnafm-demo")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs: dict[str, list] = {}
    for r in client.search_runs([exp.experiment_id]):
        runs.setdefault(r.data.tags.get("dnafm.stage"), []).append(r)
    assert sorted(runs) == ["demo", "eval", "eval-task", "prepare", "pretrain"]
    parent = runs["demo"][0].info.run_id
    for stage in ("prepare", "pretrain", "eval"):
        assert runs[stage][0].data.tags["mlflow.parentRunId"] == parent
    pretrain = runs["pretrain"][0]
    assert pretrain.data.params["model.d_model"] == "128"
    assert pretrain.data.tags["dnafm.prepare_run_id"] == runs["prepare"][0].info.run_id
    assert pretrain.data.params["data.prepare_run_id"] == runs["prepare"][0].info.run_id
    totals = json.loads((demo_run / "shards" / "manifest.json").read_text())["totals"]
    assert pretrain.data.params["data.samples"] == str(totals["samples"])
    assert pretrain.data.params["data.tokens"] == str(totals["tokens"])
    assert {
        "train/loss",
        "train/loss_lm",
        "train/loss_order",
        "train/loss_gc",
        "train/lr",
        "train/grad_norm",
        "train/tokens_per_s",
        "train/tokens_seen",
        "train/skipped_steps",
    } <= set(pretrain.data.metrics)
    assert any(k.startswith("system/cpu") for k in pretrain.data.metrics), sorted(pretrain.data.metrics)
    assert pretrain.data.tags["checkpoint"].endswith("step0000020")
    evaluation, task = runs["eval"][0], runs["eval-task"][0]
    assert evaluation.data.tags["dnafm.pretrain_run_id"] == pretrain.info.run_id
    assert (
        evaluation.data.params["pretrain.step"] == "20"
        and evaluation.data.params["pretrain.recipe"] == "tiny-dnagpt"
    )
    assert task.data.tags["mlflow.parentRunId"] == evaluation.info.run_id
    for key in ("eval/pas-human/mcc", "eval/pas-human/mcc_lo", "eval/pas-human/scratch/mcc",
                "eval/pas-human/mcc_gain_vs_scratch", "eval/pas-human/kmer/mcc"):  # fmt: skip
        assert key in task.data.metrics and key in evaluation.data.metrics, key
    stdout = (demo_run / "demo.stdout").read_text()
    assert "dnafm demo: summary" in stdout and "mlflow ui --backend-store-uri sqlite:///" in stdout
    assert "no pretraining: MCC" in stdout
