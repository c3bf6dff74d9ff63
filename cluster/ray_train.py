"""``dnafm pretrain --launcher ray``: Ray Train (Train V2 ``TorchTrainer``) runs the DeepSpeed ranks.

Each Ray Train worker is one rank: Ray places the workers (``--placement spread|pack``), sets up the
torch.distributed group (gloo on CPU, nccl on GPU) and DeepSpeed adopts it. Inside, the worker runs the same
``trainer.pretrain.run_pretrain`` as every other launcher: same loop, engine, checkpoints and MLflow logging.

Faults. Every complete dnafm checkpoint is reported to Ray (``ray.train.report(..., checkpoint=...)``), in
place: it already lies on the shared ``--out``, so nothing is copied. When a worker or its node dies, Ray
restarts the worker group (``--max-failures K``) and the new group resumes from the last complete checkpoint.
A restarted group knows it is one from ``OUT/RAY_LAUNCH`` (this launch's id, written by the first group's rank 0),
not from Ray's checkpoint registry: Ray registers a report only when its controller next polls the workers, so a
fault in between would otherwise restart the run from step 0 over its own checkpoints (seen in CI).
With ``--num-workers MIN-MAX`` (elastic) the new group may be smaller: it resumes through DeepSpeed's universal
checkpoint and keeps the global batch by raising gradient accumulation (the global batch must therefore divide
evenly at every world size in the range; checked before anything starts).

Stopping. ``ray job stop`` (or Ctrl-C) sends SIGTERM to this driver, which writes ``OUT/STOP_REQUESTED``;
every rank sees it at its next micro-batch, they save a checkpoint at the same step and return, and
``--resume`` continues exactly. Ray force-kills a job ``RAY_JOB_STOP_WAIT_TIME_S`` (default 3) seconds after
the signal, so give a job that should stop cleanly more time, e.g.
``--runtime-env-json '{"env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": "120"}}'``.

Records. ``RunConfig(storage_path=OUT's parent, name=OUT's name)``: Ray Train's run directory is ``OUT`` itself
(its ``checkpoint_manager_snapshot.json`` lists the reported checkpoints, which Ray requires to lie inside its
run directory); checkpoints in ``OUT/checkpoints``; MLflow where the driver would log (``$MLFLOW_TRACKING_URI`` or ``OUT/mlflow.db``),
resolved here and handed to the workers.
"""

from __future__ import annotations

import logging
import os
import signal
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from datapipe.common.config import Config, check
from datapipe.common.errors import UsageError, UserError
from datapipe.common.tracking import default_tracking_uri

log = logging.getLogger(__name__)


class RayTrainFailed(UserError, RuntimeError):
    """Ray Train gave up (more failures than --max-failures); the workers' own messages are in the log above."""


@dataclass(kw_only=True)
class RayTrainConfig(Config):
    """How Ray Train runs the ranks (not part of the experiment: a run may resume under another launcher)."""

    num_workers: str = "1"
    """Ranks: 'N', or 'MIN-MAX' for elastic training (the group continues with as many as the cluster holds)."""
    cpus_per_worker: float = 1.0
    """CPUs each rank reserves."""
    gpus_per_worker: float = 0.0
    """GPUs each rank reserves; > 0 means nccl, 0 means CPU + gloo."""
    placement: Literal["spread", "pack"] = "pack"
    """spread: ranks on as many nodes as possible; pack: on as few as possible."""
    ray_address: str | None = None
    """Cluster to join; None: $RAY_ADDRESS, else a private instance on this machine."""
    max_failures: int = 0
    """Worker-group restarts after a failure (a dead worker or node, an error) before the run fails."""

    def __post_init__(self) -> None:
        lo, _, hi = str(self.num_workers).partition("-")
        ok = lo.isdigit() and (not hi or hi.isdigit())
        check(ok, "num_workers", f"must be N or MIN-MAX with whole numbers, got {self.num_workers!r}")
        check(1 <= self.min_workers <= self.max_workers, "num_workers", "needs 1 <= MIN <= MAX")
        check(self.cpus_per_worker > 0, "cpus_per_worker", "must be > 0")
        check(self.gpus_per_worker >= 0, "gpus_per_worker", "must be >= 0")
        check(self.max_failures >= 0, "max_failures", "must be >= 0")

    @property
    def min_workers(self) -> int:
        return int(str(self.num_workers).partition("-")[0])

    @property
    def max_workers(self) -> int:
        lo, _, hi = str(self.num_workers).partition("-")
        return int(hi or lo)

    @classmethod
    def from_args(cls, args: Any) -> RayTrainConfig:
        fields = (
            "num_workers",
            "cpus_per_worker",
            "gpus_per_worker",
            "placement",
            "ray_address",
            "max_failures",
        )
        return cls.from_dict({f: getattr(args, f) for f in fields if getattr(args, f, None) is not None})


def accumulation_at(cfg: Any, world_size: int, global_batch: int) -> int:
    """Micro-batches per step on each rank that keep ``global_batch`` samples per step at ``world_size``."""
    per_step = world_size * cfg.loader.micro_batch_size
    if global_batch % per_step:
        raise UsageError(
            f"the global batch of {global_batch} samples cannot be kept at {world_size} ranks x micro-batch "
            f"{cfg.loader.micro_batch_size}; choose --num-workers MIN-MAX and loader.micro_batch_size so that "
            "every world size in the range divides it"
        )
    return global_batch // per_step


def worker_loop(config: dict[str, Any]) -> None:
    """One rank, inside a Ray Train worker (which has set up the process group and RANK / WORLD_SIZE)."""
    import ray.train
    import torch

    from datapipe.common.logs import setup_logging
    from trainer.config import PretrainConfig
    from trainer.engine import group_info
    from trainer.pretrain import run_pretrain

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    setup_logging(only=True)
    ctx = ray.train.get_context()
    cfg = PretrainConfig.from_dict(config["config"])
    world = ctx.get_world_size()
    accum = accumulation_at(cfg, world, config["global_batch"])
    if accum != cfg.train.grad_accum_steps:
        log.info("world size %d: %d micro-batches per step keep the global batch of %d", world, accum,
                 config["global_batch"])  # fmt: skip
    cfg = cfg.with_overrides([f"train.grad_accum_steps={accum}"])
    restarted = group_restarted(Path(config["out_dir"]), config["launch_id"])
    if restarted and ctx.get_world_rank() == 0:
        log.info("Ray restarted the worker group: resuming from the last complete checkpoint")

    def report(folder: Path, step: int) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(str(folder)) if ctx.get_world_rank() == 0 else None
        # In place: the checkpoint is complete on the shared --out already; Ray records where it is.
        ray.train.report({"step": step}, checkpoint=checkpoint, checkpoint_dir_name=folder.name,
                         checkpoint_upload_fn=lambda ckpt, _name: ckpt)  # fmt: skip

    run_pretrain(
        cfg,
        dist_info=group_info(),
        data_dir=Path(config["data_dir"]),
        out_dir=Path(config["out_dir"]),
        resume=config["resume"] or restarted,
        user_ds_config=config["user_ds_config"],
        on_checkpoint=report,
    )


LAUNCH_FILE = "RAY_LAUNCH"


def group_restarted(out_dir: Path, launch_id: str) -> bool:
    """True when an earlier worker group of this launch has started in ``out_dir`` (so this one is Ray's
    restart after a fault). Rank 0 reads and then writes ``OUT/RAY_LAUNCH``; every rank gets its answer.
    Collective."""
    import torch
    import torch.distributed as dist

    from datapipe.common.files import write_atomic

    seen = torch.zeros(1, dtype=torch.int64)
    if dist.get_backend() == "nccl":
        seen = seen.cuda()
    if dist.get_rank() == 0:
        marker = out_dir / LAUNCH_FILE
        seen += int(marker.is_file() and marker.read_text().strip() == launch_id)
        write_atomic(marker, launch_id + "\n")
    dist.broadcast(seen, src=0)
    return bool(seen.item())


def fit(
    cfg: Any,
    launch: RayTrainConfig,
    *,
    data_dir: Path,
    out_dir: Path,
    resume: bool,
    user_ds_config: dict | None,
) -> int:
    """Run ``cfg`` with Ray Train; the exit code: 0 done, 143 stopped on request (checkpoint saved)."""
    os.environ.setdefault(
        "RAY_DEDUP_LOGS", "0"
    )  # read when ray is imported: every rank's lines, not summaries
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from cluster.ray_connect import connect
    from trainer.pretrain import STOP_FILE

    global_batch = launch.max_workers * cfg.loader.micro_batch_size * cfg.train.grad_accum_steps
    for world in range(launch.min_workers, launch.max_workers + 1):
        accumulation_at(cfg, world, global_batch)  # refuse before any worker starts
    out_dir, data_dir = out_dir.resolve(), data_dir.resolve()
    uri = cfg.tracking.tracking_uri or default_tracking_uri(out_dir)
    cfg = cfg.with_overrides([f"tracking.tracking_uri={uri}"])  # the workers log where this driver would
    connect(
        launch.ray_address,
        num_cpus=max(1, round(launch.max_workers * launch.cpus_per_worker)),
        num_gpus=round(launch.max_workers * launch.gpus_per_worker) if launch.gpus_per_worker else None,
        log_to_driver=True,
    )
    _check_resources(launch)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / STOP_FILE).unlink(missing_ok=True)
    gpu = launch.gpus_per_worker > 0
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={
            "config": cfg.to_dict(),
            "global_batch": global_batch,
            "data_dir": str(data_dir),
            "out_dir": str(out_dir),
            "resume": resume,
            "launch_id": uuid.uuid4().hex,
            "user_ds_config": user_ds_config,
        },
        scaling_config=ScalingConfig(
            num_workers=launch.max_workers
            if launch.min_workers == launch.max_workers
            else (launch.min_workers, launch.max_workers),
            use_gpu=gpu,
            resources_per_worker={
                "CPU": launch.cpus_per_worker,
                **({"GPU": launch.gpus_per_worker} if gpu else {}),
            },
            placement_strategy=launch.placement.upper(),
        ),
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        run_config=RunConfig(
            storage_path=str(out_dir.parent),
            name=out_dir.name,
            failure_config=FailureConfig(max_failures=launch.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=None),
        ),
    )
    stop = _StopOnSignal(out_dir / STOP_FILE)
    try:
        trainer.fit()
    except Exception as err:
        raise _failure(err) from err
    finally:
        stop.restore()
    return 143 if stop.signum else 0


def _check_resources(launch: RayTrainConfig) -> None:
    """Refuse clearly when the cluster cannot hold even MIN workers (Ray would otherwise wait forever)."""
    import ray

    have = ray.cluster_resources()
    need = {
        "CPU": launch.min_workers * launch.cpus_per_worker,
        "GPU": launch.min_workers * launch.gpus_per_worker,
    }
    short = [
        f"{need[k]:g} {k}s (the cluster has {have.get(k, 0):g})" for k in need if need[k] > have.get(k, 0)
    ]
    if short:
        raise UsageError(
            f"--num-workers {launch.num_workers} needs {' and '.join(short)}: add nodes, or lower --num-workers, "
            "--cpus-per-worker or --gpus-per-worker"
        )


class _StopOnSignal:
    """SIGTERM / SIGINT to the driver (``ray job stop``, Ctrl-C) become the stop file the ranks poll."""

    def __init__(self, stop_file: Path) -> None:
        self.signum = 0
        self.stop_file = stop_file
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum: int, _frame: Any) -> None:
        if not self.signum:
            log.warning(
                "signal %d: asking every rank to save a checkpoint and stop (%s)", signum, self.stop_file
            )
            from datapipe.common.files import write_atomic

            write_atomic(self.stop_file, f"signal {signum}\n")
        self.signum = signum

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _failure(err: Exception) -> Exception:
    """The error to show for a failed fit: a rank's own expected error as it is, else one line pointing at the
    workers' messages above."""
    failures = getattr(err, "worker_failures", None) or {}
    for exc in failures.values():
        cause = getattr(exc, "cause", None) or exc
        if isinstance(cause, UserError):
            return cause
    causes = [getattr(e, "cause", None) or e for e in failures.values()] or [err]
    lines = [
        f"{type(c).__name__}: {str(c).strip().splitlines()[-1] if str(c).strip() else ''}" for c in causes
    ]
    return RayTrainFailed(
        f"Ray Train stopped ({'; '.join(dict.fromkeys(lines))}); the workers' messages are above. Resume with "
        "--resume (and --max-failures K to let Ray restart the group itself)"
    )
