"""``dnafm eval --launcher ray``: each task of an evaluation is one Ray task (its own CPU/GPU request), all in
parallel across the cluster; their rows come back into the one summary, their MLflow runs nest under the one
parent run. A task fine-tunes on a single-rank group in its Ray worker, exactly as a local run does."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _one_job(job: Any, cfg: Any, where: dict[str, Any]) -> dict[str, Any]:
    """Runs in a Ray worker: one task on a single-rank group of its own."""
    from cluster.launch import init_process_group, leave_process_group
    from datapipe.common.logs import setup_logging
    from eval.run import evaluate_job

    setup_logging()
    try:
        return evaluate_job(job, cfg, dist_info=init_process_group(), **where)
    finally:
        leave_process_group()


@dataclass(kw_only=True)
class RayEval:
    """An ``eval.run.RunJobs`` that submits every job as a Ray task."""

    address: str | None
    cpus: float = 1.0
    gpus: float = 0.0

    def __call__(
        self, jobs: list, cfg: Any, *, checkpoint: Path, out_dir: Path, tracking_uri: str, parent: str | None
    ) -> list[dict[str, Any]]:
        import ray

        from cluster.ray_connect import connect

        connect(self.address, num_cpus=max(1, round(len(jobs) * self.cpus)), log_to_driver=True)
        # max_calls=1: each task gets a fresh worker process, so no process group or RNG state carries over
        task = ray.remote(num_cpus=self.cpus, num_gpus=self.gpus, max_calls=1)(_one_job)
        where = {
            "checkpoint": Path(checkpoint).resolve(),
            "out_dir": Path(out_dir).resolve(),
            "tracking_uri": tracking_uri,
            "parent": parent,
        }
        refs = [task.remote(job, cfg, where) for job in jobs]
        log.info("%d eval tasks submitted to Ray (%g CPUs, %g GPUs each)", len(refs), self.cpus, self.gpus)
        return ray.get(refs)
