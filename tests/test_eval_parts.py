"""Eval building blocks: task data, splits, metrics (vs scikit-learn), readers, heads, baseline, plots."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, roc_auc_score

from datapipe.tokenizers import get_tokenizer
from eval.baseline import kmer_baseline, kmer_counts
from eval.datasets import LabelledSet, read_table, split
from eval.heads import build_classifier, encode_inputs
from eval.metrics import averaging, classification_metrics
from eval.plots import plot_task
from eval.tasks import TASKS, load_task
from trainer.families import bare_model
from trainer.recipes import get_recipe


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
    m = classification_metrics(y, prob, n_boot=200)
    pred = (prob >= 0.5).astype(int)
    assert m["accuracy"]["value"] == pytest.approx(accuracy_score(y, pred))
    assert m["f1"]["value"] == pytest.approx(f1_score(y, pred))
    assert m["mcc"]["value"] == pytest.approx(matthews_corrcoef(y, pred))
    assert m["auroc"]["value"] == pytest.approx(roc_auc_score(y, prob))
    for v in m.values():
        assert v["lo"] <= v["value"] <= v["hi"]
    # a model's (N, 2) softmax is the same binary task
    two = classification_metrics(y, np.stack([1 - prob, prob], axis=1), n_boot=200)
    assert {k: v["value"] for k, v in two.items()} == {k: v["value"] for k, v in m.items()}
    assert averaging(2).startswith("binary")


def _three_class(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels 0..2 and (N, 3) softmax probabilities that favour the true class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), y] += 1.0
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, prob


def test_three_class_metrics_match_scikit_learn():
    y, prob = _three_class()
    m = classification_metrics(y, prob, n_boot=200)
    pred = prob.argmax(1)
    assert m["accuracy"]["value"] == pytest.approx(accuracy_score(y, pred))
    assert m["f1"]["value"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["mcc"]["value"] == pytest.approx(matthews_corrcoef(y, pred))
    assert m["auroc"]["value"] == pytest.approx(roc_auc_score(y, prob, multi_class="ovr", average="macro"))
    assert 0.3 < m["mcc"]["value"] < 0.9  # informative scores: not a degenerate case
    for v in m.values():
        assert v["lo"] < v["value"] < v["hi"]
    assert averaging(3) == "macro over 3 classes; AUROC one-vs-rest"
    # AUROC is undefined without every class; the others are still scores
    few = classification_metrics(y[y < 2], prob[y < 2], n_boot=0)
    assert np.isnan(few["auroc"]["value"]) and 0 <= few["accuracy"]["value"] <= 1


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
    one = tmp_path / "one.csv"
    one.write_text("sequence,label\nACGT,pos\nACGA,pos\n")
    with pytest.raises(
        ValueError, match=r"one.csv: every row has label 'pos'; classification needs at least 2"
    ):
        read_table(one)
    blank = tmp_path / "blank.csv"
    blank.write_text("sequence,label\nACGT,0\nACGA,\n")
    with pytest.raises(ValueError, match=r"blank.csv:3: empty label"):
        read_table(blank)


def test_a_given_split_is_used_as_given(tmp_path):
    """A split column (or split= in FASTA headers) replaces the seeded draw; dev means val."""
    from eval.readers import read_labelled_fasta

    rows = [("ACGT", 0, "train"), ("ACGA", 1, "Train"), ("ACGC", 0, "dev"), ("ACGG", 1, "val"),
            ("ACTT", 0, "test"), ("ACTA", 1, "test"), ("ACTC", 1, "train")]  # fmt: skip
    csv = tmp_path / "given.csv"
    csv.write_text("sequence,label,split\n" + "".join(f"{s},{y},{p}\n" for s, y, p in rows))
    fasta = tmp_path / "given.fa"
    fasta.write_text("".join(f">r{i} label={y} split={p}\n{s}\n" for i, (s, y, p) in enumerate(rows)))
    for data in (read_table(csv), read_labelled_fasta(fasta)):
        for seed in (0, 1):  # the seed no longer matters
            parts = split(data, seed=seed)
            assert (parts.train.tolist(), parts.val.tolist(), parts.test.tolist()) == (
                [0, 1, 6],
                [2, 3],
                [4, 5],
            )
    assert split(read_table(csv), seed=0).hashes == split(read_labelled_fasta(fasta), seed=0).hashes
    bad = tmp_path / "bad.csv"
    bad.write_text("sequence,label,split\nACGT,0,train\nACGA,1,holdout\n")
    with pytest.raises(ValueError, match=r"bad.csv:3: split 'holdout'; write train, val"):
        read_table(bad)
    noval = tmp_path / "noval.csv"
    noval.write_text("sequence,label,split\nACGT,0,train\nACGA,1,test\n")
    with pytest.raises(ValueError, match=r"the given split has no 'val' examples"):
        read_table(noval)
    mixed = tmp_path / "mixed.fa"
    mixed.write_text(">a label=0 split=train\nACGT\n>b label=1\nACGA\n")
    with pytest.raises(ValueError, match=r"mixed.fa:3: split= is on some records but not this one"):
        read_labelled_fasta(mixed)


def test_read_table_with_three_classes(tmp_path):
    path = tmp_path / "splice.tsv.gz"
    import gzip

    rows = ["ACGT\t2", "ACGA\t10", "ACGC\t0", "ACGG\t2", "ACTT\t0", "ACTA\t10"]
    path.write_bytes(gzip.compress(("sequence\tlabel\n" + "\n".join(rows) + "\n").encode()))
    data = read_table(path)
    # integer labels in numeric order ('10' after '2'), ids 0..2, names kept
    assert data.classes == ("0", "2", "10") and data.num_classes == 3
    assert data.labels.tolist() == [1, 2, 0, 1, 0, 2]
    parts = split(data, seed=0, fractions=(0.5, 0.0, 0.5))
    assert sorted(data.labels[parts.test].tolist()) == [0, 1, 2]  # stratified per class


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
    assert prob.shape == (100, 2) and accuracy_score(y[300:], prob.argmax(1)) > 0.85


def _motif_set(n: int, motifs: tuple[str, ...], seed: int = 0) -> LabelledSet:
    """Random 60-bp sequences; class c carries motifs[c] at 20..26 (class 0: none)."""
    rng = np.random.default_rng(seed)
    seqs, labels = [], []
    for i in range(n):
        c = i % (len(motifs) + 1)
        s = list(rng.choice(list("ACGT"), 60))
        if c:
            s[20:26] = motifs[c - 1]
        seqs.append("".join(s))
        labels.append(c)
    return LabelledSet(name="motifs", sequences=seqs, labels=np.array(labels))


def test_kmer_baseline_three_classes():
    data = _motif_set(600, ("TATAAA", "GGGCCC"))
    y = data.labels
    prob = kmer_baseline(data.sequences[:450], y[:450], data.sequences[450:], k=4)
    assert prob.shape == (150, 3)
    np.testing.assert_allclose(prob.sum(1), 1.0, rtol=1e-6)  # float32 k-mer features
    assert accuracy_score(y[450:], prob.argmax(1)) > 0.8
    # a class missing from training: its column is 0, the shape still (N, C)
    only = kmer_baseline(data.sequences[:450], np.minimum(y[:450], 1), data.sequences[450:], num_classes=3)
    assert only.shape == (150, 3) and (only[:, 2] == 0).all()


@pytest.mark.parametrize("recipe", ["tiny-dnagpt", "tiny-dnabert"])
@pytest.mark.parametrize("probe", [False, True])
def test_heads_give_one_logit_per_class(recipe, probe):
    cfg = get_recipe(recipe)
    tok = get_tokenizer(cfg.tokenizer)
    torch.manual_seed(0)
    seqs = ["ACGTACGTAAGGCCTTAGCATGCA" * 3, "TTTTGGGGCCCCAAAA" * 2, "ACGT" * 30]
    ids, pos = encode_inputs(cfg.family, tok, seqs, species_token="R", max_len=cfg.model.max_seq_len)
    model = build_classifier(cfg.family, bare_model(cfg), tok, num_classes=3, probe=probe).eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(ids), torch.from_numpy(pos))
    assert logits.shape == (3, 3) and torch.isfinite(logits).all()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if probe:  # only the new linear head trains
        assert trainable and all(n.startswith("probe.") for n in trainable)
    if cfg.family == "dnagpt" and not probe:
        # the prompt answer is the LM head's logits of <0>, <1>, <2> at the <=> slot
        gpt = model.gpt
        with torch.no_grad():
            hidden = gpt(torch.from_numpy(ids))[torch.arange(3), torch.from_numpy(pos)]
            full = gpt.lm_logits(hidden)
        answer = [tok.token_to_id(f"<{c}>") for c in range(3)]
        torch.testing.assert_close(logits, full[:, answer].float())


def test_dnagpt_prompt_has_at_most_ten_classes():
    cfg = get_recipe("tiny-dnagpt")
    tok = get_tokenizer(cfg.tokenizer)
    with pytest.raises(ValueError, match=r"11 classes: the DNAGPT prompt answers with the tokens <0>..<9>"):
        build_classifier(cfg.family, bare_model(cfg), tok, num_classes=11, probe=False)
    probe = build_classifier(cfg.family, bare_model(cfg), tok, num_classes=11, probe=True)
    assert probe.probe.out_features == 11


def test_plots_for_three_classes(tmp_path):
    y, prob = _three_class(150)
    _, base = _three_class(150, seed=1)
    pngs = plot_task(y, prob, base, tmp_path / "splice", class_names=("non-splice", "donor", "acceptor"))
    assert [p.name for p in pngs] == ["splice_confusion.png", "splice_roc.png"]
    assert all(p.stat().st_size > 5000 for p in pngs)


@pytest.mark.parametrize(
    "name, n, pos",
    [
        ("pas-mouse", 2 * 2447, 2447),
        ("tis-human", 2 * 802, 802),
        ("prom-core", 5919, 2915),
        ("tfbs-stat3-gm12878", 10185, 5118),
        ("splice-human", 6000, 2000),
    ],
)
def test_tasks_from_the_public_data_collection(name, n, pos):
    from eval.tasks import default_data_root

    if not default_data_root().is_dir():
        pytest.skip(f"public data collection not at {default_data_root()}")
    task, data = load_task(name)
    assert (len(data.sequences), int((data.labels == 1).sum())) == (n, pos)
    assert task.published is None or all(0 < v <= 1 for v in task.published.values())
    if name == "splice-human":  # 3 classes of 2,000, 400 bp, GT at 200..202 of most donors
        assert (
            data.classes == ("non-splice", "donor", "acceptor")
            and np.bincount(data.labels).tolist() == [2000] * 3
        )
        donors = [s for s, y in zip(data.sequences, data.labels, strict=True) if y == 1]
        assert {len(s) for s in data.sequences} == {400} and np.mean(
            [s[200:202] == "GT" for s in donors]
        ) > 0.95


def test_missing_data_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_root"):
        load_task("tis-human", tmp_path / "nowhere")
    assert "pas-human" in TASKS


def test_eval_logs_to_its_own_store_when_the_checkpoint_was_pretrained_without_mlflow(tmp_path, monkeypatch):
    # `dnafm pretrain --no-mlflow` writes "tracking_uri": null into the export's provenance; eval crashed on it.
    from eval.run import EvalConfig, where_to_log

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri, experiment = where_to_log(EvalConfig(), {"tracking_uri": None, "experiment": None}, tmp_path)
    assert uri.startswith("sqlite:///") and str(tmp_path) in uri and experiment == "dnafm-eval"
