"""The real-data check of motif discovery: a tiny DNABERT fine-tuned from scratch on the Zeng et al. STAT3
ChIP-seq set of GM12878 (ENCODE peaks vs dinucleotide shuffles; registry task tfbs-stat3-gm12878), its
attention on the held-out test file, the motifs found there and their JASPAR matches. The commands run as a
user runs them: `dnafm eval --save-model`, `dnafm attention`, `dnafm motifs`.

What holds, and is asserted: the classifier learns the set (AUROC well above chance); DNABERT's default
threshold (10 x the minimum score) finds no region, because this 2-layer CPU model's attention is nearly flat
(per sequence the highest score is a few times the lowest, never 10x); with the threshold relaxed to the
mean (``motifs.min_factor=1``) the motifs include AP-1 (a Fos- or Jun-family JASPAR matrix among one motif's
five best TOMTOM matches at q < 0.05; its best match can be another bZIP such as MAFK, whose site contains
AP-1's), the known motif most enriched in this set's peaks. What the issue expected, a STAT-family best match
(TOMTOM q < 0.05) among the top five motifs, is not met: besides the flat attention, this GM12878 set carries little
STAT3 motif (TTCnnnGAA in 4.9% of the training peaks vs 3.4% of the shuffles; AP-1's TGAnTCA in 8.6% vs
3.8%), and the STAT-family match that did appear in our runs was a weak ISRE-like motif ranked below the top
five. The test records that as an expected failure with this reason, so that a better model turning it into
a pass is noticed.
"""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch

from tests.conftest import run_cli
from tests.helpers import DATA_ROOT, needs_data, untrained_export

STAT3 = "tfbs/zeng690_stat3/wgEncodeAwgTfbsSydhGm12878Stat3IggmusUniPk"
TOP = 5  # "among the top matches": the best JASPAR match of each of the 5 best-supported motifs
MATCH = re.compile(r"\(([^)]*)\) p=\S+ q=([0-9.e+-]+)")  # "MA0477.3 FOSL1 (Fos-related) p=5.9e-05 q=0.0083"


def motif_rows(out) -> list[dict[str, str]]:
    with open(out / "motifs.tsv") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.mark.slow
@needs_data(f"{STAT3}/train.data.gz", f"{STAT3}/test.data.gz")
def test_stat3_motifs(tmp_path):
    from eval.readers import read_zeng, write_labelled_fasta

    torch.manual_seed(0)  # the same initial weights every run: the motifs found depend on them
    ck = untrained_export("tiny-dnabert", tmp_path / "tiny")
    proc = run_cli(
        "eval", "--checkpoint", str(ck), "--out", str(tmp_path / "ev"), "--tasks", "tfbs-stat3-gm12878",
        "--save-model", "--no-mlflow", "--set", "finetune.epochs=1", env={"DNAFM_DATA_ROOT": str(DATA_ROOT)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((tmp_path / "ev" / "tfbs-stat3-gm12878.json").read_text())
    assert summary["auroc"] > 0.7, summary  # the 4-mer baseline reaches ~0.76 on this split
    model = tmp_path / "ev" / "models" / "tfbs-stat3-gm12878"

    test_set = write_labelled_fasta(read_zeng(DATA_ROOT / STAT3 / "test.data.gz"), tmp_path / "test.fa")
    att = tmp_path / "att"
    proc = run_cli("attention", "--checkpoint", str(model), "--data", str(test_set), "--out", str(att))
    assert proc.returncode == 0, proc.stderr[-4000:]
    scores = np.load(att / "scores.npy")
    spread = np.nanmax(scores, 1) / np.nanmin(scores, 1)
    assert np.quantile(spread, 0.99) < 10  # flat: no base reaches 10 x its sequence's minimum

    default = tmp_path / "motifs-default"
    proc = run_cli(
        "motifs", "--scores", str(att), "--data", str(test_set), "--out", str(default), "--no-jaspar"
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert motif_rows(default) == []

    relaxed = tmp_path / "motifs"
    proc = run_cli(
        "motifs",
        "--scores",
        str(att),
        "--data",
        str(test_set),
        "--out",
        str(relaxed),
        "--set",
        "motifs.min_factor=1",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = motif_rows(relaxed)
    report = "\n".join(f"{r['motif']} {r['consensus']} n={r['instances']}: {r['matches']}" for r in rows)
    matches = [(family, float(q)) for r in rows for family, q in MATCH.findall(r["matches"])]
    assert any(("Fos" in f or "Jun" in f) and q < 0.05 for f, q in matches), report
    top = rows[:TOP]
    if not any("STAT factors" in r["best_family"] and float(r["best_q"]) < 0.05 for r in top):
        pytest.xfail(
            f"no STAT-family best match among the top {TOP} motifs (module docstring says why):\n{report}"
        )
