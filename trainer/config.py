"""Configs of a pretraining run: model + optimiser + schedule/engine + loader + tracking."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Self

from datapipe.common.config import Config, ConfigError, check
from datapipe.loader import LoaderConfig
from datapipe.tokenizers import TOKENIZER_NAMES
from trainer.masking import MaskingConfig
from trainer.models.bert import BertConfig
from trainer.models.gpt import GPTConfig


@dataclass(kw_only=True)
class OptimConfig(Config):
    lr: float = 1e-4
    """Peak learning rate (after warm-up)."""
    betas: tuple[float, ...] = (0.9, 0.98)
    eps: float = 1e-8
    weight_decay: float = 0.01
    """Applied to matrices only (not to LayerNorm weights or biases)."""
    warmup_steps: int = 100
    """Optimizer steps of linear warm-up from 0 to lr."""
    min_lr_ratio: float = 0.1
    """The decay ends at lr * min_lr_ratio at the last step."""
    schedule: Literal["cosine", "linear"] = "cosine"
    """Decay after warm-up: cosine (DNAGPT) or linear (DNABERT)."""
    grad_clip: float = 1.0
    """Global gradient-norm clipping (0 = off)."""

    def __post_init__(self) -> None:
        check(self.lr > 0, "lr", "must be > 0")
        check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "betas",
            "must be two numbers in [0, 1)",
        )
        check(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "must be in [0, 1]")
        check(self.grad_clip >= 0, "grad_clip", "must be >= 0")


@dataclass(kw_only=True)
class TrainConfig(Config):
    steps: int = 1000
    """Optimizer steps in the run."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step on each rank."""
    zero_stage: int = 1
    """DeepSpeed ZeRO stage (0-3)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """'auto': bf16 on GPU, fp32 on CPU."""
    seed: int = 0
    log_every: int = 10
    """Optimizer steps between metric logs."""
    ckpt_every: int = 0
    """Optimizer steps between checkpoints (0 = only at the end, on SIGTERM/SIGINT and on a NaN stop)."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in backward: ~1/3 more compute for far less activation memory."""
    offload_optimizer: bool = False
    """ZeRO-Offload: keep optimizer states (and the step) on the CPU; needs zero_stage >= 1."""
    max_bad_steps: int = 5
    """Consecutive steps with a NaN/inf loss (skipped) before the run saves a checkpoint and stops."""

    def __post_init__(self) -> None:
        check(self.steps >= 1, "steps", "must be >= 1")
        check(self.grad_accum_steps >= 1, "grad_accum_steps", "must be >= 1")
        check(self.zero_stage in (0, 1, 2, 3), "zero_stage", "must be 0, 1, 2 or 3")
        check(self.log_every >= 1, "log_every", "must be >= 1")
        check(self.ckpt_every >= 0, "ckpt_every", "must be >= 0")
        check(self.max_bad_steps >= 1, "max_bad_steps", "must be >= 1")
        check(
            not self.offload_optimizer or self.zero_stage >= 1, "offload_optimizer", "needs zero_stage >= 1"
        )


@dataclass(kw_only=True)
class ObjectivesConfig(Config):
    """Weights of the DNAGPT pretraining loss: lm_weight x next-token CE + order_weight x order CE + gc_weight
    x GC MSE (DNABERT ignores this section). The published recipe is 1, 1, 0.01."""

    lm_weight: float = 1.0
    order_weight: float = 1.0
    gc_weight: float = 0.01
    order_softmax: Literal["vocab", "answers"] = "vocab"
    """'vocab': the order answer is a next-token prediction over the whole vocabulary (starts at ln V nats);
    'answers': a 2-way softmax over the answer tokens <0> / <1> only (starts at ln 2)."""

    def __post_init__(self) -> None:
        for name in ("lm_weight", "order_weight", "gc_weight"):
            check(getattr(self, name) >= 0, name, "must be >= 0")
        check(self.lm_weight + self.order_weight + self.gc_weight > 0, "lm_weight", "all weights are 0")


@dataclass(kw_only=True)
class TrackingConfig(Config):
    enabled: bool = True
    experiment: str = "dnafm-pretrain"
    tracking_uri: str | None = None
    """MLflow URI; None = $MLFLOW_TRACKING_URI, else sqlite:///<out>/mlflow.db."""
    log_model: bool = False
    """At the end of pretraining, log the final export into the run as an MLflow pyfunc model
    (``trainer.mlflow_model``: sequences in, embeddings out)."""
    registered_model: str | None = None
    """With log_model: register it under this name in the MLflow model registry (a new version per run)."""

    def __post_init__(self) -> None:
        check(
            self.registered_model is None or self.log_model,
            "registered_model",
            "needs tracking.log_model=true (the model is registered when it is logged)",
        )
        check(self.registered_model != "", "registered_model", "must be a non-empty name")


@dataclass(kw_only=True)
class PretrainConfig(Config):
    recipe: str = "custom"
    family: Literal["dnagpt", "dnabert"] = "dnagpt"
    """Model family; decides the model config type, the sample template and the loss."""
    tokenizer: str = "dnagpt-6mer"
    model: GPTConfig | BertConfig = field(default_factory=GPTConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    """DNABERT span masking (unused by DNAGPT)."""
    objectives: ObjectivesConfig = field(default_factory=ObjectivesConfig)
    """DNAGPT loss weights (unused by DNABERT)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, _prefix: str = "") -> Self:
        # The model section's type follows the family, so its errors name 'model.<field>' precisely.
        if not isinstance(data, dict):
            return super().from_dict(data, _prefix=_prefix)  # which says what it expected
        data = dict(data)
        family = data.get("family", "dnagpt")
        model_cls = BertConfig if family == "dnabert" else GPTConfig
        if isinstance(data.get("model"), dict):
            data["model"] = model_cls.from_dict(data["model"], _prefix="model")
        return super().from_dict(data, _prefix=_prefix)

    def __post_init__(self) -> None:
        check(self.tokenizer in TOKENIZER_NAMES, "tokenizer", f"must be one of {', '.join(TOKENIZER_NAMES)}")
        check(
            self.tokenizer.startswith(self.family),
            "tokenizer",
            f"the {self.family} family needs a {self.family}-* tokenizer, got {self.tokenizer}",
        )
        expected = BertConfig if self.family == "dnabert" else GPTConfig
        if not isinstance(self.model, expected):
            raise ConfigError("model", f"family {self.family} needs a {expected.__name__}")
        from datapipe.tokenizers import get_tokenizer

        size = get_tokenizer(self.tokenizer).vocab_size
        check(
            self.model.vocab_size == size,
            "model.vocab_size",
            f"{self.model.vocab_size} does not match tokenizer {self.tokenizer} ({size})",
        )
