"""The DNAGPT authors' released checkpoint layout in: `dnafm import --format dnagpt-release`.

No released file is downloaded here (they are on Google Drive); a checkpoint in their layout is written from
our own weights, and ``release_forward`` below computes what their model code computes from that file, written
from their dna_gpt/model/gpt.py and dna_gpt/model/dna_gpt.py (commit 9b6c093): GPT-2 blocks with LayerNorm
without bias, tanh-GELU, an untied `mlm_head` and the `num_regression` head, both Linear-SiLU-LayerNorm-Linear.
"""

from __future__ import annotations

import argparse
import json

import pytest
import torch
import torch.nn.functional as F

from datapipe.common.errors import UsageError
from tests.conftest import run_cli
from trainer.models import dnagpt_release as rel
from trainer.models.export import load_export
from trainer.models.gpt import DNAGPT, GPTConfig


def release_forward(sd: dict, ids: torch.Tensor, n_head: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (B, T, V), numbers (B, T)) of a release state dict, as their DNAGPT.forward computes them."""

    def ln(x, name):
        return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], None, 1e-5)

    def mlp_head(x, name):
        x = F.silu(F.linear(x, sd[f"{name}.0.weight"]))
        return F.linear(ln(x, f"{name}.2"), sd[f"{name}.3.weight"])

    b, t = ids.shape
    x = sd["transformer.wte.weight"][ids] + sd["transformer.wpe.weight"][:t]
    layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.h.")})
    for i in range(layers):
        p = f"transformer.h.{i}"
        h = ln(x, f"{p}.ln_1")
        q, k, v = F.linear(h, sd[f"{p}.attn.c_attn.weight"]).split(x.shape[-1], dim=2)
        q, k, v = (z.view(b, t, n_head, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, -1)
        x = x + F.linear(y, sd[f"{p}.attn.c_proj.weight"])
        h = F.gelu(F.linear(ln(x, f"{p}.ln_2"), sd[f"{p}.mlp.c_fc.weight"]), approximate="tanh")
        x = x + F.linear(h, sd[f"{p}.mlp.c_proj.weight"])
    x = ln(x, "transformer.ln_f")
    return mlp_head(x, "mlm_head"), mlp_head(x, "num_regression").squeeze(-1)


def released_like(vocab_size: int = 15659, *, seed: int = 0) -> DNAGPT:
    """Our model in the released configuration, with random weights and zero biases where they have none."""
    torch.manual_seed(seed)
    cfg = GPTConfig(
        vocab_size=vocab_size, max_seq_len=50, n_layer=3, n_head=4, d_model=48, lm_head="mlp", gelu="tanh"
    )
    model = DNAGPT(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.zeros_like(p) if rel.release_name(name) is None else p + torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(scope="module")
def release_file(tmp_path_factory):
    """(our model, a .pth in the released layout holding its weights, as their checkpoints do: under 'model')."""
    model = released_like()
    path = tmp_path_factory.mktemp("rel") / "dna_gpt_tiny.pth"
    torch.save({"model": rel.to_release(model)}, path)
    return model, path


def test_the_file_holds_exactly_the_released_names(release_file):
    model, path = release_file
    state = torch.load(path, weights_only=True)["model"]
    blocks = {k for k in state if k.startswith("transformer.h.0.")}
    assert blocks == {
        f"transformer.h.0.{m}.weight"
        for m in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")
    }
    heads = {k for k in state if not k.startswith("transformer.")}
    assert heads == {
        f"{h}.{i}.weight" for h in ("number_embedding", "mlm_head", "num_regression") for i in (0, 2, 3)
    }
    assert state["mlm_head.3.weight"].shape == (model.cfg.vocab_size, 48)
    assert state["transformer.h.0.attn.c_attn.weight"].shape == (3 * 48, 48)


def test_import_cli_gives_an_export_with_the_released_models_logits(release_file, tmp_path):
    model, path = release_file
    out = tmp_path / "imported"
    proc = run_cli("import", "--format", "dnagpt-release", str(path), "--out", str(out), "--n-head", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "custom" in proc.stdout  # not one of the three released sizes
    imported, cfg, tok = load_export(out)
    assert (cfg.family, cfg.tokenizer, cfg.model.lm_head, cfg.model.gelu) == (
        "dnagpt",
        "dnagpt-6mer",
        "mlp",
        "tanh",
    )
    assert json.loads((out / "source.json").read_text())["layout"] == rel.SOURCE
    ids = torch.from_numpy(tok.encode("<R>ACGTACGGATTACCATGAAGCTTAGGCTTACGAGTAGCCNNAGTT<=>")).long()[None]
    sd = torch.load(path, weights_only=True)["model"]
    with torch.no_grad():
        want_logits, want_numbers = release_forward(sd, ids, n_head=4)
        hidden = imported(ids)
        torch.testing.assert_close(imported.lm_logits(hidden), want_logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(imported.regress(hidden), want_numbers, rtol=1e-5, atol=1e-5)
        orig = model(ids)
        torch.testing.assert_close(imported.lm_logits(hidden), model.lm_logits(orig), rtol=0, atol=0)


def test_an_imported_model_is_evaluable(release_file, tmp_path):
    """What `dnafm eval` builds on it: the DNAGPT prompt classifier reads <0>/<1> through the released head."""
    from eval.heads import build_classifier, encode_inputs

    _, path = release_file
    out, name = rel.import_release(path, tmp_path / "imp", n_head=4)
    model, cfg, tok = load_export(out)
    clf = build_classifier(cfg.family, model, tok, num_classes=2, probe=False)
    ids, pos = encode_inputs(
        "dnagpt", tok, ["ACGTACGGATTA" * 3, "TTTTAAAACCCC"], species_token="R", max_len=50
    )
    with torch.no_grad():
        logits = clf(torch.from_numpy(ids), torch.from_numpy(pos))
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()


def test_bf16_import_and_the_module_wrapper_prefix(tmp_path):
    model = released_like(19564, seed=1)
    state = {f"module.{k}": v for k, v in rel.to_release(model).items()}  # as DistributedDataParallel saves
    torch.save(state, tmp_path / "w.pth")
    out, _ = rel.import_release(tmp_path / "w.pth", tmp_path / "imp", n_head=4, dtype=torch.bfloat16)
    imported, cfg, _ = load_export(out)
    assert cfg.tokenizer == "dnagpt-1to6mer"
    for name, p in model.state_dict().items():
        torch.testing.assert_close(imported.state_dict()[name], p.bfloat16().float(), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("variant", "params", "heads"),
    [("dna_gpt0.1b_h", 113.9e6, 12), ("dna_gpt0.1b_m", 117.2e6, 12), ("dna_gpt3b_m", 3113.9e6, 64)],
)
def test_released_variants_are_recognised_from_their_shapes(variant, params, heads):
    """Their three DNAGPT.from_name configurations, as meta tensors (no memory, even for 3B)."""
    layout = rel.expected_layout(rel.release_config(variant))
    assert sum(torch.Size(s).numel() for s in layout.values()) == pytest.approx(params, rel=1e-3)
    state = {k: torch.empty(s, device="meta") for k, s in layout.items()}
    name, cfg = rel.infer_config(state)
    assert (name, cfg.n_head) == (variant, heads)
    rel.check_layout(state, cfg, what=name)  # complete: no error
    del state["transformer.h.7.mlp.c_fc.weight"]
    state["transformer.h.7.mlp.c_fc.bias"] = torch.empty(4 * cfg.d_model, device="meta")
    state["transformer.wpe.weight"] = torch.empty(1024, cfg.d_model, device="meta")
    with pytest.raises(UsageError) as err:
        rel.check_layout(state, cfg, path="x.pth", what=name)
    text = str(err.value)
    assert "missing 1: transformer.h.7.mlp.c_fc.weight" in text
    assert "unexpected 1: transformer.h.7.mlp.c_fc.bias" in text
    assert (
        f"wrong shape 1: transformer.wpe.weight (1024, {cfg.d_model}) (expected ({cfg.max_seq_len}, {cfg.d_model}))"
        in text
    )


def test_mismatched_names_and_shapes_are_one_message_and_nothing_is_written(release_file, tmp_path):
    _, path = release_file
    state = torch.load(path, weights_only=True)["model"]
    state["transformer.h.1.attention.weight"] = state.pop("transformer.h.1.attn.c_attn.weight")
    state["mlm_head.3.weight"] = state["mlm_head.3.weight"][:100]
    torch.save({"model": state}, tmp_path / "bad.pth")
    out = tmp_path / "imp"
    proc = run_cli(
        "import", "--format", "dnagpt-release", str(tmp_path / "bad.pth"), "--out", str(out), "--n-head", "4"
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for words in (
        "bad.pth",
        "missing 1: transformer.h.1.attn.c_attn.weight",
        "unexpected 1: transformer.h.1.attention.weight",
    ):
        assert words in lines[0]
    assert "wrong shape 1: mlm_head.3.weight (100, 48) (expected (15659, 48))" in lines[0]
    assert not out.exists()


def test_other_shapes_need_the_head_count_and_pickled_objects_are_refused(release_file, tmp_path):
    model, path = release_file
    with pytest.raises(UsageError, match="match none of the released variants.*--n-head"):
        rel.import_release(path, tmp_path / "a")
    torch.save({"model": rel.to_release(model), "args": argparse.Namespace(lr=1e-4)}, tmp_path / "obj.pth")
    with pytest.raises(
        UsageError, match=r"Python objects besides tensors \(a argparse.Namespace\).*weights_only"
    ):
        rel.read_release(tmp_path / "obj.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint\n")
    with pytest.raises(UsageError, match="text.pth: not a readable PyTorch checkpoint"):
        rel.read_release(tmp_path / "text.pth")
    proc = run_cli("import", "--format", "dnagpt-release", str(path), "--n-head", "4", "--dry-run")
    assert proc.returncode == 0 and json.loads(proc.stdout)["model"]["n_layer"] == 3


def test_only_a_model_with_the_released_head_and_zero_biases_can_be_written_in_that_layout():
    tied = DNAGPT(GPTConfig(vocab_size=15659, max_seq_len=16, n_layer=1, n_head=2, d_model=16))
    with pytest.raises(UsageError, match="untied MLP head and tanh GELU"):
        rel.to_release(tied)
    model = released_like()
    with torch.no_grad():
        model.num_head[0].bias.fill_(0.5)
    with pytest.raises(UsageError, match="num_head.0.bias"):
        rel.to_release(model)
