"""Embeddings: pooling, padding independence (both families), windowing of long inputs, `dnafm embed`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import run_cli
from tests.test_interpret_attention import bare, random_seqs

CASES = [
    ("tiny-dnabert", "mean"),
    ("tiny-dnabert", "cls"),
    ("tiny-dnabert", "last"),
    ("tiny-dnagpt", "mean"),
    ("tiny-dnagpt", "last"),
]


def embed_with(recipe: str, seqs: list[str], **kw) -> np.ndarray:
    from datapipe.tokenizers import get_tokenizer
    from eval.interpret.embed import EmbedConfig, embed_sequences

    model, cfg = bare(recipe)
    return embed_sequences(model, cfg.family, get_tokenizer(cfg.tokenizer), seqs, EmbedConfig(**kw))


@pytest.mark.parametrize("recipe,pooling", CASES)
def test_alone_or_in_a_padded_batch(recipe, pooling):
    seqs = random_seqs([40, 123, 77, 9, 300])  # 300 bp: longer than the 128-token context for DNABERT
    batch = embed_with(recipe, seqs, pooling=pooling, batch_size=8)
    assert batch.shape == (5, 64 if "bert" in recipe else 128) and batch.dtype == np.float32
    for i, s in enumerate(seqs):
        alone = embed_with(recipe, [s], pooling=pooling, batch_size=1)
        np.testing.assert_allclose(batch[i], alone[0], rtol=1e-5, atol=1e-5)
    assert not np.allclose(batch[0], batch[1])


@pytest.mark.parametrize("recipe", ["tiny-dnabert", "tiny-dnagpt"])
def test_windows_hold_every_token_once(recipe):
    from datapipe.tokenizers import get_tokenizer
    from eval.interpret.embed import windows

    _, cfg = bare(recipe)
    tok = get_tokenizer(cfg.tokenizer)
    for length in (6, 7, 130, 131, 132, 700, 761, 1000):
        seq = random_seqs([length])[0]
        pieces = windows(seq, cfg.family, tok.k, cfg.model.max_seq_len)
        limit = cfg.model.max_seq_len - (2 if cfg.family == "dnabert" else 1)
        assert all(len(tok.encode(p)) <= limit for p in pieces)
        joined = np.concatenate([tok.encode(p) for p in pieces])
        np.testing.assert_array_equal(joined, tok.encode(seq))


def test_mean_over_windows_is_the_token_weighted_mean():
    """A long sequence's mean embedding is the mean over all its windows' k-mer tokens."""
    from datapipe.tokenizers import get_tokenizer
    from eval.interpret.embed import windows

    model, cfg = bare("tiny-dnabert")
    tok = get_tokenizer(cfg.tokenizer)
    seq = random_seqs([300])[0]
    got = embed_with("tiny-dnabert", [seq], pooling="mean")[0]
    states = []
    for piece in windows(seq, "dnabert", 6, 128):
        ids = torch.tensor([[tok.cls_id, *tok.encode(piece), tok.sep_id]])
        with torch.no_grad():
            states.append(model(ids)[0, 1:-1])
    want = torch.cat(states).mean(0).numpy()
    assert len(states) == 3  # 295 k-mers in windows of 126
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_cls_pooling_needs_dnabert():
    from datapipe.common.errors import UsageError

    with pytest.raises(UsageError, match="DNAGPT has none"):
        embed_with("tiny-dnagpt", ["ACGTACGTAC"], pooling="cls")


def test_python_function_and_command_agree(tmp_path):
    from eval.interpret.run import embed
    from tests.test_interpret_attention import save_untrained_classifier

    save_untrained_classifier("tiny-dnabert", tmp_path / "ck")
    seqs = random_seqs([50, 90, 200])
    fa = tmp_path / "s.fa"
    fa.write_text("".join(f">seq{i}\n{s}\n" for i, s in enumerate(seqs)))
    want = embed(tmp_path / "ck", seqs, pooling="cls")
    for out in (tmp_path / "e.npy", tmp_path / "e.parquet"):
        proc = run_cli(
            "embed",
            "--checkpoint",
            str(tmp_path / "ck"),
            "--data",
            str(fa),
            "--out",
            str(out),
            "--pooling",
            "cls",
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        if out.suffix == ".npy":
            got = np.load(out)
        else:
            frame = pd.read_parquet(out)
            assert list(frame["id"]) == ["seq0", "seq1", "seq2"]
            got = frame.drop(columns="id").to_numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    proc = run_cli(
        "embed", "--checkpoint", str(tmp_path / "ck"), "--data", str(fa), "--out", str(tmp_path / "e.csv")
    )
    assert proc.returncode == 1 and "must end in .npy or .parquet" in proc.stderr
