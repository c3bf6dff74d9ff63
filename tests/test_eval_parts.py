"""Eval building blocks: task data, splits, metrics (vs scikit-learn), readers, baseline."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, matthews_corrcoef, roc_auc_score

from eval.baseline import kmer_baseline, kmer_counts
from eval.datasets import LabelledSet, read_table, split
from eval.metrics import binary_metrics
from eval.tasks import TASKS, load_task


def test_pas_human_task_is_the_shipped_deepgsr_set():
    task, data = load_task("pas-human")
    assert task.species_token == "R" and task.shipped
    assert len(data.sequences) == 2 * 3016 and data.labels.sum() == 3016  # DeepGSR ATTAAA: 3,016 pos = neg
    assert all(len(s) == 606 for s in data.sequences[:50])
    assert all(s[300:306] == "ATTAAA" for s in data.sequences[:50])  # hexamer at positions 301-306


def test_split_is_stratified_deterministic_and_hashed():
    data = LabelledSet(
        name="x", sequences=[f"ACGT{i}" for i in range(200)], labels=np.array([0] * 120 + [1] * 80)
    )
    a, b, c = split(data, seed=3), split(data, seed=3), split(data, seed=4)
    assert a.hashes == b.hashes and a.hashes != c.hashes
    assert (len(a.train), len(a.val), len(a.test)) == (120, 30, 50)
    assert data.labels[a.test].sum() == 20  # 25% of each class
    assert not set(a.train) & set(a.test) and not set(a.val) & set(a.test)


def test_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    prob = np.clip(y * 0.3 + rng.random(300) * 0.7, 0, 1)
    m = binary_metrics(y, prob, n_boot=200)
    pred = (prob >= 0.5).astype(int)
    assert m["accuracy"]["value"] == pytest.approx(accuracy_score(y, pred))
    assert m["mcc"]["value"] == pytest.approx(matthews_corrcoef(y, pred))
    assert m["auroc"]["value"] == pytest.approx(roc_auc_score(y, prob))
    for v in m.values():
        assert v["lo"] <= v["value"] <= v["hi"]


def test_read_table_and_its_errors(tmp_path):
    good = tmp_path / "d.csv"
    good.write_text("sequence,label\nACGTN,pos\nacgt,neg\n")
    data = read_table(good)
    assert data.sequences == ["ACGTN", "ACGT"] and data.labels.tolist() == [1, 0]
    bad = tmp_path / "bad.tsv"
    bad.write_text("sequence\tlabel\nACGT\t0\nAC-GT\t1\n")
    with pytest.raises(ValueError, match=r"bad.tsv:3:"):
        read_table(bad)
    nohead = tmp_path / "h.csv"
    nohead.write_text("seq,y\nACGT,0\n")
    with pytest.raises(ValueError, match="header"):
        read_table(nohead)


def test_kmer_baseline_learns_a_motif():
    rng = np.random.default_rng(0)
    seqs, labels = [], []
    for i in range(400):
        s = list(rng.choice(list("ACGT"), 60))
        if i % 2:
            s[20:26] = "TATAAA"
        seqs.append("".join(s))
        labels.append(i % 2)
    y = np.array(labels)
    assert kmer_counts(["ACGTN"], k=2).sum() == pytest.approx(1.0)
    prob = kmer_baseline(seqs[:300], y[:300], seqs[300:], k=4)
    assert accuracy_score(y[300:], prob > 0.5) > 0.85


@pytest.mark.parametrize(
    "name, n, pos",
    [
        ("pas-mouse", 2 * 2447, 2447),
        ("tis-human", 2 * 802, 802),
        ("prom-core", 5919, 2915),
        ("tfbs-stat3-gm12878", 10185, 5118),
    ],
)
def test_tasks_from_the_public_data_collection(name, n, pos):
    from eval.tasks import default_data_root

    if not default_data_root().is_dir():
        pytest.skip(f"public data collection not at {default_data_root()}")
    task, data = load_task(name)
    assert (len(data.sequences), int(data.labels.sum())) == (n, pos)
    assert task.published is None or all(0 < v <= 1 for v in task.published.values())


def test_missing_data_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_root"):
        load_task("tis-human", tmp_path / "nowhere")
    assert "pas-human" in TASKS
