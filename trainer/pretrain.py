"""A pretraining run (DNAGPT or DNABERT), assembled in explicit steps, each callable on its own:

``check_data`` -> (the launcher sets up the process group) -> ``find_resume_point`` -> ``build_model_and_engine``
-> ``build_loader`` -> ``restore`` -> ``open_tracker`` -> the loop (with ``checkpointer``) -> ``export_final``.

``run_pretrain`` composes them; launchers (``cluster.launch``: a plain process, the deepspeed launcher,
torchrun; ``cluster.ray_train``: Ray Train) only differ in who starts the processes and sets up the process
group before it is called.
"""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from datapipe.common.errors import UsageError
from datapipe.common.tracking import NullTracker, Tracker, default_tracking_uri, read_run_link, start_tracker
from datapipe.loader import ShardLoader
from datapipe.shards.manifest import MANIFEST, read_manifest
from datapipe.tokenizers import get_tokenizer
from kernels.dispatch import chosen_paths
from trainer.checkpoint import (
    check_pickles,
    latest_tag,
    read_state,
    restore_rng,
    save_checkpoint,
    universal_tag_for,
)
from trainer.config import PretrainConfig
from trainer.engine import DistInfo, build_engine
from trainer.families import FAMILIES, count_params
from trainer.loop import StepLoop
from trainer.models.export import export_model
from trainer.samples import TEMPLATE_TOKENS, GptSampleBuilder

log = logging.getLogger(__name__)
# Fields that may differ between a run and its resume; anything else changing means another experiment.
RESUMABLE_CHANGES = {
    "train.steps",
    "train.log_every",
    "train.ckpt_every",
    "tracking.enabled",
    "tracking.tracking_uri",
    "tracking.log_model",
    "tracking.registered_model",
    "loader.num_workers",
    "loader.skip_bad_shards",
    "loader.check_shards",
    "train.max_bad_steps",
    "train.grad_accum_steps",  # e.g. 2 ranks x 1 micro-batch -> 1 rank x 2 keeps the global batch
}


STOP_FILE = "STOP_REQUESTED"


class StopRequested:
    """A stop request: SIGTERM / SIGINT to this rank, or a file ``OUT/STOP_REQUESTED`` (what a Ray Train run's
    driver writes when ``ray job stop`` reaches it; anyone may ``touch`` it). The loop polls it on every
    micro-batch, agrees on it across ranks, and saves a checkpoint before leaving.

    Signal handlers can only be installed from the main thread; Ray Train runs the loop in another thread,
    where the file is the way in."""

    def __init__(self, stop_file: Path | None = None) -> None:
        self.signum = 0
        self.stop_file = stop_file
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signum = signum

    def poll(self) -> int:
        """The signal number asked for (0: none). A stat() of the stop file: microseconds on a local disk."""
        if not self.signum and self.stop_file is not None and self.stop_file.exists():
            self.signum = int(signal.SIGTERM)
        return self.signum


def check_data(cfg: PretrainConfig, data_dir: Path) -> dict[str, Any]:
    manifest = read_manifest(data_dir)
    if "tokenizer" not in manifest or "window_tokens" not in manifest.get("config", {}):
        raise UsageError(
            f"{data_dir}/manifest.json names no tokenizer or window_tokens: not written by `dnafm prepare`; "
            "re-run it"
        )
    if manifest["tokenizer"] != cfg.tokenizer:
        raise UsageError(
            f"{data_dir}/manifest.json: shards use tokenizer {manifest['tokenizer']}, recipe "
            f"'{cfg.recipe}' uses {cfg.tokenizer}; prepare with --tokenizer {cfg.tokenizer}"
        )
    extra = FAMILIES[cfg.family].template_tokens
    window = manifest["config"]["window_tokens"]
    if window + extra > cfg.model.max_seq_len:
        raise UsageError(
            f"{data_dir}: pieces of up to {window} tokens + {extra} template tokens exceed "
            f"model.max_seq_len={cfg.model.max_seq_len}; prepare with --window-tokens "
            f"{cfg.model.max_seq_len - extra}"
        )
    return manifest


def _check_resumable(saved: dict[str, Any], cfg: PretrainConfig) -> None:
    from datapipe.common.config import flatten

    # Read the saved config back through the dataclasses: a field added since it was saved (e.g. objectives.*)
    # takes its default, so only real differences count. Tuples -> lists on both sides, as JSON saves them.
    as_saved = json.loads(json.dumps(PretrainConfig.from_dict(saved).to_dict()))
    old, new = flatten(as_saved), flatten(json.loads(json.dumps(cfg.to_dict())))
    changed = sorted(
        k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES
    )
    if changed:
        raise UsageError(
            f"--resume: the checkpoint was trained with a different config ({', '.join(changed[:6])}); "
            "resume with the same recipe and overrides, or start a new --out"
        )


@dataclass(kw_only=True)
class ResumePoint:
    """Where a run starts: nothing (step 0), or a complete checkpoint, converted to DeepSpeed's universal
    format when the world size changed since it was saved."""

    tag: str | None = None
    state: dict[str, Any] | None = None
    universal: bool = False

    @property
    def step(self) -> int:
        return self.state["step"] if self.state else 0


def find_resume_point(cfg: PretrainConfig, ckpt_dir: Path, *, resume: bool, world_size: int) -> ResumePoint:
    """The checkpoint ``--resume`` continues from (collective when it must be made universal)."""
    tag = latest_tag(ckpt_dir) if resume else None
    if tag is None:
        if resume and dist.get_rank() == 0:
            log.info("--resume: no checkpoint in %s yet; starting from step 0", ckpt_dir)
        return ResumePoint()
    state = read_state(ckpt_dir, tag)
    check_pickles(ckpt_dir / tag)  # before DeepSpeed (or its universal converter) unpickles the files
    _check_resumable(state["config"], cfg)
    if state["world_size"] == world_size:
        return ResumePoint(tag=tag, state=state)
    return ResumePoint(tag=universal_tag_for(ckpt_dir, tag), state=state, universal=True)


def build_model_and_engine(
    cfg: PretrainConfig, dist_info: DistInfo, *, universal: bool = False, user_ds_config: dict | None = None
) -> tuple[Any, dict[str, Any]]:
    """The family's training module (seeded by train.seed) inside a DeepSpeed engine -> (engine, ds_config)."""
    torch.manual_seed(cfg.train.seed)
    log.info(
        "model: %s %d layers x d_model %d, %.2fM parameters",
        cfg.family,
        cfg.model.n_layer,
        cfg.model.d_model,
        count_params(cfg) / 1e6,
    )
    return build_engine(
        FAMILIES[cfg.family].build(cfg),
        cfg.train,
        cfg.optim,
        micro_batch_size=cfg.loader.micro_batch_size,
        dist_info=dist_info,
        extra_config=user_ds_config,
        load_universal=universal,
    )


def build_loader(
    cfg: PretrainConfig, data_dir: Path, dist_info: DistInfo, manifest: dict[str, Any] | None = None
) -> ShardLoader:
    """This rank's slice of the global sample order, batched by the family's builder in loader workers.
    ``manifest``: the one ``check_data`` read (each rank then reads it once)."""
    builder = FAMILIES[cfg.family].collate(cfg, get_tokenizer(cfg.tokenizer))
    return ShardLoader(
        data_dir,
        cfg.loader,
        collate=builder,
        rank=dist_info.rank,
        world_size=dist_info.world_size,
        manifest=manifest,
    )


def restore(engine: Any, loader: ShardLoader, ckpt_dir: Path, point: ResumePoint) -> int:
    """Load weights, optimizer, schedule, loader position and (same world size) RNG states -> the step."""
    if point.state is None:
        return 0
    engine.load_checkpoint(str(ckpt_dir), tag=point.tag)
    loader.load_state_dict(point.state["loader"])
    if not point.universal:
        restore_rng(ckpt_dir, point.tag, dist.get_rank())
    log.info(
        "resumed from %s at step %d%s",
        ckpt_dir / point.tag,
        point.step,
        f" (world size {point.state['world_size']} -> {dist.get_world_size()})" if point.universal else "",
    )
    return point.step


def open_tracker(
    cfg: PretrainConfig,
    out_dir: Path,
    *,
    data_dir: Path,
    point: ResumePoint,
    ds_config: dict[str, Any],
    totals: dict[str, Any] | None = None,
) -> Tracker:
    """Rank 0's MLflow run (a resumed run continues its own); other ranks get a NullTracker. It records its
    data: the manifest (artifact, sha256, sample and token counts) and the prepare run that made it.
    ``totals``: the manifest's, when the caller has read it already (else it is read here)."""
    if dist.get_rank() != 0:
        return NullTracker()
    prepare_run = read_run_link(data_dir).get("run_id")
    tracker = start_tracker(
        experiment=cfg.tracking.experiment,
        run_name=f"pretrain-{cfg.recipe}-{out_dir.name}",
        tracking_uri=cfg.tracking.tracking_uri or default_tracking_uri(out_dir),
        enabled=cfg.tracking.enabled,
        resume_run_id=(point.state or {}).get("mlflow_run_id"),
        stage="pretrain",
        tags={"dnafm.prepare_run_id": prepare_run} if prepare_run else None,
    )
    if point.state is None:
        manifest = data_dir / MANIFEST
        totals = totals if totals is not None else read_manifest(data_dir)["totals"]
        tracker.log_params(
            {
                **cfg.flat(),
                "world_size": dist.get_world_size(),
                "data_dir": str(data_dir),
                "num_params": count_params(cfg),
                "data.manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
                "data.samples": totals["samples"],
                "data.tokens": totals["tokens"],
                "data.prepare_run_id": prepare_run or "",
            }
        )
        tracker.log_artifact(manifest, "data")
    tracker.set_tags({"ds_config": json.dumps(ds_config, sort_keys=True)[:5000]})
    tracker.start_system_metrics()
    return tracker


def checkpointer(
    engine: Any,
    loader: ShardLoader,
    cfg: PretrainConfig,
    ckpt_dir: Path,
    tracker: Tracker,
    on_saved: Callable[[Path, int], None] | None = None,
    progress: Callable[[], dict[str, Any]] | None = None,
) -> Callable[[int], str]:
    """The loop's ``checkpoint(step) -> tag``: a complete checkpoint with our JSON state beside DeepSpeed's
    files; ``on_saved(folder, step)`` runs on every rank after it is complete (e.g. to report it to Ray);
    ``progress()`` adds the loop's counters (tokens seen) to the state."""

    def save(step: int) -> str:
        state = {
            "world_size": dist.get_world_size(),
            "zero_stage": cfg.train.zero_stage,
            "loader": loader.state_dict(),
            "config": cfg.to_dict(),
            "mlflow_run_id": tracker.run_id,
            "mlflow_tracking_uri": tracker.tracking_uri,
            **(progress() if progress else {}),
        }
        tag = save_checkpoint(engine, ckpt_dir, step=step, state=state)
        tracker.set_tags({"checkpoint": str(ckpt_dir / tag)})
        if on_saved is not None:
            on_saved(ckpt_dir / tag, step)
        return tag

    return save


def export_final(
    engine: Any,
    cfg: PretrainConfig,
    out_dir: Path,
    tracker: Tracker,
    provenance: dict[str, Any] | None = None,
) -> Path | None:
    """Consolidated weights -> ``out_dir/final`` (rank 0; collective under ZeRO-3, so every rank calls), with
    ``provenance`` (the MLflow run, recipe, step, tokens seen) that evaluations link back to."""
    family = FAMILIES[cfg.family]
    state_dict = _full_state_dict(engine, cfg.train.zero_stage, family.inner)
    final = None
    if dist.get_rank() == 0:
        final = export_model(
            state_dict,
            out_dir / "final",
            config=cfg.to_dict(),
            tokenizer=get_tokenizer(cfg.tokenizer),
            provenance=provenance,
        )
        tracker.set_tags({"export": str(final), **{f"kernels.{k}": v for k, v in chosen_paths().items()}})
        log.info("exported %s", final)
        if cfg.tracking.log_model:
            log_final_model(final, cfg, tracker)
    return final


def log_final_model(final: Path, cfg: PretrainConfig, tracker: Tracker) -> None:
    """The export as an MLflow pyfunc model in the run (and the registry). Like all tracking, a failure is a
    warning: the weights are already safe in ``final/``."""
    if tracker.run_id is None or tracker.tracking_uri is None:
        log.warning("tracking.log_model: this run is not tracked, so no MLflow model is logged")
        return
    try:
        from trainer.mlflow_model import log_pyfunc

        logged = log_pyfunc(
            final,
            tracking_uri=tracker.tracking_uri,
            run_id=tracker.run_id,
            registered_model=cfg.tracking.registered_model,
        )
    except Exception as err:  # tracking must never fail a finished run
        log.warning("could not log the MLflow model (%s); the export is in %s", err, final)
        return
    tracker.set_tags({"model_uri": logged.get("registered_uri", logged["model_uri"])})


def run_pretrain(
    cfg: PretrainConfig,
    *,
    dist_info: DistInfo,
    data_dir: Path,
    out_dir: Path,
    resume: bool = False,
    user_ds_config: dict[str, Any] | None = None,
    on_checkpoint: Callable[[Path, int], None] | None = None,
    manifest: dict[str, Any] | None = None,
) -> str:
    """Train on the process group ``dist_info`` describes; returns how the run ended: 'completed', 'signal', or
    raises after too many NaN steps. ``on_checkpoint(folder, step)`` runs on every rank after each complete
    checkpoint. ``manifest``: what ``check_data`` returned, when the launcher checked the data already in this
    process (else it is checked here); its copy goes to the loader, so each rank reads the manifest once."""
    if manifest is None:
        manifest = check_data(cfg, data_dir)
    ckpt_dir = out_dir / "checkpoints"
    point = find_resume_point(cfg, ckpt_dir, resume=resume, world_size=dist_info.world_size)
    if cfg.optim.warmup_steps >= cfg.train.steps and dist_info.rank == 0:
        log.warning(
            "optim.warmup_steps=%d >= train.steps=%d: the learning rate never reaches its peak",
            cfg.optim.warmup_steps,
            cfg.train.steps,
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    if dist_info.rank == 0:
        cfg.save_json(out_dir / "config.json")
        (out_dir / STOP_FILE).unlink(missing_ok=True)  # a request that stopped an earlier attempt
    dist.barrier()
    engine, ds_cfg = build_model_and_engine(
        cfg, dist_info, universal=point.universal, user_ds_config=user_ds_config
    )
    loader = build_loader(cfg, data_dir, dist_info, manifest)
    totals = manifest["totals"]
    del manifest  # O(shards) dicts; the loader keeps a compact table of the shards
    start_step = restore(engine, loader, ckpt_dir, point)
    tracker = open_tracker(cfg, out_dir, data_dir=data_dir, point=point, ds_config=ds_cfg, totals=totals)
    loop = StepLoop(
        cfg=cfg,
        metric_keys=FAMILIES[cfg.family].metrics,
        engine=engine,
        loader=loader,
        tracker=tracker,
        device=dist_info.device,
        jsonl=_metrics_file(out_dir, start_step) if dist_info.rank == 0 else None,
        n_params=count_params(cfg),
        stop=StopRequested(out_dir / STOP_FILE),
        checkpoint=checkpointer(
            engine,
            loader,
            cfg,
            ckpt_dir,
            tracker,
            on_checkpoint,
            progress=lambda: {"tokens_seen": loop.tokens_seen},
        ),
        tokens_seen=int((point.state or {}).get("tokens_seen", 0)),
    )
    try:
        outcome = loop.run(start_step)
    except Exception:
        tracker.finish("FAILED")
        raise
    if outcome == "signal":
        tracker.finish("KILLED")
        return outcome
    export_final(
        engine, cfg, out_dir, tracker, provenance=provenance_of(cfg, tracker, data_dir, loop.tokens_seen)
    )
    tracker.finish()
    dist.barrier()
    return outcome


def provenance_of(cfg: PretrainConfig, tracker: Tracker, data_dir: Path, tokens_seen: int) -> dict[str, Any]:
    """Where an export came from: its MLflow run (id, store, experiment), recipe, steps, tokens seen, and the
    prepare run of its data (``DATA/mlflow_run.json``)."""
    return {
        "run_id": tracker.run_id,
        "tracking_uri": tracker.tracking_uri,
        "experiment": cfg.tracking.experiment,
        "recipe": cfg.recipe,
        "step": cfg.train.steps,
        "tokens_seen": tokens_seen,
        "data_dir": str(data_dir),
        "prepare_run_id": read_run_link(data_dir).get("run_id"),
    }


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
    from datapipe.shards.format import Sample
    from trainer.samples import render

    tok = get_tokenizer(tokenizer_name)
    sample = Sample(
        key="u000000-000000", ids=tok.encode(seq).astype(np.uint16), meta={"token": "R", "gc": 0.5}
    )
    builder = GptSampleBuilder(tokenizer=tok, max_seq_len=len(sample.ids) + TEMPLATE_TOKENS)
    return render(tok, builder.encode(sample, reverse=False))
