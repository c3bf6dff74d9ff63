"""The fused input path (model.embedding = "fused", issue 7 item 3): the loader ships bases, the model
embeds them with kernels.kmer_embedding, and training matches the token-id path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import kernels
import kernels.dispatch
from datapipe.shards.format import Sample
from datapipe.tokenizers import TOKENIZER_NAMES, get_tokenizer
from tests.conftest import run_cli
from tests.helpers import chr20_shards, curve, tiny_gpt_args
from trainer.bert_samples import BertSampleBuilder
from trainer.families import FAMILIES
from trainer.fused import BASES_KEYS
from trainer.recipes import get_recipe
from trainer.samples import GptSampleBuilder, gpt_targets

LETTERS = np.frombuffer(b"ACGTACGTACGTACGTNacgtn?X", np.uint8)  # mostly bases, some N, case, garbage


@pytest.mark.parametrize("name", TOKENIZER_NAMES)
def test_to_bases_gives_back_the_ids(name):
    tok = get_tokenizer(name)
    rng = np.random.default_rng(7)
    for length in (1, 5, 6, 7, 11, 12, 97, 300):
        seq = rng.choice(LETTERS, length)
        ids = tok.encode(seq)
        bases = tok.to_bases(ids)
        assert bases.dtype == np.uint8
        np.testing.assert_array_equal(tok.encode(bases), ids, err_msg=f"{name} L={length}")
    clean = rng.choice(LETTERS[:16], 60)  # ACGT, whole 6-mers: the bases themselves come back
    assert tok.to_bases(tok.encode(clean)).tobytes() == clean.tobytes()


@pytest.mark.parametrize("name", TOKENIZER_NAMES)
def test_to_bases_batch_packs_the_rows(name):
    """The batched decode (one gather for DNAGPT) equals row-by-row decoding, with zero bytes after each
    row; ragged rows with 1to6mer tails and unknown k-mers included."""
    tok = get_tokenizer(name)
    rng = np.random.default_rng(3)
    rows = [tok.encode(rng.choice(LETTERS, int(n))) for n in rng.integers(1, 200, 12)]
    rows.append(tok.encode(rng.choice(LETTERS[:16], 120)))  # clean, whole 6-mers
    bases, lengths = tok.to_bases_batch(rows)
    assert bases.dtype == np.uint8 and bases.shape == (len(rows), lengths.max())
    for i, ids in enumerate(rows):
        want = tok.to_bases(ids)
        assert lengths[i] == len(want) and bases[i, : len(want)].tobytes() == want.tobytes()
        assert not bases[i, len(want) :].any()


@pytest.mark.parametrize("name", ["dnagpt-6mer", "dnabert-6"])
def test_to_bases_rejects_reserved_ids(name):
    tok = get_tokenizer(name)
    reserved = tok.token_to_id("<=>") if tok.family == "dnagpt" else tok.cls_id
    bad = np.array([tok.encode(b"ACGTACGTACGT")[0], reserved])
    with pytest.raises(ValueError, match="is not a k-mer"):
        tok.to_bases(bad)
    with pytest.raises(ValueError, match="is not a k-mer"):
        tok.to_bases_batch([tok.encode(b"ACGTACGTACGT"), bad])


def _samples(tok, n: int, seed: int, lengths: tuple[int, int]) -> list[Sample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        seq = rng.choice(LETTERS[:17], int(rng.integers(*lengths)))  # ACGT + N
        meta = {"token": "RS"[i % 2], "gc": float(rng.random())}
        out.append(Sample(key=f"s{i}", ids=tok.encode(seq).astype(np.uint16), meta=meta))
    return out


def _fused_ids(batch: dict, tokenizer: str) -> torch.Tensor:
    layout = {k: v for k, v in batch.items() if k in BASES_KEYS and k != "bases"}
    return kernels.kmer_ids(batch["bases"], tokenizer=tokenizer, **layout)


@pytest.mark.parametrize("name", ["dnagpt-6mer", "dnagpt-1to6mer"])
def test_gpt_bases_batch_embeds_the_id_batch(name):
    tok = get_tokenizer(name)
    samples = _samples(tok, 6, seed=1, lengths=(20, 200))
    ids_batch = GptSampleBuilder(tokenizer=tok, max_seq_len=64)(samples, np.random.default_rng(3))
    bases_batch = GptSampleBuilder(tokenizer=tok, max_seq_len=64, ship_bases=True)(
        samples, np.random.default_rng(3)
    )
    assert "input_ids" not in bases_batch and bases_batch["bases"].dtype == torch.uint8
    got = _fused_ids(bases_batch, name)
    torch.testing.assert_close(got, ids_batch["input_ids"], rtol=0, atol=0)
    for key in ("n_kmers", "gc", "num_tokens"):
        torch.testing.assert_close(bases_batch[key], ids_batch[key], rtol=0, atol=0)
    want, have = gpt_targets(ids_batch), gpt_targets({**bases_batch, "input_ids": got})
    for key in want:
        torch.testing.assert_close(have[key], want[key], rtol=0, atol=0)


def test_bert_bases_batch_embeds_the_masked_id_batch():
    tok = get_tokenizer("dnabert-6")
    samples = _samples(tok, 6, seed=2, lengths=(20, 120))
    ids_batch = BertSampleBuilder(tokenizer=tok, max_seq_len=128)(samples, np.random.default_rng(5))
    bases_batch = BertSampleBuilder(tokenizer=tok, max_seq_len=128, ship_bases=True)(
        samples, np.random.default_rng(5)
    )
    got = _fused_ids(bases_batch, "dnabert-6")
    torch.testing.assert_close(got, ids_batch["input_ids"], rtol=0, atol=0)
    assert (ids_batch["input_ids"] == tok.mask_id).any()  # masking happened, and survived the trip
    torch.testing.assert_close(got != tok.pad_id, ids_batch["attention_mask"], rtol=0, atol=0)
    for key in ("mlm_labels", "num_tokens", "num_masked", "num_maskable"):
        torch.testing.assert_close(bases_batch[key], ids_batch[key], rtol=0, atol=0)


@pytest.mark.parametrize("recipe", ["tiny-dnagpt", "tiny-dnabert"])
def test_fused_model_loss_and_gradients_match_the_id_path(recipe):
    """One training module, both input paths, the same batch: equal loss and embedding gradient. Under
    TRITON_INTERPRET=1 (the test session) the Triton kernels run here, through the interpreter."""
    cfg = get_recipe(recipe)
    family = FAMILIES[cfg.family]
    tok = get_tokenizer(cfg.tokenizer)
    lengths = (60, 300) if cfg.family == "dnagpt" else (20, 120)
    samples = _samples(tok, 4, seed=4, lengths=lengths)
    torch.manual_seed(0)
    model = family.build(cfg)  # shares cfg.model: setting cfg.model.embedding below switches its path
    inner = getattr(model, family.inner)
    weight = inner.wte.weight if cfg.family == "dnagpt" else inner.word.weight
    results = []
    for mode in ("ids", "fused"):
        cfg.model.embedding = mode
        batch = family.collate(cfg, tok)(samples, np.random.default_rng(9))
        model.zero_grad()
        out = model(batch)
        out["loss"].backward()
        results.append((out, weight.grad.clone()))
    (ids_out, ids_grad), (fused_out, fused_grad) = results
    if os.environ.get("TRITON_INTERPRET") == "1":
        assert "Triton" in kernels.dispatch.chosen_paths()["kmer_embedding"]
    for key in family.metrics:
        torch.testing.assert_close(fused_out[key], ids_out[key], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(fused_grad, ids_grad, rtol=1e-5, atol=1e-7)


def test_a_mismatched_batch_is_one_clear_error():
    cfg = get_recipe("tiny-dnagpt")
    family = FAMILIES["dnagpt"]
    tok = get_tokenizer(cfg.tokenizer)
    model = family.build(get_recipe("tiny-dnagpt"))  # embedding = "ids"
    cfg.model.embedding = "fused"
    batch = family.collate(cfg, tok)(_samples(tok, 2, seed=0, lengths=(60, 90)), np.random.default_rng(0))
    with pytest.raises(ValueError, match="batch holds bases"):
        model(batch)


# ----------------------------------------------------------------------------------- the CLI, end to end


@pytest.fixture(scope="module")
def gpt_data(tmp_path_factory) -> Path:
    return chr20_shards(tmp_path_factory.mktemp("gpt"), bases=150_000)


@pytest.fixture(scope="module")
def bert_data(tmp_path_factory) -> Path:
    return chr20_shards(
        tmp_path_factory.mktemp("bert"), bases=100_000, window_tokens=100, tokenizer="dnabert-6"
    )


def _pretrain(out: Path, data: Path, args: list[str], embedding: str) -> list[float]:
    proc = run_cli(
        "pretrain", *args, "--data", str(data), "--out", str(out), "--set", f"model.embedding={embedding}"
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads((out / "config.json").read_text())["model"]["embedding"] == embedding
    # the op is announced in the log when (and only when) the fused path ran
    assert ("kernels.kmer_embedding -> torch reference" in proc.stderr) == (embedding == "fused")
    return curve(out)


@pytest.mark.slow
def test_dnagpt_fused_training_curve_equals_the_id_path(gpt_data, tmp_path):
    """Loader worker process ships bases; on CPU the op's torch path embeds them: the same curve."""
    args = [*tiny_gpt_args(num_workers=1), "--steps", "5"]
    ids = _pretrain(tmp_path / "ids", gpt_data, args, "ids")
    fused = _pretrain(tmp_path / "fused", gpt_data, args, "fused")
    assert len(ids) == 5 and fused == ids


@pytest.mark.slow
def test_dnabert_fused_training_curve_equals_the_id_path(bert_data, tmp_path):
    sets = ["train.log_every=1", "loader.micro_batch_size=4", "loader.num_workers=1"]
    args = [
        "--recipe",
        "tiny-dnabert",
        "--no-mlflow",
        "--steps",
        "5",
        *[x for s in sets for x in ("--set", s)],
    ]
    ids = _pretrain(tmp_path / "ids", bert_data, args, "ids")
    fused = _pretrain(tmp_path / "fused", bert_data, args, "fused")
    assert len(ids) == 5 and fused == ids
