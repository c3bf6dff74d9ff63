"""`dnafm compare` on real MLflow stores (the session's `mlflow server`, a sqlite file): three tiny pretraining runs
that differ in learning rate and depth, each evaluated, joined and reported; the report rendered in headless
Chromium; one clear error per bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from tests.conftest import run_cli
from tests.helpers import PROBE_ONE_EPOCH, tiny_gpt_args
from tests.test_eval_e2e import check_predictions_file

pytestmark = pytest.mark.slow
VARIANTS = {
    "lr1e-3": ["optim.lr=1e-3"],
    "lr3e-3": ["optim.lr=3e-3"],
    "depth1": ["optim.lr=1e-3", "model.n_layer=1"],
}
QUICK_EVAL = [*PROBE_ONE_EPOCH, "--set", "finetune.max_train_samples=200", "--set", "baselines=kmer,scratch"]


def pretrain_and_eval(data: Path, root: Path, name: str, sets: list[str], env: dict[str, str]) -> None:
    args = [a for a in tiny_gpt_args(num_workers=0) if a != "--no-mlflow"]
    sets_args = [x for s in sets for x in ("--set", s)]
    proc = run_cli("pretrain", *args, *sets_args, "--data", str(data), "--out", str(root / name), "--steps", "6",
                   "--experiment", "proj", env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli("eval", "--checkpoint", str(root / name), "--out", str(root / f"eval-{name}"), "--tasks",
                   "pas-human", *QUICK_EVAL, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def store(tmp_path_factory, mlflow_server, ray_cluster):
    """The session's MLflow server (what a team compares on) holding, in experiment proj, a prepare run, three
    pretraining runs and their evaluations. The prepare joins the session's Ray instance rather than starting
    its own; a sqlite store is read by `test_runs_without_an_evaluation_are_one_clear_error`."""
    root = tmp_path_factory.mktemp("compare")
    env = {"MLFLOW_TRACKING_URI": mlflow_server}
    genome = Path(__file__).resolve().parents[1] / "data/genomes/grch37_chr20_44-46Mb.fa.gz"
    proc = run_cli("prepare", str(genome), "--species", "human", "--window-tokens", "60", "--set", "region_bp=500000",
                   "--out", str(root / "shards"), "--experiment", "proj", "--ray-address", ray_cluster,
                   env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, sets in VARIANTS.items():
        pretrain_and_eval(root / "shards", root, name, sets, env)
    return root, mlflow_server


def test_compare_joins_runs_to_their_evals_and_reports_what_differs(store, tmp_path):
    root, uri = store
    proc = run_cli(
        "compare", "--experiment", "proj", "--out", str(tmp_path / "report"), env={"MLFLOW_TRACKING_URI": uri}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import pandas as pd

    table = pd.read_csv(tmp_path / "report/table.csv")
    assert len(table) == 3
    assert sorted(c for c in table.columns if c.startswith("param.")) == [
        "param.model.n_layer", "param.num_params", "param.optim.lr"]  # fmt: skip
    for i in range(3):
        lo, v, hi = (table.at[i, f"eval/pas-human/mcc{s}"] for s in ("_lo", "", "_hi"))
        assert lo <= v <= hi
        assert np.isfinite(table.at[i, "eval/pas-human/mcc_gain_vs_scratch"])
        assert table.at[i, "train/loss:best"] <= table.at[i, "train/loss"] and table.at[i, "steps"] == 6
    for png in ("loss_vs_step", "loss_vs_tokens_seen", "task_pas-human"):
        image = matplotlib.image.imread(tmp_path / f"report/{png}.png")
        assert image.ndim == 3 and image.shape[0] > 200 and image.std() > 0.05  # a real picture, not blank
    for name in VARIANTS:  # each eval's predictions file gives back its MCCs and the paired gain over scratch
        out = root / f"eval-{name}"
        check_predictions_file(
            out / "pas-human_predictions.tsv", json.loads((out / "pas-human.json").read_text())
        )
    html = (tmp_path / "report/report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "Task pas-human" in html
    assert "optim.lr" in (tmp_path / "report/report.md").read_text()
    assert "pas-human MCC" in proc.stdout


def test_links_between_stages_are_recorded(store):
    from mlflow.tracking import MlflowClient

    root, uri = store
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("proj")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    prepare_id = json.loads((root / "shards/mlflow_run.json").read_text())["run_id"]
    pretrain = client.search_runs([exp.experiment_id], "tags.`dnafm.stage` = 'pretrain'")
    evals = client.search_runs([exp.experiment_id], "tags.`dnafm.stage` = 'eval'")
    assert len(pretrain) == 3 and len(evals) == 3
    assert {r.data.params["data.prepare_run_id"] for r in pretrain} == {prepare_id}
    assert {r.data.tags["dnafm.pretrain_run_id"] for r in evals} == {r.info.run_id for r in pretrain}
    one = next(r for r in pretrain if r.info.run_name.endswith("-lr3e-3"))
    provenance = json.loads((root / "lr3e-3/final/provenance.json").read_text())
    assert (
        provenance["run_id"] == one.info.run_id and provenance["step"] == 6 and provenance["tokens_seen"] > 0
    )


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    apt = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"], capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    return shutil.which("chromium") if apt.returncode == 0 else None


def test_report_html_renders_its_tables_in_headless_chromium(store, tmp_path):
    root, uri = store
    assert (
        run_cli("compare", "--tracking-uri", uri, "--out", str(tmp_path / "r"), "--no-mlflow").returncode == 0
    )
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Debian's chromium is not installed and apt-get could not install it")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1000", "--virtual-time-budget=5000",
         f"--screenshot={shot}", (tmp_path / "r/report.html").as_uri()],
        capture_output=True, timeout=120,
    )  # fmt: skip
    image = matplotlib.image.imread(shot)[..., :3]  # (H, W, 3) in [0, 1]
    top = image[: image.shape[0] // 3]  # the title and the first tables
    assert (top.mean(axis=2) < 0.5).mean() > 0.01, "nothing dark at the top: the tables did not render"
    header_blue = (np.abs(top - np.array([0xEE, 0xEE, 0xFF]) / 255).sum(axis=2) < 0.02).mean()
    assert header_blue > 0.005, "no table header cells in the screenshot"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--experiment", "nope"], "no MLflow experiment 'nope' in this store"),
        (["--filter", "params.x ==== 3"], "MLflow rejects it"),
        (["--filter", "params.`optim.lr` = '9'"], "no pretraining runs match"),
        (["--runs", "0123456789abcdef0123456789abcdef"], "is not in this MLflow store"),
        (["--tracking-uri", "http://127.0.0.1:1"], "does not answer"),
    ],
)
def test_bad_selections_are_one_line_and_write_nothing(store, tmp_path, args, message):
    root, uri = store
    proc = run_cli("compare", "--tracking-uri", uri, *args, "--out", str(tmp_path / "r"))
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and last.startswith("dnafm compare: error:") and message in last, proc.stderr[
        -2000:
    ]
    assert not (tmp_path / "r").exists()


def test_runs_without_an_evaluation_are_one_clear_error(store, tmp_path):
    root, _ = store
    # a local sqlite store this time: compare reads both kinds
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    args = [a for a in tiny_gpt_args(num_workers=0) if a != "--no-mlflow"]
    proc = run_cli("pretrain", *args, "--data", str(root / "shards"), "--out", str(tmp_path / "lonely"), "--steps",
                   "2", "--experiment", "lonely", env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli("compare", "--experiment", "lonely", "--out", str(tmp_path / "r"), env=env)
    assert proc.returncode == 1 and "has an evaluation" in proc.stderr and not (tmp_path / "r").exists()
