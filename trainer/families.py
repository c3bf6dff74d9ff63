"""What differs between DNAGPT and DNABERT pretraining, in one place; the engine, loop, checkpoints and
tracking are shared. Each family gives: the training module (forward(batch) -> loss dict), the batch
builder that runs in the loader workers, its metric names, and a check of the prepared data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from datapipe.tokenizers import Tokenizer
from trainer.config import PretrainConfig


@dataclass(frozen=True, kw_only=True)
class Family:
    name: str
    inner: str
    """Attribute of the training module that holds the bare model (exported weights drop this prefix)."""
    metrics: tuple[str, ...]
    """Keys of the loss dict logged as train/<key>; the first is the loss that is back-propagated."""
    build: Callable[[PretrainConfig], torch.nn.Module]
    collate: Callable[[PretrainConfig, Tokenizer], Any]
    template_tokens: int
    """Tokens a sample adds around its k-mers (must fit in model.max_seq_len with the window)."""


def _gpt_build(cfg: PretrainConfig) -> torch.nn.Module:
    from trainer.losses import DNAGPTForPretraining
    from trainer.models.gpt import DNAGPT

    return DNAGPTForPretraining(DNAGPT(cfg.model), tokenizer=cfg.tokenizer, objectives=cfg.objectives)


def _gpt_collate(cfg: PretrainConfig, tok: Tokenizer):
    from trainer.samples import GptSampleBuilder

    return GptSampleBuilder(
        tokenizer=tok, max_seq_len=cfg.model.max_seq_len, ship_bases=cfg.model.embedding == "fused"
    )


def _bert_build(cfg: PretrainConfig) -> torch.nn.Module:
    from trainer.losses import DNABERTForPretraining
    from trainer.models.bert import DNABERT

    return DNABERTForPretraining(DNABERT(cfg.model), tokenizer=cfg.tokenizer)


def _bert_collate(cfg: PretrainConfig, tok: Tokenizer):
    from trainer.bert_samples import BertSampleBuilder

    return BertSampleBuilder(
        tokenizer=tok,
        max_seq_len=cfg.model.max_seq_len,
        masking=cfg.masking,
        ship_bases=cfg.model.embedding == "fused",
    )


FAMILIES = {
    "dnagpt": Family(
        name="dnagpt",
        inner="gpt",
        metrics=("loss", "loss_lm", "loss_order", "loss_gc", "order_acc"),
        build=_gpt_build,
        collate=_gpt_collate,
        template_tokens=4,
    ),
    "dnabert": Family(
        name="dnabert",
        inner="bert",
        metrics=("loss", "mlm_acc", "mask_rate"),
        build=_bert_build,
        collate=_bert_collate,
        template_tokens=2,
    ),
}


def bare_model(cfg: PretrainConfig) -> torch.nn.Module:
    """The family's model without its training wrapper (for exports and evaluation)."""
    from trainer.models import build_model

    return build_model(cfg.family, cfg.model)


def count_params(cfg: PretrainConfig) -> int:
    """Exact parameter count of the bare model (built on the meta device: no memory, even for 3B)."""
    from trainer.models import count_params as count

    return count(cfg.family, cfg.model)
