"""Named recipes: each a few lines derived from a base. The CLI only overrides fields of these."""

from __future__ import annotations

from collections.abc import Callable

from datapipe.loader import LoaderConfig
from trainer.config import OptimConfig, PretrainConfig, TrainConfig
from trainer.gpt import GPTConfig

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


RECIPES: dict[str, Callable[[], PretrainConfig]] = {
    "dnagpt-h": dnagpt_h,
    "dnagpt-m": dnagpt_m,
    "dnagpt-s-512": dnagpt_s_512,
    "dnagpt-b-512": dnagpt_b_512,
    "tiny-dnagpt": tiny_dnagpt,
}


def get_recipe(name: str) -> PretrainConfig:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe '{name}'; available: {', '.join(RECIPES)}")
    # Round-trip through a dict so the field edits the recipes make are validated too.
    return PretrainConfig.from_dict(RECIPES[name]().to_dict())
