"""The DNAGPT pretraining loop, assembled in explicit steps: model -> engine -> loader -> tracker -> loop."""

from __future__ import annotations

import json
import logging
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from datapipe.loader import ShardLoader
from datapipe.shards import read_manifest
from datapipe.tokenizers import get_tokenizer
from datapipe.tracking import NullTracker, Tracker, default_tracking_uri, start_tracker
from kernels.dispatch import chosen_paths
from trainer.checkpoint import export_model, save_checkpoint
from trainer.config import PretrainConfig
from trainer.engine import build_engine, init_distributed
from trainer.gpt import DNAGPT, count_params
from trainer.losses import DNAGPTForPretraining
from trainer.samples import TEMPLATE_TOKENS, GptSampleBuilder

log = logging.getLogger(__name__)
LOSS_KEYS = ("loss", "loss_lm", "loss_order", "loss_gc", "order_acc")


def check_data(cfg: PretrainConfig, data_dir: Path) -> dict[str, Any]:
    manifest = read_manifest(data_dir)
    if manifest["tokenizer"] != cfg.tokenizer:
        raise ValueError(
            f"{data_dir}/manifest.json: shards use tokenizer {manifest['tokenizer']}, recipe "
            f"'{cfg.recipe}' uses {cfg.tokenizer}; prepare with --tokenizer {cfg.tokenizer}"
        )
    window = manifest["config"]["window_tokens"]
    if window + TEMPLATE_TOKENS > cfg.model.max_seq_len:
        raise ValueError(
            f"{data_dir}: windows of {window} tokens + {TEMPLATE_TOKENS} template tokens exceed "
            f"model.max_seq_len={cfg.model.max_seq_len}; prepare with --window-tokens "
            f"{cfg.model.max_seq_len - TEMPLATE_TOKENS}"
        )
    return manifest


def run_pretrain(cfg: PretrainConfig, *, data_dir: Path, out_dir: Path) -> dict[str, float]:
    """Train; returns the last logged metrics (on rank 0; other ranks return {})."""
    check_data(cfg, data_dir)  # before any distributed set-up: a wrong --data fails in a second
    dist_info = init_distributed()
    if cfg.optim.warmup_steps >= cfg.train.steps and dist_info.rank == 0:
        log.warning(
            "optim.warmup_steps=%d >= train.steps=%d: the learning rate never reaches its peak",
            cfg.optim.warmup_steps,
            cfg.train.steps,
        )
    torch.manual_seed(cfg.train.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    if dist_info.rank == 0:
        cfg.save_json(out_dir / "config.json")
    tokenizer = get_tokenizer(cfg.tokenizer)
    log.info(
        "model: DNAGPT %d layers x d_model %d, %.2fM parameters",
        cfg.model.n_layer,
        cfg.model.d_model,
        count_params(cfg.model) / 1e6,
    )

    model = DNAGPTForPretraining(DNAGPT(cfg.model))
    engine, ds_cfg = build_engine(
        model, cfg.train, cfg.optim, micro_batch_size=cfg.loader.micro_batch_size, dist_info=dist_info
    )
    builder = GptSampleBuilder(tokenizer=tokenizer, max_seq_len=cfg.model.max_seq_len)
    loader = ShardLoader(
        data_dir, cfg.loader, collate=builder, rank=dist_info.rank, world_size=dist_info.world_size
    )
    tracker: Tracker = NullTracker()
    if dist_info.rank == 0:
        tracker = start_tracker(
            experiment=cfg.tracking.experiment,
            run_name=f"pretrain-{cfg.recipe}",
            tracking_uri=cfg.tracking.tracking_uri or default_tracking_uri(out_dir),
            enabled=cfg.tracking.enabled,
        )
        tracker.log_params({**cfg.flat(), "world_size": dist_info.world_size, "data_dir": str(data_dir)})

    jsonl = out_dir / "metrics.jsonl" if dist_info.rank == 0 else None
    if jsonl is not None:
        jsonl.unlink(missing_ok=True)
    last = _loop(cfg, engine, loader, tracker, dist_info.device, jsonl)

    ckpt_dir = out_dir / "checkpoints"
    tag = save_checkpoint(
        engine,
        ckpt_dir,
        step=cfg.train.steps,
        client_state={"step": cfg.train.steps, "loader": loader.state_dict(), "config": cfg.to_dict()},
    )
    state = _full_state_dict(engine, cfg.train.zero_stage)
    if dist_info.rank == 0:
        final = export_model(state, out_dir / "final", config=cfg.to_dict(), tokenizer=tokenizer)
        tracker.set_tags(
            {
                "checkpoint": str(ckpt_dir / tag),
                "export": str(final),
                **{f"kernels.{k}": v for k, v in chosen_paths().items()},
            }
        )
        tracker.finish()
        log.info("exported %s", final)
    dist.barrier()
    return last


def _full_state_dict(engine: Any, zero_stage: int) -> dict[str, torch.Tensor]:
    """Consolidated weights of the DNAGPT module (collective under ZeRO-3: every rank must call)."""
    if zero_stage == 3:
        full = engine._zero3_consolidated_16bit_state_dict()
        return {k.removeprefix("gpt."): v for k, v in (full or {}).items()}
    return engine.module.gpt.state_dict()


def _loop(
    cfg: PretrainConfig,
    engine: Any,
    loader: ShardLoader,
    tracker: Tracker,
    device: torch.device,
    jsonl: Path | None,
) -> dict[str, float]:
    sums = dict.fromkeys(LOSS_KEYS, 0.0)
    tokens = samples = micro = 0
    t0 = time.perf_counter()
    last: dict[str, float] = {}
    for step in range(1, cfg.train.steps + 1):
        for _ in range(cfg.train.grad_accum_steps):
            batch = {k: v.to(device, non_blocking=True) for k, v in next(loader).items()}
            out = engine(batch)
            engine.backward(out["loss"])
            engine.step()
            for k in LOSS_KEYS:
                sums[k] += out[k].detach()
            tokens += int(batch["num_tokens"])
            samples += batch["input_ids"].shape[0]
            micro += 1
        if step % cfg.train.log_every == 0 or step == cfg.train.steps:
            last = _log_window(step, sums, micro, tokens, samples, time.perf_counter() - t0, engine, tracker)
            if jsonl is not None:
                with open(jsonl, "a") as f:
                    f.write(json.dumps({"step": step, **last}) + "\n")
            sums = dict.fromkeys(LOSS_KEYS, 0.0)
            tokens = samples = micro = 0
            t0 = time.perf_counter()
    return last


def _log_window(
    step: int,
    sums: dict[str, Any],
    micro: int,
    tokens: int,
    samples: int,
    elapsed: float,
    engine: Any,
    tracker: Tracker,
) -> dict[str, float]:
    # One all-reduce per log window (a sync point), not per step.
    world = dist.get_world_size()
    vec = torch.tensor([float(sums[k]) / micro for k in LOSS_KEYS] + [tokens, samples], dtype=torch.float64)
    dist.all_reduce(vec)
    means = (vec[: len(LOSS_KEYS)] / world).tolist()
    metrics = {f"train/{k}": v for k, v in zip(LOSS_KEYS, means, strict=True)}
    grad_norm = engine.get_global_grad_norm()
    metrics.update(
        {
            "train/lr": engine.get_lr()[0],
            "train/grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "train/tokens_per_s": float(vec[-2]) / elapsed,
            "train/samples_per_s": float(vec[-1]) / elapsed,
            "train/peak_mem_gb": _peak_mem_gb(),
        }
    )
    tracker.log_metrics(metrics, step=step)
    log.info(
        "step %d  loss %.4f (lm %.4f, order %.4f, gc %.5f)  order_acc %.3f  lr %.2e  %.0f tok/s",
        step,
        metrics["train/loss"],
        metrics["train/loss_lm"],
        metrics["train/loss_order"],
        metrics["train/loss_gc"],
        metrics["train/order_acc"],
        metrics["train/lr"],
        metrics["train/tokens_per_s"],
    )
    return metrics


def _peak_mem_gb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def sample_example(tokenizer_name: str = "dnagpt-6mer", seq: str = "ACGTACGGATTACCATGN" * 2) -> list[str]:
    """One pretraining sample, token by token (for the README and `dnafm pretrain --show-sample`)."""
    from datapipe.shards import Sample
    from trainer.samples import render

    tok = get_tokenizer(tokenizer_name)
    sample = Sample(
        key="u000000-000000", ids=tok.encode(seq).astype(np.uint16), meta={"token": "R", "gc": 0.5}
    )
    builder = GptSampleBuilder(tokenizer=tok, max_seq_len=len(sample.ids) + TEMPLATE_TOKENS)
    return render(tok, builder.encode(sample, reverse=False))
