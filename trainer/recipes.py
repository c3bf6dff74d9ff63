"""Named recipes: each a few lines derived from a base. The CLI only overrides fields of these."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from datapipe.common.errors import UsageError
from datapipe.loader import LoaderConfig
from trainer.config import OptimConfig, PretrainConfig, TrainConfig
from trainer.masking import MaskingConfig
from trainer.models.bert import BertConfig
from trainer.models.gpt import GPTConfig

VOCAB = {"dnagpt-6mer": 15659, "dnagpt-1to6mer": 19564}


def _dnagpt_base(
    *, name: str, tokenizer: str, ctx: int, n_layer: int = 12, d_model: int = 768, n_head: int = 12
) -> PretrainConfig:
    """Published DNAGPT recipe: AdamW lr 1e-4, betas (0.9, 0.98), wd 0.01, cosine with warm-up, clip 1.0."""
    return PretrainConfig(
        recipe=name,
        tokenizer=tokenizer,
        model=GPTConfig(
            vocab_size=VOCAB[tokenizer], max_seq_len=ctx, n_layer=n_layer, n_head=n_head, d_model=d_model
        ),
        optim=OptimConfig(lr=1e-4, betas=(0.9, 0.98), weight_decay=0.01, warmup_steps=2000, grad_clip=1.0),
        train=TrainConfig(steps=100_000, zero_stage=1, precision="auto"),
        loader=LoaderConfig(micro_batch_size=8, num_workers=2),
    )


def dnagpt_h() -> PretrainConfig:
    return _dnagpt_base(name="dnagpt-h", tokenizer="dnagpt-6mer", ctx=4096)


def dnagpt_m() -> PretrainConfig:
    return _dnagpt_base(name="dnagpt-m", tokenizer="dnagpt-1to6mer", ctx=4096)


def dnagpt_s_512() -> PretrainConfig:
    return _dnagpt_base(name="dnagpt-s-512", tokenizer="dnagpt-1to6mer", ctx=512)


def dnagpt_b_512() -> PretrainConfig:
    cfg = _dnagpt_base(
        name="dnagpt-b-512", tokenizer="dnagpt-1to6mer", ctx=512, n_layer=60, d_model=2048, n_head=64
    )
    cfg.train.zero_stage = 3  # 3B parameters: shard parameters, gradients and optimizer state
    return cfg


def tiny_dnagpt() -> PretrainConfig:
    """A CPU-sized DNAGPT for smoke runs and the demo: ~2.5M parameters, 128-token context."""
    cfg = _dnagpt_base(name="tiny-dnagpt", tokenizer="dnagpt-6mer", ctx=128, n_layer=2, d_model=128, n_head=4)
    cfg.optim = OptimConfig(lr=2e-3, betas=(0.9, 0.98), weight_decay=0.01, warmup_steps=20, grad_clip=1.0)
    cfg.train = TrainConfig(steps=300, zero_stage=1, precision="auto", log_every=10)
    cfg.loader = LoaderConfig(micro_batch_size=16, num_workers=1)
    return cfg


def _dnabert(k: int) -> PretrainConfig:
    """Published DNABERT schedule: 120k steps, global batch 2,000 (here 25 x 10 accumulation x 8 ranks), lr 4e-4
    with 10k warm-up then linear decay, AdamW (0.9, 0.98), eps 1e-6, wd 0.01; mask rate 15%, 20% for the last 20k."""
    return PretrainConfig(
        recipe=f"dnabert-{k}",
        family="dnabert",
        tokenizer=f"dnabert-{k}",
        model=BertConfig(vocab_size=4**k + 5, max_seq_len=512),
        optim=OptimConfig(
            lr=4e-4,
            betas=(0.9, 0.98),
            eps=1e-6,
            weight_decay=0.01,
            warmup_steps=10_000,
            schedule="linear",
            min_lr_ratio=0.0,
            grad_clip=1.0,
        ),
        train=TrainConfig(steps=120_000, grad_accum_steps=10, zero_stage=1),
        loader=LoaderConfig(micro_batch_size=25, num_workers=2),
        masking=MaskingConfig(mask_rate=0.15, late_mask_rate=0.20, late_after_batches=100_000 * 10),
    )


def tiny_dnabert() -> PretrainConfig:
    """A CPU-sized DNABERT-6 for smoke runs: 2 layers x 64, 128 positions."""
    cfg = _dnabert(6)
    cfg.recipe = "tiny-dnabert"
    cfg.model = BertConfig(
        vocab_size=4101, max_seq_len=128, n_layer=2, n_head=4, d_model=64, d_ff=256, dropout=0.0
    )
    cfg.optim = replace(cfg.optim, lr=1e-3, warmup_steps=20)  # the published schedule, shortened
    cfg.train = TrainConfig(steps=200, zero_stage=1, log_every=10)
    cfg.loader = LoaderConfig(micro_batch_size=16, num_workers=1)
    cfg.masking = MaskingConfig()
    return cfg


RECIPES: dict[str, Callable[[], PretrainConfig]] = {
    "dnagpt-h": dnagpt_h,
    "dnagpt-m": dnagpt_m,
    "dnagpt-s-512": dnagpt_s_512,
    "dnagpt-b-512": dnagpt_b_512,
    "tiny-dnagpt": tiny_dnagpt,
    **{f"dnabert-{k}": (lambda k=k: _dnabert(k)) for k in (3, 4, 5, 6)},
    "tiny-dnabert": tiny_dnabert,
}


def get_recipe(name: str) -> PretrainConfig:
    if name not in RECIPES:
        raise UsageError(f"unknown recipe '{name}'; available: {', '.join(RECIPES)}")
    # Round-trip through a dict so the field edits the recipes make are validated too.
    return PretrainConfig.from_dict(RECIPES[name]().to_dict())
