"""DeepSpeed engine set-up: the ds_config, optimizer groups and the LR schedule, on the process group the
launcher set up (``cluster.launch`` or Ray Train; see :func:`group_info`).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import torch

from trainer.config import OptimConfig, TrainConfig

log = logging.getLogger(__name__)


@dataclass(kw_only=True, slots=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def group_info() -> DistInfo:
    """Rank, world size and device of this process in the torch.distributed group that its launcher set up
    (``cluster.launch.init_process_group`` for the deepspeed launcher, torchrun or a plain process; Ray Train
    for ``--launcher ray``). DeepSpeed adopts that group when the engine is built."""
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return DistInfo(
        rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=device
    )


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def ds_config(
    train: TrainConfig, optim: OptimConfig, *, micro_batch_size: int, world_size: int, precision: str
) -> dict[str, Any]:
    """The DeepSpeed config of a run, derived from our typed configs (written beside checkpoints)."""
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": train.grad_accum_steps,
        "train_batch_size": micro_batch_size * train.grad_accum_steps * world_size,
        "gradient_clipping": optim.grad_clip,
        "zero_optimization": {"stage": train.zero_stage},
        # True only when resuming from a universal checkpoint (another world size); set by the caller.
        "checkpoint": {"load_universal": False},
        "steps_per_print": 10**9,  # we log ourselves
        "wall_clock_breakdown": False,
    }
    if train.offload_optimizer:
        cfg["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
        cfg["zero_force_ds_cpu_optimizer"] = False  # keep our torch AdamW (no compiled CPU Adam needed)
    if precision == "bf16":
        cfg["bf16"] = {"enabled": True}
    elif precision == "fp16":
        cfg["fp16"] = {"enabled": True, "initial_scale_power": 16}
    return cfg


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices (including embeddings, as GPT-2 does); not LayerNorm weights or biases."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(optim: OptimConfig, total_steps: int):
    """Linear warm-up to 1, then cosine or linear decay to min_lr_ratio at total_steps."""

    def fn(step: int) -> float:
        if optim.warmup_steps and step < optim.warmup_steps:
            return (step + 1) / optim.warmup_steps
        span = max(total_steps - optim.warmup_steps, 1)
        progress = min(max(step - optim.warmup_steps, 0) / span, 1.0)
        if optim.schedule == "linear":
            return 1.0 - (1 - optim.min_lr_ratio) * progress
        return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return fn


def build_engine(
    model: torch.nn.Module,
    train: TrainConfig,
    optim: OptimConfig,
    *,
    micro_batch_size: int,
    dist_info: DistInfo,
    extra_config: dict[str, Any] | None = None,
    load_universal: bool = False,
):
    """deepspeed.initialize with torch AdamW (no JIT-compiled fused Adam on CPU) and our schedule."""
    import deepspeed

    precision = resolve_precision(train.precision, dist_info.device)
    config = ds_config(
        train, optim, micro_batch_size=micro_batch_size, world_size=dist_info.world_size, precision=precision
    )
    config["checkpoint"]["load_universal"] = load_universal
    if extra_config:
        config = merge_user_config(config, extra_config)
    model = model.to(dist_info.device)
    if train.activation_checkpointing:
        apply_activation_checkpointing(model)
    if train.zero_stage == 3:
        register_external_parameters(model)
    optimizer = torch.optim.AdamW(
        param_groups(model, optim.weight_decay),
        lr=optim.lr,
        betas=tuple(optim.betas),
        eps=optim.eps,
        fused=dist_info.device.type == "cuda",
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(optim, train.steps))
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config
    )
    log.info(
        "DeepSpeed engine: ZeRO stage %d, %s, world size %d, device %s",
        train.zero_stage,
        precision,
        dist_info.world_size,
        dist_info.device,
    )
    return engine, config


def merge_user_config(ours: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    """A user's ds.json (``--deepspeed_config``) wins key by key over the config derived from the recipe.

    If it names any batch-size key, ours are dropped so DeepSpeed derives the missing one itself.
    """
    merged = dict(ours)
    batch_keys = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
    if any(k in user for k in batch_keys):
        for k in batch_keys:
            merged.pop(k, None)
    for key, value in user.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def apply_activation_checkpointing(model: torch.nn.Module) -> None:
    """Wrap every transformer block so its activations are recomputed in backward (trainer-side, not in the model)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for parent in model.modules():
        blocks = getattr(parent, "blocks", None)
        if isinstance(blocks, torch.nn.ModuleList):
            for i, block in enumerate(blocks):
                blocks[i] = checkpoint_wrapper(block)


def register_external_parameters(model: torch.nn.Module) -> None:
    """ZeRO-3 gathers a module's parameters around that module's forward. The tied embedding matrix is
    also read outside its own forward (the token-embedding ops, the LM heads, and the fused k-mer
    embedding, which the training module calls), so tell ZeRO-3 that the enclosing modules use it.
    DNAGPT calls it ``wte``, DNABERT ``word``."""
    import deepspeed

    for module in model.modules():
        for attr in ("wte", "word"):
            table = getattr(module, attr, None)
            if isinstance(table, torch.nn.Embedding):
                deepspeed.zero.register_external_parameter(module, table.weight)
                deepspeed.zero.register_external_parameter(model, table.weight)
