"""DNAGPT architecture and the pretraining sample template."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datapipe.shards.format import Sample
from datapipe.tokenizers import get_tokenizer
from trainer.losses import dnagpt_pretrain_loss
from trainer.models.gpt import DNAGPT, GPTConfig
from trainer.samples import IGNORE, TEMPLATE_TOKENS, GptSampleBuilder, gpt_targets

TOK = get_tokenizer("dnagpt-6mer")


def tiny(**kw) -> DNAGPT:
    torch.manual_seed(0)
    return DNAGPT(
        GPTConfig(vocab_size=TOK.vocab_size, max_seq_len=32, n_layer=2, n_head=2, d_model=16, **kw)
    ).eval()


def test_shapes_and_param_count():
    model = tiny()
    ids = torch.randint(0, TOK.vocab_size, (3, 11))
    h = model(ids)
    assert h.shape == (3, 11, 16)
    assert model.lm_logits(h).shape == (3, 11, TOK.vocab_size)
    assert model.regress(h).shape == (3, 11)
    from trainer.config import PretrainConfig
    from trainer.families import count_params

    assert count_params(PretrainConfig(model=model.cfg)) == sum(p.numel() for p in model.parameters())
    assert not any(n.endswith("bias") for n, _ in model.blocks.named_parameters())  # GPT blocks carry no bias


def test_causal_future_tokens_do_not_change_the_past():
    model = tiny()
    ids = torch.randint(34, TOK.vocab_size, (2, 20))
    changed = ids.clone()
    changed[:, 12:] = torch.randint(34, TOK.vocab_size, (2, 8))
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_number_embedding_acts_only_at_number_slots():
    model = tiny()
    ids = torch.randint(34, TOK.vocab_size, (1, 10))
    mask = torch.zeros(1, 10, dtype=torch.bool)
    mask[0, 6] = True
    with torch.no_grad():
        base = model(ids, torch.zeros(1, 10), torch.zeros_like(mask))
        with_num = model(ids, torch.full((1, 10), 3.5), mask)
    torch.testing.assert_close(base[:, :6], with_num[:, :6])  # positions before the slot: untouched
    assert not torch.allclose(base[:, 6:], with_num[:, 6:])


def test_too_long_input_is_refused():
    with pytest.raises(ValueError, match="max_seq_len"):
        tiny()(torch.zeros(1, 33, dtype=torch.long))


def sample(seq: str, gc: float = 0.25, token: str = "R") -> Sample:
    return Sample(
        key="u000000-000000", ids=TOK.encode(seq).astype(np.uint16), meta={"token": token, "gc": gc}
    )


def test_template_layout_and_targets():
    builder = GptSampleBuilder(tokenizer=TOK, max_seq_len=16, reverse_prob=0.0)
    s = sample("AAAAAACCCCCCGGGGGG")  # 3 k-mers
    kmers = TOK.encode("AAAAAACCCCCCGGGGGG").tolist()
    batch = builder([s, sample("TTTTTT", gc=0.0, token="Q")], np.random.default_rng(0))
    assert set(batch) == {"input_ids", "n_kmers", "gc", "num_tokens"}  # compact on the wire
    batch = {**batch, **gpt_targets(batch)}
    row = batch["input_ids"][0].tolist()
    assert row[: 3 + TEMPLATE_TOKENS] == [
        TOK.token_to_id("<R>"),
        *kmers,
        TOK.token_to_id("<=>"),
        TOK.token_to_id("<0>"),
        TOK.token_to_id("<M>"),
    ]
    assert batch["lm_targets"][0, :3].tolist() == kmers and (batch["lm_targets"][0, 3:] == IGNORE).all()
    assert batch["order_targets"][0].tolist().count(IGNORE) == batch["input_ids"].shape[1] - 1
    assert batch["order_targets"][0, 4] == TOK.token_to_id("<0>")
    assert batch["gc_mask"][0].nonzero().flatten().tolist() == [6] and batch["gc_targets"][0, 6] == 0.25
    # second (shorter) row: <Q> species, padded with <P>, no targets on padding
    assert batch["input_ids"][1, 0] == TOK.token_to_id("<Q>")
    assert (batch["input_ids"][1, 5:] == TOK.pad_id).all() and (batch["lm_targets"][1, 1:] == IGNORE).all()


def test_reversal_reverses_kmer_order_and_sets_the_answer():
    builder = GptSampleBuilder(tokenizer=TOK, max_seq_len=16, reverse_prob=1.0)
    batch = builder([sample("AAAAAACCCCCCGGGGGG")], np.random.default_rng(0))
    batch = {**batch, **gpt_targets(batch)}
    kmers = TOK.encode("AAAAAACCCCCCGGGGGG").tolist()
    assert batch["input_ids"][0, 1:4].tolist() == kmers[::-1]
    assert batch["order_targets"][0, 4] == TOK.token_to_id("<1>")


def test_window_longer_than_context_is_a_clear_error():
    builder = GptSampleBuilder(tokenizer=TOK, max_seq_len=6)
    with pytest.raises(ValueError, match="--window-tokens 2"):
        builder([sample("A" * 18)], np.random.default_rng(0))


def test_loss_components_and_gradients():
    model = tiny().train()
    builder = GptSampleBuilder(tokenizer=TOK, max_seq_len=32)
    rng = np.random.default_rng(1)
    batch = builder([sample("".join(rng.choice(list("ACGT"), 60))) for _ in range(4)], rng)
    out = dnagpt_pretrain_loss(model, batch)
    assert set(out) == {"loss", "loss_lm", "loss_order", "loss_gc", "order_acc"}
    torch.testing.assert_close(out["loss"], out["loss_lm"] + out["loss_order"] + 0.01 * out["loss_gc"])
    # untrained model: next-token loss near ln(V)
    assert abs(out["loss_lm"].item() - np.log(TOK.vocab_size)) < 0.5
    out["loss"].backward()
    assert model.num_head[0].weight.grad is not None and model.num_head[0].weight.grad.abs().sum() > 0


def test_objective_weights_and_the_two_way_order_softmax():
    from trainer.config import ObjectivesConfig

    model = tiny().train()
    builder = GptSampleBuilder(tokenizer=TOK, max_seq_len=32)
    rng = np.random.default_rng(1)
    batch = builder([sample("".join(rng.choice(list("ACGT"), 60))) for _ in range(4)], rng)
    obj = ObjectivesConfig(lm_weight=0.0, order_weight=1.0, gc_weight=100.0, order_softmax="answers")
    out = dnagpt_pretrain_loss(model, batch, objectives=obj)
    torch.testing.assert_close(out["loss"], out["loss_order"] + 100.0 * out["loss_gc"])
    # the 2-way order loss of an untrained model starts near ln 2, not near ln V
    assert abs(out["loss_order"].item() - np.log(2)) < 0.1
    assert not out["loss_lm"].requires_grad and abs(out["loss_lm"].item() - np.log(TOK.vocab_size)) < 0.5
    out["loss"].backward()
    assert model.wte.weight.grad is not None and model.wte.weight.grad[:2].abs().sum() > 0


def test_activation_checkpointing_wraps_every_block():
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

    from trainer.engine import apply_activation_checkpointing
    from trainer.losses import DNAGPTForPretraining

    model = DNAGPTForPretraining(tiny())
    apply_activation_checkpointing(model)
    assert all(isinstance(b, CheckpointWrapper) for b in model.gpt.blocks)
    assert len(model.gpt.blocks) == 2


def test_attention_implementation_is_a_config_field():
    torch.manual_seed(0)
    cfg = dict(vocab_size=TOK.vocab_size, max_seq_len=32, n_layer=1, n_head=2, d_model=16)
    ids = torch.randint(34, TOK.vocab_size, (1, 9))
    auto = DNAGPT(GPTConfig(**cfg)).eval()
    forced = DNAGPT(GPTConfig(**cfg, attention="torch")).eval()
    forced.load_state_dict(auto.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(auto(ids), forced(ids))
    strict = DNAGPT(GPTConfig(**cfg, attention="triton")).eval()
    with pytest.raises(RuntimeError, match="head_dim 8"):  # the kernel takes head_dim 32/64/128 only
        strict(ids)
