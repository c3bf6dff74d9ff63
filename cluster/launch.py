"""How the ranks of a run start, and the process group they share: the one place dnafm knows launchers.

- one plain process: a single rank on loopback (the environment a launcher would give is filled in);
- ``deepspeed`` / ``torchrun`` started by the user (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` ... set): join
  their rendezvous; ``--nproc-per-node N`` re-runs the command under the deepspeed launcher itself;
- ``--launcher ray``: Ray Train starts one worker per rank and sets up the group (``cluster.ray_train``).

The trainer and eval layers receive the resulting :class:`trainer.engine.DistInfo`; they never set up a group.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

from trainer.engine import DistInfo, group_info


def free_port() -> int:
    """A TCP port free on loopback right now (the rendezvous of a run on this machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_process_group() -> DistInfo:
    """Join (or, for a plain process, create) the torch.distributed group through DeepSpeed: gloo on CPU, nccl
    on GPU. Idempotent. A plain ``python`` process gets the single-rank environment a launcher would set;
    otherwise DeepSpeed would look for MPI through mpi4py."""
    import torch
    import torch.distributed as dist

    if "RANK" not in os.environ:
        os.environ.update(
            RANK="0",
            LOCAL_RANK="0",
            WORLD_SIZE="1",
            LOCAL_WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(free_port()),
        )
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if not dist.is_initialized():
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", verbose=False)
    return group_info()


def leave_process_group() -> None:
    """End the group cleanly (a rank that exits without it can abort its peers' last collective)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def without_flag(argv: list[str], flag: str) -> list[str]:
    """``argv`` without ``flag VALUE`` / ``flag=VALUE``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(f"{flag}="):
            out.append(a)
    return out


def launch_local_ranks(n: int) -> int:
    """Re-run this very command under the deepspeed launcher with ``n`` local ranks (replaces this process)."""
    launcher = shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")
    cmd = [
        launcher,
        "--num_gpus",
        str(n),
        "--master_port",
        str(free_port()),
        "--module",
        "cluster.cli",
        *without_flag(sys.argv[1:], "--nproc-per-node"),
    ]
    print("dnafm pretrain: launching", " ".join(cmd), flush=True)
    os.execv(launcher, cmd)
    return 1  # not reached


def pretrain(cfg: Any, args: argparse.Namespace, user_ds: dict | None) -> int:
    """``dnafm pretrain`` once its config is resolved: pick the launcher, run, return the exit code
    (0 done, 143 stopped by a signal with a checkpoint saved)."""
    from trainer.pretrain import check_data, run_pretrain

    manifest = check_data(cfg, args.data)  # before any launcher or group: a wrong --data fails in a second
    if args.launcher == "ray":
        from cluster.ray_train import RayTrainConfig, fit

        return fit(cfg, RayTrainConfig.from_args(args), data_dir=args.data, out_dir=args.out, resume=args.resume,
                   user_ds_config=user_ds)  # fmt: skip
    if args.nproc_per_node and "RANK" not in os.environ:
        return launch_local_ranks(args.nproc_per_node)
    try:
        outcome = run_pretrain(
            cfg,
            dist_info=init_process_group(),
            data_dir=args.data,
            out_dir=args.out,
            resume=args.resume,
            user_ds_config=user_ds,
            manifest=manifest,  # this rank's one read of it
        )
    finally:
        leave_process_group()
    return 143 if outcome == "signal" else 0


def evaluate(cfg: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    """``dnafm eval`` once its config is resolved: the tasks in this process, or as Ray tasks; the rows."""
    from eval.run import run_eval

    if args.launcher == "ray":
        from cluster.ray_eval import RayEval

        run_jobs = RayEval(
            address=args.ray_address, cpus=args.cpus_per_task or 1.0, gpus=args.gpus_per_task or 0.0
        )
        return run_eval(cfg, checkpoint=args.checkpoint, out_dir=args.out, run_jobs=run_jobs)
    return run_eval(cfg, checkpoint=args.checkpoint, out_dir=args.out, run_jobs=jobs_here)


def jobs_here(jobs: list, cfg: Any, **where: Any) -> list[dict[str, Any]]:
    """Every job in this process, one after the other, on a single-rank group."""
    from eval.run import evaluate_job

    dist_info = init_process_group()
    try:
        return [evaluate_job(job, cfg, dist_info=dist_info, **where) for job in jobs]
    finally:
        leave_process_group()
