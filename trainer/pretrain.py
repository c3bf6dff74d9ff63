"""A pretraining run (DNAGPT or DNABERT), assembled in explicit steps: data check -> distributed -> model + engine
-> loader -> resume -> tracker -> loop -> final checkpoint + export."""

from __future__ import annotations

import json
import logging
import signal
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
from trainer.checkpoint import (
    export_model,
    latest_tag,
    read_state,
    restore_rng,
    save_checkpoint,
    universal_tag_for,
)
from trainer.config import PretrainConfig
from trainer.engine import build_engine, init_distributed
from trainer.families import FAMILIES, count_params
from trainer.loop import StepLoop
from trainer.samples import TEMPLATE_TOKENS, GptSampleBuilder

log = logging.getLogger(__name__)
# Fields that may differ between a run and its resume; anything else changing means another experiment.
RESUMABLE_CHANGES = {
    "train.steps",
    "train.log_every",
    "train.ckpt_every",
    "tracking.enabled",
    "tracking.tracking_uri",
    "loader.num_workers",
    "loader.skip_bad_shards",
    "train.max_bad_steps",
    "train.grad_accum_steps",  # e.g. 2 ranks x 1 micro-batch -> 1 rank x 2 keeps the global batch
}


class StopRequested:
    """SIGTERM / SIGINT set a flag; the loop checks it between steps and saves before leaving."""

    def __init__(self) -> None:
        self.signum = 0
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signum = signum


def check_data(cfg: PretrainConfig, data_dir: Path) -> dict[str, Any]:
    manifest = read_manifest(data_dir)
    if manifest["tokenizer"] != cfg.tokenizer:
        raise ValueError(
            f"{data_dir}/manifest.json: shards use tokenizer {manifest['tokenizer']}, recipe "
            f"'{cfg.recipe}' uses {cfg.tokenizer}; prepare with --tokenizer {cfg.tokenizer}"
        )
    extra = FAMILIES[cfg.family].template_tokens
    window = manifest["config"]["window_tokens"]
    if window + extra > cfg.model.max_seq_len:
        raise ValueError(
            f"{data_dir}: pieces of up to {window} tokens + {extra} template tokens exceed "
            f"model.max_seq_len={cfg.model.max_seq_len}; prepare with --window-tokens "
            f"{cfg.model.max_seq_len - extra}"
        )
    return manifest


def _check_resumable(saved: dict[str, Any], cfg: PretrainConfig) -> None:
    from datapipe.config import flatten

    old, new = flatten(saved), flatten(json.loads(json.dumps(cfg.to_dict())))  # tuples -> lists, as saved
    changed = sorted(
        k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES
    )
    if changed:
        raise ValueError(
            f"--resume: the checkpoint was trained with a different config ({', '.join(changed[:6])}); "
            "resume with the same recipe and overrides, or start a new --out"
        )


def run_pretrain(
    cfg: PretrainConfig,
    *,
    data_dir: Path,
    out_dir: Path,
    resume: bool = False,
    user_ds_config: dict[str, Any] | None = None,
) -> str:
    """Train; returns how the run ended: 'completed', 'signal', or raises after too many NaN steps."""
    check_data(cfg, data_dir)  # before any distributed set-up: a wrong --data fails in a second
    dist_info = init_distributed()
    rank, world = dist_info.rank, dist_info.world_size
    ckpt_dir = out_dir / "checkpoints"
    tag = latest_tag(ckpt_dir) if resume else None
    saved = read_state(ckpt_dir, tag) if tag else None
    universal = bool(saved and saved["world_size"] != world)
    if saved:
        _check_resumable(saved["config"], cfg)
        if universal:
            tag = universal_tag_for(ckpt_dir, tag)
    elif resume and rank == 0:
        log.info("--resume: no checkpoint in %s yet; starting from step 0", ckpt_dir)
    if cfg.optim.warmup_steps >= cfg.train.steps and rank == 0:
        log.warning(
            "optim.warmup_steps=%d >= train.steps=%d: the learning rate never reaches its peak",
            cfg.optim.warmup_steps,
            cfg.train.steps,
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        cfg.save_json(out_dir / "config.json")

    torch.manual_seed(cfg.train.seed)
    tokenizer = get_tokenizer(cfg.tokenizer)
    family = FAMILIES[cfg.family]
    n_params = count_params(cfg)
    log.info(
        "model: %s %d layers x d_model %d, %.2fM parameters",
        cfg.family,
        cfg.model.n_layer,
        cfg.model.d_model,
        n_params / 1e6,
    )
    model = family.build(cfg)
    engine, ds_cfg = build_engine(
        model,
        cfg.train,
        cfg.optim,
        micro_batch_size=cfg.loader.micro_batch_size,
        dist_info=dist_info,
        extra_config=user_ds_config,
        load_universal=universal,
    )
    builder = family.collate(cfg, tokenizer)
    loader = ShardLoader(data_dir, cfg.loader, collate=builder, rank=rank, world_size=world)

    start_step = 0
    if saved:
        engine.load_checkpoint(str(ckpt_dir), tag=tag)
        loader.load_state_dict(saved["loader"])
        if not universal:
            restore_rng(ckpt_dir, tag, rank)
        start_step = saved["step"]
        log.info(
            "resumed from %s at step %d%s",
            ckpt_dir / tag,
            start_step,
            f" (world size {saved['world_size']} -> {world})" if universal else "",
        )

    tracker: Tracker = NullTracker()
    if rank == 0:
        tracker = start_tracker(
            experiment=cfg.tracking.experiment,
            run_name=f"pretrain-{cfg.recipe}",
            tracking_uri=cfg.tracking.tracking_uri or default_tracking_uri(out_dir),
            enabled=cfg.tracking.enabled,
            resume_run_id=(saved or {}).get("mlflow_run_id"),
        )
        if not saved:
            tracker.log_params(
                {**cfg.flat(), "world_size": world, "data_dir": str(data_dir), "num_params": n_params}
            )
        tracker.set_tags({"ds_config": json.dumps(ds_cfg, sort_keys=True)[:5000]})
        tracker.start_system_metrics()
    jsonl = _metrics_file(out_dir, start_step) if rank == 0 else None

    def checkpoint(step: int) -> str:
        state = {
            "world_size": world,
            "zero_stage": cfg.train.zero_stage,
            "loader": loader.state_dict(),
            "config": cfg.to_dict(),
            "mlflow_run_id": tracker.run_id,
        }
        new_tag = save_checkpoint(engine, ckpt_dir, step=step, state=state)
        tracker.set_tags({"checkpoint": str(ckpt_dir / new_tag)})
        return new_tag

    stop = StopRequested()
    loop = StepLoop(
        cfg=cfg,
        metric_keys=family.metrics,
        engine=engine,
        loader=loader,
        tracker=tracker,
        device=dist_info.device,
        jsonl=jsonl,
        n_params=n_params,
        stop=stop,
        checkpoint=checkpoint,
    )
    try:
        outcome = loop.run(start_step)
    except Exception:
        tracker.finish("FAILED")
        raise
    if outcome == "signal":
        tracker.finish("KILLED")
        return outcome
    state_dict = _full_state_dict(engine, cfg.train.zero_stage, family.inner)
    if rank == 0:
        final = export_model(state_dict, out_dir / "final", config=cfg.to_dict(), tokenizer=tokenizer)
        tracker.set_tags({"export": str(final), **{f"kernels.{k}": v for k, v in chosen_paths().items()}})
        tracker.finish()
        log.info("exported %s", final)
    dist.barrier()
    return outcome


def _metrics_file(out_dir: Path, start_step: int) -> Path:
    """metrics.jsonl keeps the lines up to the resumed step, so the file is the run's one loss curve."""
    path = out_dir / "metrics.jsonl"
    if path.exists():
        keep = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= start_step]
        path.write_text("".join(line + "\n" for line in keep))
    return path


def _full_state_dict(engine: Any, zero_stage: int, inner: str) -> dict[str, torch.Tensor]:
    """Consolidated weights of the bare model (collective under ZeRO-3: every rank must call)."""
    if zero_stage == 3:
        full = engine._zero3_consolidated_16bit_state_dict()
        return {k.removeprefix(f"{inner}."): v for k, v in (full or {}).items()}
    return getattr(engine.module, inner).state_dict()


def sample_example(tokenizer_name: str = "dnagpt-6mer", seq: str = "ACGTACGGATTACCATGNAAGCTT") -> list[str]:
    """One pretraining sample, token by token (for the README and `dnafm pretrain --show-sample`)."""
    from datapipe.shards import Sample
    from trainer.samples import render

    tok = get_tokenizer(tokenizer_name)
    sample = Sample(
        key="u000000-000000", ids=tok.encode(seq).astype(np.uint16), meta={"token": "R", "gc": 0.5}
    )
    builder = GptSampleBuilder(tokenizer=tok, max_seq_len=len(sample.ids) + TEMPLATE_TOKENS)
    return render(tok, builder.encode(sample, reverse=False))
