"""The training loader: one global, deterministic sample order; every rank reads only its own samples.

Order (decided globally, then sliced; nothing depends on the world size):

- epoch ``e``: the good shards (manifest order) are permuted by a generator seeded (seed, e); runs
  of ``mix_shards`` consecutive shards of that order form groups, and the samples of a group are
  permuted by (seed, e, group). With ``mix_shards=1`` this is "shards shuffled, then samples inside
  each shard shuffled"; a larger group mixes windows of several genome regions (a shard holds
  consecutive windows of one region) into each batch, at the cost of reading from more files.
- epochs are concatenated into one endless sequence of global positions ``0, 1, 2, ...``.
- step ``t`` consumes the global batch ``[P + t*W*B, P + (t+1)*W*B)`` for world size ``W`` and
  micro-batch ``B``, where ``P`` is the number of samples consumed when the loader (re)started;
  rank ``r`` takes the contiguous slice ``r*B .. (r+1)*B`` of it.

The state is ``P`` alone (samples consumed globally), so a run resumes exactly, with no sample
repeated or skipped, also at another world size or micro-batch size.

Each rank reads its samples by random access: ``shards/S.idx.npy`` (written by ``prepare``) gives
the byte range of every sample, read with one ``pread``. DataLoader workers build whole batches
(``collate`` runs in the worker, so only finished tensors cross the process boundary). Batches
travel in messages of ``group`` consecutive batches (>= 32 samples, to amortise the DataLoader's
per-message cost); worker ``w`` of ``n`` builds messages ``w, w+n, ...`` counted from the
(re)start, and PyTorch takes messages from its workers round-robin from worker 0 on every new
iterator, so the rank sees its batches in order and a restart needs nothing but ``P`` (counting
from the restart replaces the rotation of worker roles an absolute batch count would need).

Bad shards: a shard is checked (size, index, first and last tar blocks: one ``stat`` and three
small reads) before a process reads from it, so a missing or damaged shard stops the run with its
name. When the loader starts, each rank checks only ``START_CHECKS`` shards drawn by (seed, rank)
(``check_shards="sample"``, the default): start-up costs one manifest read whatever the number of
shards, and the other shards are checked when first read (their indexes are loaded then too, and kept
for a bounded number of shards). ``check_shards="all"`` checks every shard on every rank at start
(O(shards) reads per rank), which ``skip_bad_shards`` always does: to leave a shard out, all ranks
must agree on it before the first batch; it is then left out of the order on every rank alike and
counted in ``skipped_shards``. Damage that only a full read can see (a flipped byte inside a sample)
is found when that sample is read and always stops the run. ``dnafm prepare --verify`` checks every
byte against the manifest's sha256.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from datapipe.common.config import Config, check
from datapipe.common.errors import ShardError, UsageError
from datapipe.shards.format import SHARDS, Sample, parse_header
from datapipe.shards.manifest import read_manifest
from datapipe.shards.reader import decode_sample, read_index

log = logging.getLogger(__name__)

Collate = Callable[[list[Sample], np.random.Generator], dict[str, torch.Tensor]]
STATE_VERSION = 2
START_CHECKS = 16  # shards each rank checks at start with check_shards="sample"


@dataclass(kw_only=True)
class LoaderConfig(Config):
    micro_batch_size: int = 8
    """Samples per batch on one data-parallel rank."""
    num_workers: int = 1
    """Loader worker processes per rank (0 = in the training process)."""
    seed: int = 0
    """Seeds the sample order and each batch's collate generator."""
    skip_bad_shards: bool = False
    """Leave missing or damaged shards out of the order (logged, counted in skipped_shards) instead of stopping."""
    mix_shards: int = 16
    """Consecutive shards of an epoch's shard order whose samples are shuffled together (1 = within each shard)."""
    check_shards: Literal["sample", "all"] = "sample"
    """When shards are checked (size, index, first and last tar blocks). 'sample': START_CHECKS shards
    per rank at start, drawn by (seed, rank), the others when first read (start-up independent of the
    number of shards). 'all': every shard on every rank at start (one stat and three small reads per
    shard per rank), as skip_bad_shards always does."""

    def __post_init__(self) -> None:
        check(self.micro_batch_size >= 1, "micro_batch_size", "must be >= 1")
        check(self.num_workers >= 0, "num_workers", "must be >= 0")
        check(self.mix_shards >= 1, "mix_shards", "must be >= 1")
        check(self.check_shards in ("sample", "all"), "check_shards", "must be 'sample' or 'all'")


class SampleOrder:
    """Global position -> (shard, sample in shard), for the good shards' sample counts."""

    def __init__(self, counts: list[int], *, seed: int, mix: int) -> None:
        self.counts = np.asarray(counts, np.int64)
        self.epoch_samples = int(self.counts.sum())
        self.seed, self.mix = seed, mix
        self._epochs: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._groups: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard order, start position of each group) of an epoch."""
        hit = self._epochs.get(epoch)
        if hit is None:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.counts))
            sizes = np.add.reduceat(self.counts[order], np.arange(0, len(order), self.mix))
            hit = (order, np.concatenate([[0], np.cumsum(sizes)]))
            self._epochs[epoch] = hit
            if len(self._epochs) > 4:
                self._epochs.popitem(last=False)
        return hit

    def _group(self, epoch: int, group: int, size: int) -> np.ndarray:
        hit = self._groups.get((epoch, group))
        if hit is None:
            hit = np.random.default_rng([self.seed, epoch, group, 1]).permutation(size)
            self._groups[(epoch, group)] = hit
            if len(self._groups) > 64:
                self._groups.popitem(last=False)
        return hit

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Shard indices (into ``counts``) and sample indices of global ``positions`` (int64 array)."""
        shards = np.empty(len(positions), np.int64)
        samples = np.empty(len(positions), np.int64)
        epochs, offsets = np.divmod(positions, self.epoch_samples)
        for epoch in np.unique(epochs).tolist():
            order, starts = self._epoch(epoch)
            sel = np.flatnonzero(epochs == epoch)
            q = offsets[sel]
            groups = np.searchsorted(starts, q, side="right") - 1
            for g in np.unique(groups).tolist():
                members = order[g * self.mix : (g + 1) * self.mix]
                cum = np.concatenate([[0], np.cumsum(self.counts[members])])
                idx = sel[groups == g]
                picked = self._group(epoch, g, int(cum[-1]))[offsets[idx] - starts[g]]
                which = np.searchsorted(cum, picked, side="right") - 1
                shards[idx] = members[which]
                samples[idx] = picked - cum[which]
        return shards, samples


@dataclass
class ShardTable:
    """The manifest's shards as the loader needs them; offsets are loaded only when a shard is read.

    ~100 bytes per shard: at 200B tokens (~400k shards) tens of MB per rank, where every shard's
    offsets (8 bytes per sample) would be ~3 GB."""

    folder: Path  # <data>/shards
    names: list[str]
    indexes: list[str]  # the .idx.npy names
    samples: np.ndarray  # (shards,) int64
    sizes: np.ndarray  # (shards,) int64 bytes of each tar

    @classmethod
    def from_manifest(cls, data_dir: Path, manifest: dict[str, Any]) -> ShardTable:
        entries = manifest["shards"]
        return cls(
            folder=data_dir / SHARDS,
            names=[e["name"] for e in entries],
            indexes=[e["index"] for e in entries],
            samples=np.array([e["samples"] for e in entries], np.int64),
            sizes=np.array([e["bytes"] for e in entries], np.int64),
        )

    def __len__(self) -> int:
        return len(self.names)

    def without(self, drop: set[int]) -> ShardTable:
        keep = [i for i in range(len(self)) if i not in drop]
        return ShardTable(
            folder=self.folder,
            names=[self.names[i] for i in keep],
            indexes=[self.indexes[i] for i in keep],
            samples=self.samples[keep],
            sizes=self.sizes[keep],
        )

    def path(self, s: int) -> str:
        return str(self.folder / self.names[s])

    def open_checked(self, s: int) -> tuple[int, np.ndarray]:
        """Open shard ``s`` after checking it against the manifest: (file descriptor, offsets)."""
        path = self.path(s)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise ShardError(f"{path} is missing") from None
        try:
            size = os.fstat(fd).st_size
            if size != self.sizes[s]:
                raise ShardError(
                    f"{path} has {size} bytes, the manifest says {self.sizes[s]} (truncated or replaced)"
                )
            offsets = read_index(self.folder / self.indexes[s], samples=int(self.samples[s]), size=size)
            parse_header(os.pread(fd, 512, 0), 0, path)
            if os.pread(fd, 1024, int(offsets[-1])) != b"\0" * 1024:
                raise ShardError(f"{path}: no end-of-archive blocks where its index says (damaged)")
        except BaseException:
            os.close(fd)
            raise
        return fd, offsets

    def bad_shard(self, s: int, err: ShardError, data_dir: Path) -> ShardError:
        return ShardError(
            f"bad shard {self.names[s]}: {err}; re-run `dnafm prepare` to rewrite it (`dnafm prepare "
            f"--verify {data_dir}` lists every problem), or pass --skip-bad-shards to train without it "
            "(every shard is then checked at start)"
        )


def start_checks(num_shards: int, *, seed: int, rank: int) -> list[int]:
    """The shards a rank checks at start with check_shards="sample": drawn by (seed, rank), so that
    many ranks together check many shards while each reads only START_CHECKS."""
    rng = np.random.default_rng([seed, rank, 3])
    return sorted(rng.choice(num_shards, min(num_shards, START_CHECKS), replace=False).tolist())


def check_shards(
    data_dir: Path, table: ShardTable, which: Iterable[int], *, skip_bad: bool
) -> tuple[ShardTable, list[str]]:
    """Check shards ``which`` of ``table``: the table without the bad ones (with ``skip_bad``; else
    the first bad one raises) and the skipped names."""
    bad: set[int] = set()
    for s in which:
        try:
            fd, _ = table.open_checked(s)
            os.close(fd)
        except ShardError as err:
            if not skip_bad:
                raise table.bad_shard(s, err, data_dir) from None
            log.warning("skipping bad shard %s (--skip-bad-shards): %s", table.names[s], err)
            bad.add(s)
    if len(bad) == len(table):
        raise ShardError(f"{data_dir}: no readable shard among {len(table)}; re-run `dnafm prepare`")
    return table.without(bad), [table.names[s] for s in sorted(bad)]


class _Batches(IterableDataset):
    """The rank's batches from global position ``start``; worker w of n makes batches w, w+n, ..."""

    def __init__(
        self,
        shards: ShardTable,
        order: SampleOrder,
        collate: Collate,
        *,
        start: int,
        rank: int,
        world_size: int,
        batch: int,
        seed: int,
        num_workers: int,
        data_dir: Path,
        keep_open: int,
    ) -> None:
        self.shards, self.order, self.collate = shards, order, collate
        self.start, self.rank, self.world_size, self.batch = start, rank, world_size, batch
        self.seed, self.num_workers = seed, max(num_workers, 1)
        self.data_dir, self.keep_open = data_dir, keep_open
        self.group = max(1, -(-32 // batch))  # batches per message: >= 32 samples each
        # Shards this process has checked and opened: (fd, offsets), least recently used first.
        self._open: OrderedDict[int, tuple[int, np.ndarray]] = OrderedDict()

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        # In a worker: messages of `group` consecutive batches, worker w making messages w, w+n, ...
        # (a message costs ~150 us of DataLoader overhead in the training process, so small batches
        # travel several at a time). In process: batch by batch.
        group = self.group if info is not None else 1
        step = self.world_size * self.batch
        ahead = 64 // group * group  # batches located at once: one vectorised call, not one per batch
        try:
            for m0 in itertools.count(worker * group, self.num_workers * group * (ahead // group)):
                # The next `ahead` batches of this worker: whole messages m0, m0 + n*group, ...
                msgs = m0 + self.num_workers * group * np.arange(ahead // group, dtype=np.int64)
                js = (msgs[:, None] + np.arange(group)).reshape(-1)
                firsts = self.start + js * step + self.rank * self.batch
                shards, samples = self.order.locate((firsts[:, None] + np.arange(self.batch)).reshape(-1))
                shards, samples = shards.reshape(len(js), -1).tolist(), samples.reshape(len(js), -1).tolist()
                message = []
                for b, first in enumerate(firsts.tolist()):
                    rng = np.random.default_rng([self.seed, first, 2])
                    if getattr(self.collate, "wants_batch_index", False):
                        # The global micro-batch index (= each rank's count), for schedules inside the
                        # collate such as DNABERT's late mask-rate switch.
                        index = (first - self.rank * self.batch) // step
                        batch = self.collate(self.read(shards[b], samples[b]), rng, batch_index=index)
                    else:
                        batch = self.collate(self.read(shards[b], samples[b]), rng)
                    if info is None:
                        yield batch
                        continue
                    message.append(_pack(batch))
                    if len(message) == group:
                        yield message
                        message = []
        finally:
            for fd, _ in self._open.values():
                os.close(fd)
            self._open.clear()

    def read(self, shard_idx: list[int], sample_idx: list[int]) -> list[Sample]:
        out = []
        for s, i in zip(shard_idx, sample_idx, strict=True):
            fd, offsets = self._shard(s)
            lo, hi = int(offsets[i]), int(offsets[i + 1])
            data = os.pread(fd, hi - lo, lo)
            if len(data) != hi - lo:
                raise ShardError(
                    f"shard {self.shards.path(s)}: sample {i} ends past the end of the file (truncated)"
                )
            try:
                out.append(decode_sample(data, self.shards.path(s), lo))
            except ShardError as err:
                raise ShardError(
                    f"{err}; the shard is damaged: run `dnafm prepare --verify` on the data folder and "
                    "re-run `dnafm prepare` to rewrite it"
                ) from None
        return out

    def _shard(self, s: int) -> tuple[int, np.ndarray]:
        """Shard ``s`` open, with its offsets; checked the first time this process reads it (and again
        after it dropped out of the ``keep_open`` most recently read: a few groups of shards)."""
        hit = self._open.get(s)
        if hit is not None:
            self._open.move_to_end(s)
            return hit
        try:
            hit = self._open[s] = self.shards.open_checked(s)
        except ShardError as err:
            raise self.shards.bad_shard(s, err, self.data_dir) from None
        if len(self._open) > self.keep_open:
            os.close(self._open.popitem(last=False)[1][0])
        return hit


class ShardLoader:
    """Iterator of batches for one data-parallel rank, with ``state_dict`` / ``load_state_dict``.

    ``samples_consumed`` (global, all ranks) is the state; ``batches_consumed`` counts this rank's
    batches (for logging); ``skipped_shards`` counts shards left out with ``skip_bad_shards``.
    """

    def __init__(
        self,
        data_dir: str | Path,
        cfg: LoaderConfig,
        *,
        collate: Collate,
        rank: int = 0,
        world_size: int = 1,
        manifest: dict[str, Any] | None = None,
    ) -> None:
        """``manifest``: the folder's manifest if the caller has read it already (else it is read here:
        the only read at start that grows with the number of shards)."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.data_dir = Path(data_dir)
        if manifest is None:
            manifest = read_manifest(self.data_dir)
        self.cfg, self.collate, self.rank, self.world_size = cfg, collate, rank, world_size
        table = ShardTable.from_manifest(self.data_dir, manifest)
        if not len(table):
            raise ShardError(f"{self.data_dir}: the manifest lists no shards; re-run `dnafm prepare`")
        full = cfg.check_shards == "all" or cfg.skip_bad_shards
        which = range(len(table)) if full else start_checks(len(table), seed=cfg.seed, rank=rank)
        self.shards, self.skipped_shard_names = check_shards(
            self.data_dir, table, which, skip_bad=cfg.skip_bad_shards
        )
        self.order = SampleOrder(self.shards.samples, seed=cfg.seed, mix=cfg.mix_shards)
        self.samples_consumed = 0
        self.batches_consumed = 0
        self._iter: Iterator[Any] | None = None
        self._ready: deque[dict[str, torch.Tensor]] = deque()

    @property
    def skipped_shards(self) -> int:
        return len(self.skipped_shard_names)

    @property
    def global_batch(self) -> int:
        return self.world_size * self.cfg.micro_batch_size

    def _start(self) -> Iterator[Any]:
        ds = _Batches(
            self.shards,
            self.order,
            self.collate,
            start=self.samples_consumed,
            rank=self.rank,
            world_size=self.world_size,
            batch=self.cfg.micro_batch_size,
            seed=self.cfg.seed,
            num_workers=self.cfg.num_workers,
            data_dir=self.data_dir,
            keep_open=max(64, 2 * self.cfg.mix_shards),  # two groups' shards: each opened once per epoch
        )
        if self.cfg.num_workers == 0:
            return iter(ds)
        dl = DataLoader(
            ds,
            batch_size=None,
            num_workers=self.cfg.num_workers,
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
        if self.cfg.num_workers:
            if not self._ready:
                self._ready.extend(next(self._iter))  # a worker's message: consecutive batches
            batch = self._ready.popleft()
        else:
            batch = next(self._iter)
        self.batches_consumed += 1
        self.samples_consumed += self.global_batch
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "samples_consumed": self.samples_consumed,
            "batches_consumed": self.batches_consumed,
            "seed": self.cfg.seed,
            "mix_shards": self.cfg.mix_shards,
            "epoch_samples": self.order.epoch_samples,
            "skipped_shards": list(self.skipped_shard_names),
            "world_size": self.world_size,
            "micro_batch_size": self.cfg.micro_batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after ``state`` (saved at any world size / micro-batch size) with the next sample."""
        if state.get("version") != STATE_VERSION or "samples_consumed" not in state:
            raise UsageError(
                "loader state was saved by an older dnafm (a per-rank sample order): it cannot continue the "
                "same order; start the data order afresh (drop the loader state) or use that dnafm version"
            )
        for key in ("seed", "mix_shards"):
            if state[key] != getattr(self.cfg, key):
                raise UsageError(
                    f"loader state was saved with {key}={state[key]}, this run has {key}={getattr(self.cfg, key)}: "
                    "resuming would not continue the same sample order; set the same value"
                )
        if (
            state["epoch_samples"] != self.order.epoch_samples
            or state["skipped_shards"] != self.skipped_shard_names
        ):
            message = (
                f"the usable shards changed since the state was saved (epoch of {state['epoch_samples']} samples, "
                f"skipped {state['skipped_shards']}; now {self.order.epoch_samples}, skipped "
                f"{self.skipped_shard_names})"
            )
            if not self.cfg.skip_bad_shards:
                raise UsageError(f"{message}: resuming would not continue the same order; restore the shards")
            log.warning("%s: the order from here on differs from the original run's", message)
        if (state["world_size"], state["micro_batch_size"]) != (self.world_size, self.cfg.micro_batch_size):
            log.info(
                "loader resumes at sample %d with world size %d x micro-batch %d (saved at %d x %d)",
                state["samples_consumed"],
                self.world_size,
                self.cfg.micro_batch_size,
                state["world_size"],
                state["micro_batch_size"],
            )
        self.samples_consumed = int(state["samples_consumed"])
        self.batches_consumed = self.samples_consumed // self.global_batch
        self._iter = None
        self._ready.clear()


class _Packed:
    """A tensor as raw bytes for the trip from a DataLoader worker to the training process.

    The DataLoader sends tensors through shared-memory files, ~1 ms per tensor here (6 tensors per
    trainer batch: ~1,500 batches/s at most); bytes through its pipe cost ~10 us per 64 KiB. Integer
    tensors travel in the narrowest of int16/int32 that holds their values (token ids and targets
    fit int16: a quarter of the bytes) and are widened back, exactly, on arrival.
    """

    __slots__ = ("dtype", "wire", "shape", "data")

    def __init__(self, tensor: torch.Tensor) -> None:
        t = tensor.detach().reshape(-1)
        self.dtype, self.wire, self.shape = t.dtype, t.dtype, tuple(tensor.shape)
        if t.dtype in (torch.int64, torch.int32) and t.numel():
            lo, hi = (int(x) for x in torch.aminmax(t))
            for narrow in (torch.int16, torch.int32):
                if narrow != t.dtype and torch.iinfo(narrow).min <= lo and hi <= torch.iinfo(narrow).max:
                    t, self.wire = t.to(narrow), narrow
                    break
        self.data = t.contiguous().view(torch.uint8).numpy().tobytes()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.dtype, self.wire, self.shape, self.data))


def _rebuild(dtype: torch.dtype, wire: torch.dtype, shape: tuple[int, ...], data: bytes) -> torch.Tensor:
    if not data:
        return torch.empty(shape, dtype=dtype)
    if wire == dtype:
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).reshape(shape)
    narrow = np.frombuffer(data, dtype=_NUMPY[wire])  # read-only view; astype makes the writable copy
    return torch.from_numpy(narrow.astype(_NUMPY[dtype])).reshape(shape)


_NUMPY = {torch.int16: np.int16, torch.int32: np.int32, torch.int64: np.int64}


def _pack(batch: dict[str, Any]) -> dict[str, Any]:
    """Tensors of a batch as :class:`_Packed`: rebuilt into tensors when the message is unpickled."""
    return {k: _Packed(v) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _fork_ok() -> bool:
    import multiprocessing as mp

    return "fork" in mp.get_all_start_methods()
