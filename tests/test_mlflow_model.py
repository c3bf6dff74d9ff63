"""Exported models as MLflow pyfunc models: a folder, a real sqlite store with the model registry, and the
model logged at the end of pretraining."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from datapipe.common.errors import UsageError
from tests.conftest import run_cli
from tests.helpers import chr20_shards, tiny_gpt_args, untrained_export
from trainer.mlflow_model import save_pyfunc
from trainer.models.export import load_export

SEQS = ["ACGTACGGATTACCATGAAGCTTAGGCT", "ttgacaNNACGTAGGA", "GATTACA" * 9]


def our_embeddings(export, seqs):
    """Mean final hidden state over each sequence's k-mer tokens, computed here from the model itself."""
    model, cfg, tok = load_export(export)
    out = []
    with torch.no_grad():
        for s in seqs:
            kmers = torch.from_numpy(np.asarray(tok.encode(s), np.int64))
            if cfg.family == "dnagpt":
                ids = torch.cat(
                    [torch.tensor([tok.token_to_id("<R>")]), kmers, torch.tensor([tok.token_to_id("<=>")])]
                )
            else:
                ids = torch.cat([torch.tensor([tok.cls_id]), kmers, torch.tensor([tok.sep_id])])
            out.append(model(ids[None])[0, 1:-1].mean(0).numpy())
    return np.stack(out)


def eval_probabilities(export, seqs):
    """The class probabilities of the classifier `dnafm eval` fine-tunes, before any fine-tuning."""
    from eval.heads import build_classifier, encode_inputs

    model, cfg, tok = load_export(export)
    clf = build_classifier(cfg.family, model, tok, num_classes=2, probe=False)
    ids, pos = encode_inputs(cfg.family, tok, seqs, species_token="R", max_len=cfg.model.max_seq_len)
    with torch.no_grad():
        return torch.softmax(clf(torch.from_numpy(ids), torch.from_numpy(pos)), -1).numpy()


@pytest.mark.parametrize("recipe", ["tiny-dnagpt", "tiny-dnabert"])
def test_folder_model_gives_our_embeddings_and_evals_probabilities(tmp_path, recipe):
    export = untrained_export(recipe, tmp_path / "exp")
    save_pyfunc(export, tmp_path / "model")
    model = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    df = pd.DataFrame({"sequence": SEQS})
    emb = model.predict(df)
    want = our_embeddings(export, SEQS)
    assert list(emb.columns[:2]) == ["emb_0", "emb_1"] and emb.shape == want.shape == (
        3,
        128 if "gpt" in recipe else 64,
    )
    np.testing.assert_allclose(emb.to_numpy(), want, rtol=1e-4, atol=1e-5)
    prob = model.predict(df, params={"output": "probabilities", "batch_size": 2})
    assert list(prob.columns) == ["prob_0", "prob_1"]
    np.testing.assert_allclose(prob.to_numpy(), eval_probabilities(export, SEQS), rtol=1e-4, atol=1e-5)


def test_too_long_sequences_name_their_row_unless_cropped(tmp_path):
    export = untrained_export("tiny-dnagpt", tmp_path / "exp")  # 128 tokens: 126 6-mers fit
    save_pyfunc(export, tmp_path / "model")
    model = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    df = pd.DataFrame({"sequence": ["ACGT" * 10, "A" * 800]})
    with pytest.raises(UsageError, match="row 1: 800 bases, more than the 756"):
        model.predict(df)
    assert model.predict(df, params={"crop": True}).shape == (2, 128)
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"missing inputs \['sequence'\]"):
        model.predict(pd.DataFrame({"seq": ["ACGT"]}))  # the signature's input schema


def test_export_cli_logs_and_registers_in_a_sqlite_store(tmp_path):
    export = untrained_export("tiny-dnagpt", tmp_path / "exp")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_cli(
        "export",
        "--checkpoint",
        str(export),
        "--out",
        str(tmp_path / "model"),
        "--format",
        "mlflow",
        "--output",
        "probabilities",
        "--tracking-uri",
        uri,
        "--registered-model",
        "dna-tiny",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "models:/dna-tiny/1" in proc.stdout
    df = pd.DataFrame({"sequence": SEQS})
    want = eval_probabilities(export, SEQS)
    np.testing.assert_allclose(mlflow.pyfunc.load_model(str(tmp_path / "model")).predict(df), want, rtol=1e-4)
    mlflow.set_tracking_uri(uri)
    try:
        registered = mlflow.pyfunc.load_model("models:/dna-tiny/1")
        np.testing.assert_allclose(registered.predict(df).to_numpy(), want, rtol=1e-4, atol=1e-5)
        run_uri = proc.stdout.split("(")[-1].split(")")[0]  # "runs:/<id>/model"
        assert run_uri.startswith("runs:/")
        np.testing.assert_allclose(mlflow.pyfunc.load_model(run_uri).predict(df).to_numpy(), want, rtol=1e-4)
    finally:
        mlflow.set_tracking_uri(None)
    # without a store there is nothing to register in
    proc = run_cli(
        "export", "--checkpoint", str(export), "--out", str(tmp_path / "m2"), "--format", "mlflow",
        "--registered-model", "x",
    )  # fmt: skip
    assert proc.returncode == 1 and "--registered-model needs an MLflow store" in proc.stderr


@pytest.mark.slow
def test_pretraining_logs_its_final_model_and_export_logs_into_the_run(tmp_path):
    data = chr20_shards(tmp_path / "data", bases=60_000)
    run = tmp_path / "run"
    args = [a for a in tiny_gpt_args(num_workers=0) if a != "--no-mlflow"]
    proc = run_cli(
        "pretrain", *args, "--data", str(data), "--out", str(run), "--steps", "2",
        "--set", "tracking.log_model=true", "--set", "tracking.registered_model=tiny-pretrained",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    uri = f"sqlite:///{run / 'mlflow.db'}"
    client = mlflow.tracking.MlflowClient(uri)
    state = json.loads((run / "checkpoints" / "step0000002" / "dnafm_state.json").read_text())
    pretrain_run = client.get_run(state["mlflow_run_id"])
    assert pretrain_run.info.status == "FINISHED"
    assert pretrain_run.data.tags["model_uri"] == "models:/tiny-pretrained/1"
    df = pd.DataFrame({"sequence": SEQS})
    want = our_embeddings(run / "final", SEQS)
    mlflow.set_tracking_uri(uri)
    try:
        got = mlflow.pyfunc.load_model("models:/tiny-pretrained/1").predict(df)
        np.testing.assert_allclose(got.to_numpy(), want, rtol=1e-4, atol=1e-5)
        # `dnafm export --format mlflow` of the run: into the same MLflow run, in the run's own store
        proc = run_cli("export", "--checkpoint", str(run), "--out", str(tmp_path / "m"), "--format", "mlflow",
                       "--registered-model", "tiny-pretrained")  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"runs:/{pretrain_run.info.run_id}/model" in proc.stdout
        again = mlflow.pyfunc.load_model("models:/tiny-pretrained/2").predict(df)
        np.testing.assert_allclose(again.to_numpy(), want, rtol=1e-4, atol=1e-5)
        # its final/ export finds the same run through provenance.json, with no store named
        proc = run_cli("export", "--checkpoint", str(run / "final"), "--out", str(tmp_path / "m3"),
                       "--format", "mlflow")  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"runs:/{pretrain_run.info.run_id}/model" in proc.stdout
    finally:
        mlflow.set_tracking_uri(None)
