"""Regression parts without training: prompts and windows (eval/long_inputs.py), the heads' number path,
pooling, metrics against scipy and the ridge baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr

from datapipe.common.errors import UsageError
from datapipe.tokenizers import get_tokenizer
from eval.long_inputs import encode, pool_windows, window_starts
from eval.regression import RegressionSet, regression_metrics, ridge_baseline

RNG = np.random.default_rng(7)


def _seq(n: int) -> str:
    return "".join(RNG.choice(list("ACGT"), n))


@pytest.mark.parametrize(
    ("length", "fit", "overlap"), [(1750, 122, 0.25), (1750, 509, 0.5), (100, 122, 0.25), (123, 122, 0.0)]
)
def test_windows_cover_every_token_and_overlap_as_asked(length, fit, overlap):
    starts = window_starts(length, fit, overlap)
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s : s + fit] = True
    assert covered.all() and starts[0] == 0 and starts[-1] == max(length - fit, 0)
    if len(starts) > 2:
        assert starts[1] - starts[0] == fit - round(overlap * fit)  # fmt: skip


def test_dnagpt_regression_prompt_and_windows_keep_the_token_frame():
    tok = get_tokenizer("dnagpt-6mer")
    seqs = [_seq(1200), _seq(300)]
    feats = np.array([[0.5, -1.0], [2.0, 3.0]])
    inp = encode(
        "dnagpt", tok, seqs, species_token="R", max_len=64, pool="mean", prompt="regress", features=feats
    )
    whole = tok.encode_batch(seqs)  # 200 and 50 tokens
    fit = 64 - 6  # <R> ... <+> <M> <M> <=> <M>
    assert list(inp.windows_per_example) == [len(window_starts(200, fit, 0.25)), 1]
    sym = {tok.token_to_id(s): s for s in ("<R>", "<+>", "<M>", "<=>")}
    for i, seq_ids in enumerate(whole):
        for w, s in zip(
            range(inp.starts[i], inp.starts[i + 1]), window_starts(len(seq_ids), fit, 0.25), strict=True
        ):
            n = min(fit, len(seq_ids))
            row = inp.ids[w]
            assert sym[row[0]] == "<R>" and list(row[1 : 1 + n]) == list(seq_ids[s : s + n])
            assert [sym.get(t) for t in row[1 + n : 1 + n + 5]] == ["<+>", "<M>", "<M>", "<=>", "<M>"]
            assert inp.read[w] == n + 5 and (row[n + 6 :] == tok.pad_id).all()
            np.testing.assert_array_equal(np.flatnonzero(inp.num_mask[w]), [n + 2, n + 3])
            np.testing.assert_array_equal(inp.num_values[w, [n + 2, n + 3]], feats[i])
    # without features: <R> seq <=> <M>; classification: <R> seq <=>
    plain = encode("dnagpt", tok, seqs[1:], species_token="R", max_len=64, pool="off", prompt="regress")
    assert [sym.get(t) for t in plain.ids[0, 51:53]] == ["<=>", "<M>"] and plain.num_values is None
    with pytest.raises(UsageError, match="window_pool=mean"):
        encode("dnagpt", tok, seqs, species_token="R", max_len=64, pool="off", crop=False)


def test_dnabert_windows_are_base_windows_and_features_go_to_the_head():
    tok = get_tokenizer("dnabert-6")
    seq = _seq(400)
    inp = encode("dnabert", tok, [seq], species_token="R", max_len=128, pool="max", overlap=0.5,
                 prompt="regress", features=np.array([[1.5]]))  # fmt: skip
    fit = 126
    for w, s in enumerate(window_starts(395, fit, 0.5)):  # 395 overlapping 6-mers
        assert list(inp.ids[w, 1 : fit + 1]) == list(tok.encode_batch([seq[s : s + fit + 5]])[0])
    assert (inp.read == 0).all() and inp.num_values is None
    assert inp.batch(np.array([0]), torch.device("cpu"))["features"].tolist() == [[1.5]]


def test_pooling_matches_a_loop():
    x = torch.randn(7, 5)
    counts = torch.tensor([3, 1, 3])
    mean = pool_windows(x, counts, "mean")
    mx = pool_windows(x, counts, "max")
    for b, (lo, hi) in enumerate([(0, 3), (3, 4), (4, 7)]):
        torch.testing.assert_close(mean[b], x[lo:hi].mean(0))
        torch.testing.assert_close(mx[b], x[lo:hi].max(0).values)
    assert pool_windows(x, torch.ones(7, dtype=torch.long), "mean") is x


def test_gpt_regressor_reads_features_through_the_number_embedding():
    from eval.regress_heads import GptPromptRegressor
    from trainer.models.gpt import DNAGPT, GPTConfig

    torch.manual_seed(0)
    tok = get_tokenizer("dnagpt-6mer")
    gpt = DNAGPT(GPTConfig(vocab_size=tok.vocab_size, max_seq_len=64, n_layer=1, n_head=2, d_model=32)).eval()
    model = GptPromptRegressor(gpt, probe=False, pool="mean")
    seqs = [_seq(600)] * 2
    feats = np.array([[0.0], [3.0]])  # the same sequence, two feature values
    inp = encode(
        "dnagpt", tok, seqs, species_token="R", max_len=64, pool="mean", prompt="regress", features=feats
    )
    with torch.no_grad():
        out = model(**inp.batch(np.array([0, 1]), torch.device("cpu")))
        # by hand: each window's hidden state at its last <M>, averaged, then the pretrained num_head
        b = inp.batch(np.array([0]), torch.device("cpu"))
        h = gpt(b["input_ids"], b["num_values"], b["num_mask"])[
            torch.arange(len(b["position"])), b["position"]
        ]
        ref = gpt.regress(h.mean(0))
    assert out.shape == (2,) and abs(float(out[0] - out[1])) > 1e-4
    torch.testing.assert_close(out[0], ref)


def test_metrics_match_scipy_and_the_interval_holds_the_value():
    y = RNG.normal(size=200)
    pred = y + RNG.normal(scale=1.0, size=200)
    m = regression_metrics(y, pred, n_boot=300)
    assert m["r2"]["value"] == pytest.approx(pearsonr(y, pred).statistic ** 2)
    assert m["spearman"]["value"] == pytest.approx(spearmanr(y, pred).statistic)
    assert m["mse"]["value"] == pytest.approx(np.mean((y - pred) ** 2))
    for v in m.values():
        assert v["lo"] <= v["value"] <= v["hi"] and v["hi"] - v["lo"] > 0.01


def test_ridge_baseline_learns_gc_content_and_uses_features():
    seqs = [
        "".join(RNG.choice(list("ACGT"), 200, p=[(1 - g) / 2, g / 2, g / 2, (1 - g) / 2]))
        for g in RNG.uniform(0.2, 0.8, 160)
    ]
    gc = np.array([(s.count("G") + s.count("C")) / len(s) for s in seqs])
    pred = ridge_baseline(seqs[:120], gc[:120], seqs[120:])
    assert pearsonr(gc[120:], pred).statistic ** 2 > 0.9
    noise = RNG.normal(size=160)  # a target only a feature explains
    feats = noise[:, None] + RNG.normal(scale=0.05, size=(160, 1))
    with_f = ridge_baseline(
        seqs[:120], noise[:120], seqs[120:], train_features=feats[:120], test_features=feats[120:]
    )
    without = ridge_baseline(seqs[:120], noise[:120], seqs[120:])
    assert pearsonr(noise[120:], with_f).statistic ** 2 > 0.5 > pearsonr(noise[120:], without).statistic ** 2


def test_regression_set_refuses_non_finite_and_constant_targets():
    with pytest.raises(UsageError, match="finite"):
        RegressionSet(name="x", sequences=["A", "C"], values=np.array([1.0, np.nan]))
    with pytest.raises(UsageError, match="every target is 2"):
        RegressionSet(name="x", sequences=["A", "C"], values=np.array([2.0, 2.0]))


def test_classifier_pools_the_windows_of_a_long_input():
    from eval.heads import build_classifier
    from trainer.models.bert import DNABERT, BertConfig
    from trainer.models.gpt import DNAGPT, GPTConfig

    torch.manual_seed(0)
    for family, name in (("dnagpt", "dnagpt-6mer"), ("dnabert", "dnabert-6")):
        tok = get_tokenizer(name)
        if family == "dnagpt":
            net = DNAGPT(
                GPTConfig(vocab_size=tok.vocab_size, max_seq_len=48, n_layer=1, n_head=2, d_model=32)
            )
        else:
            net = DNABERT(
                BertConfig(
                    vocab_size=tok.vocab_size, max_seq_len=48, n_layer=1, n_head=2, d_model=32, d_ff=64
                )
            )
        clf = build_classifier(family, net, tok, num_classes=2, probe=False, pool="max").eval()
        inp = encode(family, tok, [_seq(700)], species_token="R", max_len=48, pool="max")
        assert inp.windows_per_example[0] > 2
        with torch.no_grad():
            pooled = clf(**inp.batch(np.array([0]), torch.device("cpu")))
            each = [
                clf(torch.from_numpy(inp.ids[w : w + 1]), torch.from_numpy(inp.read[w : w + 1]))
                for w in range(len(inp.ids))
            ]
        assert pooled.shape == (1, 2)
        if (
            family == "dnagpt"
        ):  # max over windows of the <=> state, then the tied LM head's answer rows: linear
            h = (
                net(torch.from_numpy(inp.ids))[torch.arange(len(inp.ids)), torch.from_numpy(inp.read)]
                .max(0)
                .values
            )
            torch.testing.assert_close(pooled[0], net.lm_logits(h)[clf.answer_ids].float())
        else:  # max over windows of the pooler's [CLS] vector, then the classifier
            ids = torch.from_numpy(inp.ids)
            h = torch.tanh(net.pooler(net(ids, ids != tok.pad_id)[:, 0])).max(0).values
            torch.testing.assert_close(pooled[0], clf.bert.classifier(h).float())
        # one window alone is what the pooled input gives when it is the only window
        assert not torch.allclose(pooled, each[0])


def test_window_pool_auto_is_mean_for_regression_and_the_old_crop_for_classification():
    from eval.finetune import FinetuneConfig

    assert (
        FinetuneConfig().pool(regression=True) == "mean" and FinetuneConfig().pool(regression=False) == "off"
    )
    assert FinetuneConfig(window_pool="max").pool(regression=False) == "max"


def test_save_model_is_refused_for_a_regression_task_before_any_output(tmp_path):
    from eval.run import EvalConfig, load_jobs
    from eval.user_tasks import UserTaskConfig

    path = tmp_path / "v.csv"
    path.write_text("sequence,value\n" + "".join(f"{_seq(30)},{i}\n" for i in range(12)))
    cfg = EvalConfig(tasks=(), user_task=UserTaskConfig(data=str(path)), save_model=True)
    with pytest.raises(UsageError, match="--save-model saves classifiers; v.csv is a regression task"):
        load_jobs(cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.csv"]


def test_regression_fine_tuning_stops_early_on_validation_r2_and_keeps_the_best_epoch(monkeypatch):
    """On the real DeepSpeed engine (one gloo rank in this process): targets that the sequences do not explain,
    patience 0, so the run stops at the first epoch whose validation r^2 is not a new best."""
    from cluster.launch import init_process_group, leave_process_group
    from datapipe.common.tracking import NullTracker
    from eval.finetune import FinetuneConfig
    from eval.regress_finetune import finetune_regression
    from eval.regression import split_regression
    from trainer.models.gpt import DNAGPT, GPTConfig

    tok = get_tokenizer("dnagpt-6mer")
    torch.manual_seed(0)
    gpt = DNAGPT(GPTConfig(vocab_size=tok.vocab_size, max_seq_len=32, n_layer=1, n_head=2, d_model=32))
    data = RegressionSet(name="noise", sequences=[_seq(240) for _ in range(40)], values=RNG.normal(size=40),
                         features=RNG.normal(size=(40, 1)), feature_names=("f",))  # fmt: skip
    parts = split_regression(data, seed=0)
    cfg = FinetuneConfig(epochs=8, patience=0, micro_batch_size=8, lr=1e-3)
    # init_process_group writes the single-rank rendezvous into os.environ; undo it afterwards, or later
    # `dnafm` subprocesses of this session inherit this group's MASTER_PORT
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "")  # records the old value (or its absence) to restore
        monkeypatch.delenv(key)
    dist_info = init_process_group()
    try:
        pred, info = finetune_regression(gpt, "dnagpt", tok, cfg, data=data, parts=parts, species_token="R",
                                         dist_info=dist_info, tracker=NullTracker())  # fmt: skip
    finally:
        leave_process_group()
    r2 = [h["r2"] for h in info["history"]]
    best = [max(r2[: i + 1]) for i in range(len(r2))]
    stop = next((i for i in range(1, len(r2)) if r2[i] <= best[i - 1]), len(r2) - 1)
    assert len(r2) == stop + 1 and info["best_val_r2"] == pytest.approx(max(r2))
    assert pred.shape == (len(parts.test),) and info["windows_per_example"] == 2.0 and info["pool"] == "mean"
