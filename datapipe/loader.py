"""The training loader: deterministic, resumable batches from prepared shards.

Order (OLMo-style: decide globally, then slice): every epoch the manifest's shard list is
shuffled with a generator seeded by (seed, epoch); data-parallel rank r takes shards r, r+W, ...;
loader worker w of that rank takes every n-th of those; inside a shard, samples are shuffled by
(seed, epoch, shard). Each worker assembles whole batches (``collate`` runs in the worker, so
only finished tensors cross the process boundary) and runs through epochs without end, carrying
a partial batch into the next epoch, so no sample is dropped. PyTorch hands batches out
round-robin over workers, so the n-th batch of a rank is fully determined and resuming only
needs the count of batches consumed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from datapipe.config import Config, check
from datapipe.shards import Sample, ShardError, iter_shard, read_manifest

log = logging.getLogger(__name__)

Collate = Callable[[list[Sample], np.random.Generator], dict[str, torch.Tensor]]


@dataclass(kw_only=True)
class LoaderConfig(Config):
    micro_batch_size: int = 8
    """Samples per batch on one data-parallel rank."""
    num_workers: int = 1
    """Loader worker processes per rank (0 = in the training process)."""
    seed: int = 0
    skip_bad_shards: bool = False
    """Skip (and log) corrupt or missing shards instead of stopping the run."""

    def __post_init__(self) -> None:
        check(self.micro_batch_size >= 1, "micro_batch_size", "must be >= 1")
        check(self.num_workers >= 0, "num_workers", "must be >= 0")


class _ShardStream(IterableDataset):
    def __init__(
        self,
        data_dir: Path,
        shards: list[str],
        cfg: LoaderConfig,
        rank: int,
        world_size: int,
        collate: Collate,
        skip_batches: int,
        num_workers: int,
    ):
        self.data_dir, self.shards, self.cfg = data_dir, shards, cfg
        self.rank, self.world_size, self.collate = rank, world_size, collate
        self.skip_batches, self.num_workers = skip_batches, num_workers

    def _my_shards(self, epoch: int, worker: int) -> list[str]:
        order = np.random.default_rng([self.cfg.seed, epoch]).permutation(len(self.shards))
        mine = order[self.rank :: self.world_size][worker :: max(self.num_workers, 1)]
        return [self.shards[i] for i in mine]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        n_workers = max(self.num_workers, 1)
        # PyTorch hands out batches round-robin starting at worker 0, also after a restart. So the
        # process with id i plays the role of worker (i + skipped) % n: role w produces the rank's
        # batches w, w + n, ..., and skips those already consumed.
        worker = ((info.id if info is not None else 0) + self.skip_batches) % n_workers
        to_skip = len(range(worker, self.skip_batches, n_workers))
        batch_index = 0
        buffer: list[Sample] = []
        epoch = 0
        while True:
            shards = self._my_shards(epoch, worker)
            if not shards:
                raise ShardError(
                    f"rank {self.rank} worker {worker} got no shards: {len(self.shards)} shards for "
                    f"{self.world_size} ranks x {n_workers} workers; prepare smaller shards "
                    "(--set shard_max_samples=...) or use fewer loader workers"
                )
            for name in shards:
                for sample in self._samples(name, epoch):
                    buffer.append(sample)
                    if len(buffer) == self.cfg.micro_batch_size:
                        if to_skip > 0:
                            to_skip -= 1
                        else:
                            rng = np.random.default_rng([self.cfg.seed, self.rank, worker, batch_index])
                            yield self.collate(buffer, rng)
                        batch_index += 1
                        buffer = []
            epoch += 1

    def _samples(self, name: str, epoch: int) -> Iterator[Sample]:
        try:
            samples = list(iter_shard(self.data_dir / "shards" / name))
        except ShardError as err:
            if not self.cfg.skip_bad_shards:
                raise
            log.warning("skipping bad shard (--skip-bad-shards): %s", err)
            return
        seed = [self.cfg.seed, epoch, int.from_bytes(name.encode()[:16].ljust(16, b"\0"), "little") % (2**63)]
        for i in np.random.default_rng(seed).permutation(len(samples)):
            yield samples[i]


class ShardLoader:
    """Iterator of batches for one data-parallel rank, with ``state_dict`` / ``load_state_dict``."""

    def __init__(
        self, data_dir: str | Path, cfg: LoaderConfig, *, collate: Collate, rank: int = 0, world_size: int = 1
    ):
        self.data_dir = Path(data_dir)
        self.manifest = read_manifest(self.data_dir)
        self.cfg, self.collate, self.rank, self.world_size = cfg, collate, rank, world_size
        self.shards = [s["name"] for s in self.manifest["shards"]]
        per_rank = len(self.shards[rank::world_size])
        if per_rank == 0:
            raise ShardError(
                f"{self.data_dir}: {len(self.shards)} shards cannot feed {world_size} ranks; "
                "prepare smaller shards (--set shard_max_samples=...)"
            )
        self.num_workers = min(
            cfg.num_workers, per_rank
        )  # a worker without shards would have nothing to give
        self.batches_consumed = 0
        self._iter: Iterator[dict[str, torch.Tensor]] | None = None

    def _start(self) -> Iterator[dict[str, torch.Tensor]]:
        ds = _ShardStream(
            self.data_dir,
            self.shards,
            self.cfg,
            self.rank,
            self.world_size,
            self.collate,
            self.batches_consumed,
            self.num_workers,
        )
        if self.num_workers == 0:
            return iter(ds)
        dl = DataLoader(
            ds,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=False,
            prefetch_factor=4,
            multiprocessing_context="fork" if _fork_ok() else None,
        )
        return iter(dl)

    def __iter__(self) -> ShardLoader:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self._iter is None:
            self._iter = self._start()
        batch = next(self._iter)
        self.batches_consumed += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "batches_consumed": self.batches_consumed,
            "rank": self.rank,
            "world_size": self.world_size,
            "seed": self.cfg.seed,
            "micro_batch_size": self.cfg.micro_batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("world_size", "seed", "micro_batch_size"):
            if state[key] != getattr(self, key, None) and state[key] != getattr(self.cfg, key, None):
                raise ValueError(
                    f"loader state was saved with {key}={state[key]}; this run has a different "
                    f"{key}: resuming would not continue the same sample order"
                )
        self.batches_consumed = int(state["batches_consumed"])
        self._iter = None


def _fork_ok() -> bool:
    import multiprocessing as mp

    return "fork" in mp.get_all_start_methods()
