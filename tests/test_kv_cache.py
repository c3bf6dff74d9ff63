"""DNAGPT's KV cache: incremental decoding gives the logits of the full forward pass."""

from __future__ import annotations

import pytest
import torch

from datapipe.tokenizers import get_tokenizer
from trainer.models.gpt import DNAGPT, GPTConfig

TOK = get_tokenizer("dnagpt-6mer")


def model(**kw) -> DNAGPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=TOK.vocab_size, max_seq_len=40, n_layer=3, n_head=4, d_model=32, attention="torch")
    return DNAGPT(GPTConfig(**{**cfg, **kw})).eval()


@pytest.mark.parametrize("chunks", [(1,) * 23, (7, 1, 1, 5, 9), (23,), (2, 21)])
def test_cached_logits_equal_the_full_forward(chunks):
    """Prompt-then-one-at-a-time and uneven chunks (bottom-right causal mask when a chunk has several tokens
    after cached ones) all reproduce the full pass, numbers at number slots included."""
    m = model()
    ids = torch.randint(34, TOK.vocab_size, (3, sum(chunks)))
    num_mask = torch.zeros(ids.shape, dtype=torch.bool)
    num_mask[:, 4] = num_mask[:, 15] = True
    num_values = torch.randn(ids.shape)
    with torch.no_grad():
        full = m.lm_logits(m(ids, num_values, num_mask))
        cache = m.new_cache(3)
        parts, lo = [], 0
        for n in chunks:
            sl = slice(lo, lo + n)
            parts.append(m.lm_logits(m(ids[:, sl], num_values[:, sl], num_mask[:, sl], cache=cache)))
            lo += n
    assert cache.length == ids.shape[1]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)


def test_cached_prompt_uses_the_training_attention_path_bit_for_bit():
    m = model()
    ids = torch.randint(34, TOK.vocab_size, (2, 17))
    with torch.no_grad():
        assert torch.equal(m(ids, cache=m.new_cache(2)), m(ids))


def test_the_cache_refuses_positions_past_the_context():
    m = model(max_seq_len=12)
    cache = m.new_cache(1)
    with torch.no_grad():
        m(torch.randint(34, TOK.vocab_size, (1, 10)), cache=cache)
        m(torch.randint(34, TOK.vocab_size, (1, 2)), cache=cache)
        with pytest.raises(ValueError, match="max_seq_len=12"):
            m(torch.randint(34, TOK.vocab_size, (1, 1)), cache=cache)
    small = m.new_cache(1, max_len=4)
    with torch.no_grad(), pytest.raises(ValueError, match="KV cache holds 4"):
        m(torch.randint(34, TOK.vocab_size, (1, 5)), cache=small)
