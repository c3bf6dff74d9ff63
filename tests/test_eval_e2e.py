"""`dnafm eval` end to end on tiny untrained checkpoints (linear probe): binary pas-human on DNABERT with plots and
nested MLflow runs. The 3-class splice-human outputs are checked by `check_splice_outputs`, on the probe run of
tests/test_eval_learning.py (one eval instead of two)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from sklearn.metrics import matthews_corrcoef

from eval.metrics import paired_difference, predicted_class
from eval.tasks import load_task
from tests.helpers import PROBE_ONE_EPOCH, run_eval_cli, untrained_export

pytestmark = pytest.mark.slow
QUICK_PROBE = [*PROBE_ONE_EPOCH, "--set", "finetune.max_train_samples=200"]


def test_eval_probe_on_a_dnabert_checkpoint(tmp_path):
    untrained_export("tiny-dnabert", tmp_path / "ckpt")  # the plumbing is under test, not the score
    out = tmp_path / "eval"
    run_eval_cli(tmp_path / "ckpt", out, "--tasks", "pas-human", *QUICK_PROBE, "--save-model")
    row = json.loads((out / "pas-human.json").read_text())
    assert row["n_test"] == 1508 and 0 <= row["auroc"] <= 1
    # --save-model: the probed classifier, its LinearProbe with the BatchNorm statistics of the training features
    from eval.saved_model import load_checkpoint

    saved = load_checkpoint(out / "models" / "pas-human")
    assert (
        saved.info["mode"] == "probe" and saved.info["num_classes"] == 2 and saved.info["sequence_bp"] == 606
    )
    norm, linear = saved.classifier.probe
    assert int(norm.num_batches_tracked) > 0 and float(norm.running_var.mean()) != 1.0
    assert linear.out_features == 2
    assert (out / "pas-human_confusion.png").stat().st_size > 1000 and (out / "pas-human_roc.png").exists()
    assert "auroc (dnafm)" in (out / "summary.csv").read_text()
    with open(out / "pas-human_predictions.tsv") as f:  # no scratch baseline asked for: no scratch columns
        assert next(f).split() == ["example", "label", "dnafm_p0", "dnafm_p1", "kmer_p0", "kmer_p1"]
        rows = [line.split("\t") for line in f]
    assert len(rows) == 1508
    _, data = load_task("pas-human", None)  # `example` is the row of the shipped set, `label` its class id
    assert all(int(r[1]) == data.labels[int(r[0])] for r in rows)
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


def check_splice_outputs(out, row: dict) -> None:
    """What one `dnafm eval --tasks splice-human` (MLflow on) writes for a 3-class task: the row, predictions,
    summary.csv, plots and the nested MLflow run. Called by tests/test_eval_learning.py on the run that also
    shows the probe learns (one eval serves both). The scratch columns and the paired gain of the predictions
    file are checked on test_compare.py's evals, which ask for that baseline anyway. ``row``: splice-human.json."""
    check_predictions_file(out / "splice-human_predictions.tsv", row)
    assert row["n_classes"] == 3 and row["classes"] == ["non-splice", "donor", "acceptor"]
    assert row["averaging"] == "macro over 3 classes; AUROC one-vs-rest" and row["n_test"] == 1500
    assert 0 <= row["auroc"] <= 1 and row["auroc_ci"][0] <= row["auroc"] <= row["auroc_ci"][1]
    assert row["published"]["mcc"] == 0.871 and "macro" in row["published_note"]
    with open(out / "summary.csv") as f:
        header, cells = list(csv.reader(f))
    summary = dict(zip(header, cells, strict=True))
    assert summary["classes"] == "3" and summary["averaging"].startswith("macro over 3 classes")
    assert summary["mcc (dnafm)"].startswith(f"{row['mcc']:.4f}")
    for png in ("confusion", "roc"):
        assert (out / f"splice-human_{png}.png").stat().st_size > 5000
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("dnafm-eval").experiment_id
    child = {r.info.run_name: r for r in client.search_runs([exp])}["task-splice-human"]
    assert child.data.params["n_classes"] == "3" and child.data.params["averaging"].startswith("macro")
    assert child.data.metrics["eval/splice-human/mcc"] == pytest.approx(row["mcc"])
    assert child.data.metrics["eval/splice-human/mcc_lo"] == pytest.approx(row["mcc_ci"][0])
    assert len(client.list_artifacts(child.info.run_id, "plots")) == 2


def check_predictions_file(path, row):
    """<task>_predictions.tsv holds the test set's probabilities of every model: the file alone gives back the
    MCCs and the paired gain of <task>.json (what bench/bench_transfer.py relies on to pair two evals)."""
    table = np.genfromtxt(path, delimiter="\t", names=True)
    c = row["n_classes"]
    assert len(table) == row["n_test"] and len(set(table["example"].tolist())) == row["n_test"]
    y = table["label"].astype(int)
    present = ("dnafm", "kmer", "scratch") if "scratch_mcc" in row else ("dnafm", "kmer")
    assert [n for n in table.dtype.names if n.endswith("_p0")] == [f"{who}_p0" for who in present]
    probs = {who: np.stack([table[f"{who}_p{k}"] for k in range(c)], axis=1) for who in present}
    for who, prob in probs.items():
        assert np.allclose(prob.sum(axis=1), 1, atol=1e-4), who
    assert matthews_corrcoef(y, predicted_class(probs["dnafm"])) == pytest.approx(row["mcc"], abs=1e-6)
    assert matthews_corrcoef(y, predicted_class(probs["kmer"])) == pytest.approx(
        row["baseline_mcc"], abs=1e-6
    )
    if "scratch" not in probs:
        return
    assert matthews_corrcoef(y, predicted_class(probs["scratch"])) == pytest.approx(
        row["scratch_mcc"], abs=1e-6
    )
    gain = paired_difference(y, probs["dnafm"], probs["scratch"], seed=0)  # eval's bootstrap, split_seed 0
    assert [gain["value"], gain["lo"], gain["hi"]] == pytest.approx(
        [row["mcc_gain_vs_scratch"], *row["mcc_gain_vs_scratch_ci"]], abs=1e-6
    )
