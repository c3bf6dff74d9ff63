"""Attention probabilities of one layer (both families), per-base DNABERT-viz scores, saved fine-tuned
classifiers, and `dnafm attention` end to end on tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import run_cli

RNG = np.random.default_rng(7)


def random_seqs(lengths) -> list[str]:
    return ["".join(RNG.choice(list("ACGT"), size=n)) for n in lengths]


def bare(recipe: str, seed: int = 0):
    from trainer.families import bare_model
    from trainer.recipes import get_recipe

    torch.manual_seed(seed)
    cfg = get_recipe(recipe)
    model = bare_model(cfg).eval()
    with torch.no_grad():  # away from the near-uniform attention of a fresh init
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model, cfg


@pytest.mark.parametrize("causal", [False, True])
def test_attention_probs_times_v_is_the_attention_output(causal):
    from kernels import attention_probs, attention_ref, fused_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 13, 8) for _ in range(3))
    keep = torch.ones(2, 13, dtype=torch.bool)
    keep[1, 9:] = False
    mask = None if causal else keep
    p = attention_probs(q, k, causal=causal, key_padding_mask=mask)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 3, 13))
    if causal:
        assert torch.all(p.triu(1) == 0)
    else:
        assert torch.all(p[1, :, :, 9:] == 0)
    want = fused_attention(q, k, v, causal=causal, key_padding_mask=mask, impl="torch")
    torch.testing.assert_close(p @ v, want)
    torch.testing.assert_close(attention_ref(q, k, v, causal=causal, key_padding_mask=mask), want)


@pytest.mark.parametrize("recipe", ["tiny-dnabert", "tiny-dnagpt"])
@pytest.mark.parametrize("layer", [0, -1])
def test_model_attention_probs_reproduce_the_layer(recipe, layer):
    """softmax(QK^T) from ``attention_probs`` times the layer's own V gives what its forward computed."""
    model, cfg = bare(recipe)
    ids = torch.randint(5, cfg.model.vocab_size, (2, 21))
    seen = {}

    def keep_input(name):
        def hook(_module, args):
            seen.setdefault(name, args[0])  # returns None: the input goes on unchanged

        return hook

    if cfg.family == "dnabert":
        mask = torch.ones(2, 21, dtype=torch.bool)
        mask[1, 15:] = False
        ids[1, 15:] = 0
        block = model.layers[layer]
        block.register_forward_pre_hook(keep_input("x"))
        block.attn_out.register_forward_pre_hook(keep_input("y"))
        with torch.no_grad():
            model(ids, mask)
            probs = model.attention_probs(ids, mask, layer=layer)
            v = block.value(seen["x"])
    else:
        block = model.blocks[layer].attn
        block.register_forward_pre_hook(keep_input("x"))
        block.proj.register_forward_pre_hook(keep_input("y"))
        with torch.no_grad():
            model(ids)
            probs = model.attention_probs(ids, layer=layer)
            v = block.qkv(seen["x"]).split(cfg.model.d_model, dim=2)[2]
    b, t, d = v.shape
    heads = cfg.model.n_head
    v = v.view(b, t, heads, d // heads).transpose(1, 2)
    y = (probs @ v).transpose(1, 2).reshape(b, t, d)
    keep = slice(None) if cfg.family == "dnagpt" else (mask[..., None].expand_as(y))
    torch.testing.assert_close(y[keep], seen["y"][keep], rtol=1e-5, atol=1e-5)


def test_dnabert_attention_probs_match_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    from trainer.models.hf_bert import save_hf_bert

    model, _ = bare("tiny-dnabert")
    save_hf_bert(model, tmp_path / "hf")
    hf = transformers.BertModel.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    ids = torch.randint(5, 4101, (2, 30))
    ids[:, 0] = 2
    mask = torch.ones(2, 30, dtype=torch.long)
    mask[1, 20:] = 0
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, output_attentions=True).attentions[-1]
        got = model.attention_probs(ids, mask.bool(), layer=-1)
    # transformers gives padded keys a tiny (not zero) weight through its additive mask
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_token_to_base():
    from eval.interpret.attention import token_to_base

    # DNABERT, k = 3: 5 bases, 3 k-mers [a, b, c]; base j is the mean of the k-mers covering it
    got = token_to_base(np.array([1.0, 2.0, 6.0]), "dnabert", 3, 5)
    np.testing.assert_allclose(got, [1.0, 1.5, 3.0, 4.0, 6.0])
    # DNAGPT, k = 3: 7 bases in 3 disjoint k-mers, the last one a 1-base tail
    got = token_to_base(np.array([1.0, 2.0, 3.0]), "dnagpt", 3, 7)
    np.testing.assert_allclose(got, [1, 1, 1, 2, 2, 2, 3])


def save_untrained_classifier(recipe: str, out, *, mode: str = "finetune", seed: int = 0):
    """A classifier over a perturbed tiny model, saved as `dnafm eval --save-model` does (no training:
    these tests are about the plumbing)."""
    from datapipe.tokenizers import get_tokenizer
    from eval.datasets import LabelledSet
    from eval.heads import build_classifier
    from eval.saved_model import classifier_info, save_classifier

    model, cfg = bare(recipe, seed)
    tok = get_tokenizer(cfg.tokenizer)
    clf = build_classifier(cfg.family, model, tok, num_classes=2, probe=mode == "probe")
    if (
        mode == "probe"
    ):  # both families: a LinearProbe (BatchNorm statistics, then Linear) on the frozen encoder
        norm, linear = clf.probe
        torch.nn.init.normal_(linear.weight)
        # statistics far from the fresh (0, 1): a save that dropped the BatchNorm buffers gives other logits
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.2, 5.0)
    data = LabelledSet(name="toy", sequences=random_seqs([60] * 4), labels=np.array([0, 1, 0, 1]))
    info = classifier_info(data, mode=mode, species_token="R", crop=False, source="test", best_val_mcc=0.0)
    save_classifier(clf, out, family=cfg.family, pretrain_config=cfg.to_dict(), tokenizer=tok, info=info)
    return clf.eval()


@pytest.mark.parametrize("recipe", ["tiny-dnabert", "tiny-dnagpt"])
@pytest.mark.parametrize("mode", ["finetune", "probe"])
def test_saved_classifier_gives_the_same_logits(tmp_path, recipe, mode):
    from datapipe.tokenizers import get_tokenizer
    from eval.heads import encode_inputs
    from eval.saved_model import load_checkpoint

    clf = save_untrained_classifier(recipe, tmp_path / "ft", mode=mode)
    loaded = load_checkpoint(tmp_path / "ft")
    assert loaded.classifier is not None and loaded.sequence_bp == 60
    tok = get_tokenizer(loaded.config.tokenizer)
    ids, ask = encode_inputs(loaded.family, tok, random_seqs([50, 61]), species_token="R", max_len=128)
    with torch.no_grad():
        want = clf(torch.from_numpy(ids), torch.from_numpy(ask))
        got = loaded.classifier(torch.from_numpy(ids), torch.from_numpy(ask))
    torch.testing.assert_close(got, want)
    # the folder still loads as a plain export (for dnafm embed)
    assert load_checkpoint(tmp_path / "ft").model is not None


@pytest.mark.parametrize("recipe", ["tiny-dnabert", "tiny-dnagpt"])
def test_scores_do_not_depend_on_the_batch(tmp_path, recipe):
    """Padding never leaks into a sequence's scores: alone or beside longer ones, the same per-base scores."""
    from eval.interpret.attention import AttentionConfig, attention_scores
    from eval.saved_model import load_checkpoint

    save_untrained_classifier(recipe, tmp_path / "ft")
    loaded = load_checkpoint(tmp_path / "ft")
    seqs = random_seqs([33, 101, 70])
    together = attention_scores(loaded, seqs, AttentionConfig(batch_size=3))
    for i, s in enumerate(seqs):
        alone = attention_scores(loaded, [s], AttentionConfig())
        assert together.scores[i].shape == (len(s),)
        np.testing.assert_allclose(together.scores[i], alone.scores[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(together.prob[i], alone.prob[0], rtol=1e-5, atol=1e-6)
        assert np.linalg.norm(together.scores[i]) == pytest.approx(1.0, rel=1e-5)


def test_dnabert_scores_follow_the_cls_row(tmp_path):
    """The per-base scores are the [CLS] row of the last layer summed over heads, mean over covering k-mers."""
    from eval.interpret.attention import AttentionConfig, attention_scores
    from eval.saved_model import load_checkpoint

    save_untrained_classifier("tiny-dnabert", tmp_path / "ft")
    loaded = load_checkpoint(tmp_path / "ft")
    seq = random_seqs([20])[0]
    tok = loaded.tokenizer
    ids = torch.tensor([[tok.cls_id, *tok.encode(seq), tok.sep_id]])
    with torch.no_grad():
        row = loaded.model.attention_probs(ids, layer=-1)[0, :, 0, 1:-1].sum(0).numpy()  # 15 k-mers
    want = np.array([row[max(0, j - 5) : j + 1].mean() for j in range(20)])
    got = attention_scores(loaded, [seq], AttentionConfig(normalize="none")).scores[0]
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("recipe", ["tiny-dnabert", "tiny-dnagpt"])
def test_attention_command(tmp_path, recipe):
    save_untrained_classifier(recipe, tmp_path / "ft")
    seqs = random_seqs([80] * 6 + [64] * 6)
    data = tmp_path / "set.csv"
    data.write_text("id,sequence,label\n" + "".join(f"s{i},{s},{i % 2}\n" for i, s in enumerate(seqs)))
    out = tmp_path / "att"
    proc = run_cli("attention", "--checkpoint", str(tmp_path / "ft"), "--data", str(data), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = np.load(out / "scores.npy")
    assert scores.shape == (12, 80)
    assert np.isnan(scores[6:, 64:]).all() and not np.isnan(scores[:, :64]).any()
    rows = (out / "scores.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["id", "label", "prob_0", "prob_1", "length", "sequence", "scores"]
    first = rows[1].split("\t")
    assert first[0] == "s0" and first[5] == seqs[0]
    np.testing.assert_allclose([float(x) for x in first[6].split(",")], scores[0], rtol=1e-4)
    meta = json.loads((out / "attention.json").read_text())
    assert meta["fine_tuned"] and meta["n_sequences"] == 12
    for png in ("heatmap.png", "tracks.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_attention_command_errors(tmp_path):
    save_untrained_classifier("tiny-dnabert", tmp_path / "ft")
    bad = tmp_path / "bad.csv"
    bad.write_text("sequence\nACGTX\n")
    proc = run_cli(
        "attention", "--checkpoint", str(tmp_path / "ft"), "--data", str(bad), "--out", str(tmp_path / "o")
    )
    assert proc.returncode == 1 and f"{bad}:2: sequence must be" in proc.stderr
    assert not (tmp_path / "o").exists()
    long = tmp_path / "long.csv"
    long.write_text("sequence\n" + "A" * 400 + "\n")
    proc = run_cli(
        "attention", "--checkpoint", str(tmp_path / "ft"), "--data", str(long), "--out", str(tmp_path / "o")
    )
    assert proc.returncode == 1 and "context is 128" in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "command,field",
    [("attention", "layer"), ("motifs", "jaspar"), ("embed", "pooling"), ("variants", "window_bp")],
)
def test_help_and_dry_run(command, field):
    proc = run_cli(command, "--help")
    assert proc.returncode == 0 and f"usage: dnafm {command}" in proc.stdout
    proc = run_cli(command, "--dry-run")
    assert proc.returncode == 0 and field in json.loads(proc.stdout)
