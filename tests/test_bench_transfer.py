"""bench/bench_transfer.py's pairing of a pretraining budget with its random twin, on synthetic
<task>_predictions.tsv files (no model): the gain is eval's paired bootstrap on the same test examples."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from eval.datasets import LabelledSet, Split
from eval.metrics import paired_difference
from eval.run import write_predictions

ROOT = Path(__file__).resolve().parents[1]


def bench_transfer():
    spec = importlib.util.spec_from_file_location("bench_transfer", ROOT / "bench" / "bench_transfer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_eval(folder: Path, ids, y, probs: dict[str, np.ndarray], split_seed: int = 0) -> None:
    """An eval folder as `dnafm eval` leaves it: eval_config.json and the predictions file of task 't',
    written by eval's own writer (so the bench is tested against the real format)."""
    folder.mkdir(parents=True)
    (folder / "eval_config.json").write_text(json.dumps({"split_seed": split_seed}))
    labels = np.zeros(max(ids) + 1, dtype=np.int64)
    labels[list(ids)] = y
    data = LabelledSet(name="t", sequences=["ACGT"] * len(labels), labels=labels)
    parts = Split(train=np.array([], dtype=np.int64), val=np.array([], dtype=np.int64), test=np.asarray(ids),
                  hashes={})  # fmt: skip
    write_predictions(folder, data, parts, probs["dnafm"], probs["kmer"], probs.get("scratch"))


def test_a_budget_is_paired_with_the_twin_on_the_same_examples(tmp_path):
    bt = bench_transfer()
    rng = np.random.default_rng(0)
    n, c = 300, 11  # 11 classes: column p10 must sort after p9, not after p1
    y = rng.integers(0, c, n)
    ids = rng.permutation(5000)[:n]
    point = rng.dirichlet(np.ones(c), n)
    point[np.arange(n // 2), y[: n // 2]] += 2  # right on half the examples
    point /= point.sum(axis=1, keepdims=True)
    twin = rng.dirichlet(np.ones(c), n)
    kmer = rng.dirichlet(np.ones(c), n)
    write_eval(tmp_path / "twin", ids, y, {"dnafm": kmer, "kmer": kmer, "scratch": twin}, split_seed=3)
    write_eval(tmp_path / "point", ids, y, {"dnafm": point, "kmer": kmer}, split_seed=3)

    got_ids, got_y, got = bt.read_probs(tmp_path / "point", "t", "dnafm")
    assert np.array_equal(got_ids, ids) and np.array_equal(got_y, y) and np.array_equal(got, point)
    gain = bt.paired_gain(tmp_path / "point", tmp_path / "twin", "t")
    assert gain == paired_difference(y, point, twin, seed=3)  # eval's own bootstrap, with the eval's seed
    assert gain["lo"] > 0.2  # half the examples right against chance

    write_eval(tmp_path / "other", ids[::-1], y[::-1], {"dnafm": point, "kmer": kmer})  # another split
    with pytest.raises(SystemExit, match="different test examples"):
        bt.paired_gain(tmp_path / "other", tmp_path / "twin", "t")
    with pytest.raises(SystemExit, match="predates per-example predictions"):
        bt.paired_gain(tmp_path / "nowhere", tmp_path / "twin", "t")


def test_a_one_row_predictions_file_reads(tmp_path):
    write_eval(tmp_path / "e", [7], [1], {"dnafm": np.array([[0.25, 0.75]]), "kmer": np.array([[0.5, 0.5]])})
    ids, y, prob = bench_transfer().read_probs(tmp_path / "e", "t", "dnafm")
    assert ids.tolist() == [7] and y.tolist() == [1] and prob.tolist() == [[0.25, 0.75]]
