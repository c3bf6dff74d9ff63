"""`dnafm eval` on regression sets end to end, on tiny untrained checkpoints (the plumbing is under test, not the
score): DNAGPT on chr20 expression built from the public files with numeric features (the number-slot prompt,
10.5-kb inputs read as pooled windows), DNABERT on a user's value table, and a classification and a regression
task in one report with nested MLflow runs."""

from __future__ import annotations

import csv
import gzip
import json

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.helpers import DATA_ROOT, needs_data, run_eval_cli, untrained_export

pytestmark = pytest.mark.slow
BED = DATA_ROOT / "expression/hg19_promoters_cage_corrected_withChr.bed.gz"
TABLE = DATA_ROOT / "expression/1to1_orthologs_expression.txt.gz"
GENOME = DATA_ROOT / "genomes/GRCh37_chr20.fa.gz"
needs_expression = needs_data(
    "expression/hg19_promoters_cage_corrected_withChr.bed.gz",
    "expression/1to1_orthologs_expression.txt.gz",
    "genomes/GRCh37_chr20.fa.gz",
)


def _runs(out) -> dict:
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("dnafm-eval").experiment_id
    return client, {r.info.run_name: r for r in client.search_runs([exp])}


@needs_expression
def test_dnagpt_expression_with_features_through_number_slots(tmp_path):
    with gzip.open(TABLE, "rt") as f:
        human = {c[0]: float(c[4]) for c in (line.rstrip("\n").split("\t") for line in f)}
    rng = np.random.default_rng(0)
    feats = tmp_path / "features.tsv"
    feats.write_text("gene\tdecoy\tnoise\n" + "".join(
        f"{g}\t{v + rng.normal(scale=0.1):.4f}\t{rng.normal():.4f}\n" for g, v in sorted(human.items())
    ))  # fmt: skip
    ckpt = untrained_export("tiny-dnagpt", tmp_path / "ckpt")
    out = tmp_path / "eval"
    run_eval_cli(ckpt, out, "--build", "expression", "--genome", str(GENOME), "--promoters", str(BED),
                 "--expression", str(TABLE), "--expression-column", "5", "--features", str(feats),
                 "--chrom", "20", "--max-examples", "40", "--set", "finetune.epochs=2",
                 "--set", "finetune.micro_batch_size=8")  # fmt: skip
    name = "expression-1to1_orthologs_expression"
    row = json.loads((out / f"{name}.json").read_text())
    assert row["kind"] == "regression" and row["features"] == ["decoy", "noise"] and row["n_test"] == 10
    assert row["skipped"] == {"no target in the table": 57, "over max_examples": 420}
    # 1,750 tokens, 128-token context less 6 prompt tokens: 19 windows at overlap 0.25, mean-pooled
    assert row["window_pool"] == "mean" and row["windows_per_example"] == 19.0
    for m in ("r2", "spearman", "mse"):
        assert row[f"{m}_ci"][0] <= row[m] <= row[f"{m}_ci"][1]
    assert 1 <= len(row["history"]) <= 2 and row["baseline_r2_ci"][0] <= row["baseline_r2"]
    preds = (out / f"{name}_predictions.tsv").read_text().splitlines()
    assert preds[0] == "id\tactual\tpredicted\tridge" and len(preds) == 11
    gene, actual = preds[1].split("\t")[:2]
    assert float(actual) == pytest.approx(human[gene], abs=1e-5)
    assert (out / f"{name}_scatter.png").stat().st_size > 5000
    client, runs = _runs(out)
    child, parent = runs[f"task-{name}"], runs["eval-ckpt"]
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.data.params["kind"] == "regression" and child.data.params["n_features"] == "2"
    assert child.data.params["skipped.no target in the table"] == "57"
    assert parent.data.metrics[f"eval/{name}/r2"] == pytest.approx(row["r2"])
    assert parent.data.metrics[f"eval/{name}/kmer/r2_lo"] == pytest.approx(row["baseline_r2_ci"][0])
    assert f"eval/{name}/val_r2" in child.data.metrics
    assert {a.path for a in client.list_artifacts(child.info.run_id, "plots")} == {
        f"plots/{name}_scatter.png"
    }


def test_dnabert_on_a_value_table_with_max_pooled_windows(tmp_path):
    rng = np.random.default_rng(1)
    rows = ["sequence\tvalue\tfeature_len"]
    for _ in range(60):
        g = rng.uniform(0.3, 0.7)
        s = "".join(rng.choice(list("ACGT"), 300, p=[(1 - g) / 2, g / 2, g / 2, (1 - g) / 2]))
        rows.append(f"{s}\t{(s.count('G') + s.count('C')) / 300:.4f}\t{rng.normal():.3f}")
    data = tmp_path / "gc.tsv"
    data.write_text("\n".join(rows) + "\n")
    ckpt = untrained_export("tiny-dnabert", tmp_path / "ckpt")
    out = tmp_path / "eval"
    run_eval_cli(ckpt, out, "--data", str(data), "--set", "finetune.window_pool=max",
                 "--set", "finetune.window_overlap=0.5", "--set", "finetune.epochs=2", "--no-mlflow")  # fmt: skip
    row = json.loads((out / "gc.tsv.json").read_text())
    # 295 overlapping 6-mers, 126 per window, stride 63: windows at 0, 63, 126, 169
    assert row["window_pool"] == "max" and row["windows_per_example"] == 4.0 and row["n_features"] == 1
    assert row["published_note"] == "user data: no published figure" and row["n_test"] == 15
    assert row["baseline_r2"] > 0.8  # GC content is a linear function of the 4-mer counts
    md = (out / "summary.md").read_text()
    assert "r2 (dnafm)" in md and "gc.tsv" in md and "max pooled" in md


@needs_data("genomes/GRCh37_chr20.fa.gz", "expression/1to1_orthologs_expression.txt.gz")
def test_classification_and_regression_rows_in_one_report(tmp_path):
    ckpt = untrained_export("tiny-dnagpt", tmp_path / "ckpt")
    out = tmp_path / "eval"
    run_eval_cli(ckpt, out, "--tasks", "pas-human,expression-human", "--set", "finetune.mode=probe",
                 "--set", "finetune.epochs=1", "--set", "finetune.max_train_samples=60")  # fmt: skip
    reg = json.loads((out / "expression-human.json").read_text())
    assert reg["published"] == {"r2": 0.62} and "Xpresso 0.59" in reg["published_note"]
    assert reg["n_test"] == 115 and reg["skipped"] == {"no target in the table": 57}
    with open(out / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["task"] for r in table] == ["pas-human", "expression-human"]
    assert table[0]["mcc (dnafm)"] and not table[0]["r2 (dnafm)"]
    assert table[1]["r2 (dnafm)"].startswith(f"{reg['r2']:.4f}") and not table[1]["mcc (dnafm)"]
    md = (out / "summary.md").read_text()
    assert (
        md.index("| pas-human |")
        < md.index("Regression (r2 = squared Pearson r")
        < md.index("| expression-human |")
    )
    assert "another gene set" in md
    _, runs = _runs(out)
    parent = runs["eval-ckpt"]
    assert {"eval/pas-human/mcc", "eval/expression-human/r2", "eval/expression-human/r2_gain_vs_kmer"} <= set(
        parent.data.metrics
    )
    assert runs["task-expression-human"].data.tags["mlflow.parentRunId"] == parent.info.run_id


def test_classification_reads_long_inputs_as_pooled_windows(tmp_path):
    rng = np.random.default_rng(2)
    rows = ["sequence,label"]
    for i in range(60):
        g = 0.65 if i % 2 else 0.35
        rows.append(
            "".join(rng.choice(list("ACGT"), 1000, p=[(1 - g) / 2, g / 2, g / 2, (1 - g) / 2])) + f",{i % 2}"
        )
    data = tmp_path / "long.csv"
    data.write_text("\n".join(rows) + "\n")
    ckpt = untrained_export("tiny-dnagpt", tmp_path / "ckpt")
    out = tmp_path / "eval"
    run_eval_cli(ckpt, out, "--data", str(data), "--set", "finetune.window_pool=mean",
                 "--set", "finetune.epochs=1", "--no-mlflow")  # fmt: skip
    row = json.loads((out / "long.csv.json").read_text())
    # 166 tokens (1,000 bp of 6-mers, the 4-base tail one unknown token), 126 per window: 2 windows each
    assert row["window_pool"] == "mean" and row["windows_per_example"] == 2.0 and row["n_test"] == 16
    assert row["mcc_ci"][0] <= row["mcc"] <= row["mcc_ci"][1]


def _value_table(path, rng, n: int, length: int, feature: bool) -> None:
    rows = ["sequence\tvalue" + ("\tfeature_x" if feature else "")]
    for _ in range(n):
        g = rng.uniform(0.3, 0.7) if not feature else 0.5
        s = "".join(rng.choice(list("ACGT"), length, p=[(1 - g) / 2, g / 2, g / 2, (1 - g) / 2]))
        if feature:  # a target the random sequence does not explain: only the number slot carries it
            x = rng.normal()
            rows.append(f"{s}\t{x + rng.normal(scale=0.1):.4f}\t{x:.4f}")
        else:
            rows.append(f"{s}\t{(s.count('G') + s.count('C')) / length:.4f}")
    path.write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize(
    ("case", "length", "feature", "floor"), [("gc", 900, False, 0.8), ("number", 300, True, 0.7)]
)
def test_untrained_dnagpt_learns_through_pooled_windows_and_number_slots(
    tmp_path, case, length, feature, floor
):
    """Fine-tuning can fail to learn, so this can fail: a tiny DNAGPT from (seeded) random weights, 10 epochs,
    must fit GC content read as 2 pooled windows of 900 bp (measured test r^2 0.947 [0.920, 0.969]), and a
    target that only a number slot's feature explains (measured 0.828 [0.750, 0.895])."""
    data = tmp_path / f"{case}.tsv"
    _value_table(data, np.random.default_rng(3 if case == "gc" else 4), 300, length, feature)
    torch.manual_seed(0)  # the export's random weights: the same start every run
    ckpt = untrained_export("tiny-dnagpt", tmp_path / "ckpt")
    run_eval_cli(ckpt, tmp_path / "eval", "--data", str(data), "--set", "finetune.epochs=10",
                 "--set", "finetune.patience=10", "--set", "finetune.micro_batch_size=16", "--no-mlflow")  # fmt: skip
    row = json.loads((tmp_path / "eval" / f"{case}.tsv.json").read_text())
    assert row["windows_per_example"] == (2.0 if case == "gc" else 1.0)
    assert row["r2"] > floor and row["r2_ci"][0] > floor - 0.15
