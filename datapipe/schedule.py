"""The driver's task loop for ``prepare``: scans and units in flight, pipelined, bounded.

One loop runs every task of a run with at most ``num_workers`` in flight:

- FASTA inputs that can be entered mid-file get a ``scan_task`` per chunk; as scans come back
  (in any order) they are stitched in chunk order, and the unit of chunk ``i`` is submitted as
  soon as the stitch has passed far enough beyond it to know its last window's bases. Its bases
  travel through the object store, and the driver drops its references once no later unit needs
  them, so at most ``LOOKAHEAD`` chunks per worker wait in memory whatever the genome size.
- MAF chunks and non-splittable inputs (plain gzip: one task reads the whole file) need no scan.

Ready units go first, then the long non-splittable tasks, then more scans. On the first error the
tasks in flight are cancelled and waited for (so nothing writes after the caller's clean-up), and
the task's own exception is raised (``FastaFormatError``, ``OSError`` of a full disk, ...).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from datapipe.common.logs import progress
from datapipe.fasta_chunks import Stitcher

log = logging.getLogger(__name__)
LOOKAHEAD = 3  # scanned chunks waiting for their unit, per worker


@dataclass
class FastaPlan:
    """What the driver knows of one chunked FASTA input: its segments per chunk, as stitched."""

    index: int
    url: str
    chunks: int
    window_bp: int
    todo: set[int]  # units still to write
    stitcher: Stitcher | None = None  # None when the plan was loaded complete from a previous run
    segments: dict[int, list[list[int]]] = field(default_factory=dict)
    records: list[list[Any]] = field(default_factory=list)
    stitched: int = 0  # chunks stitched so far
    scans: dict[int, tuple[Any, Any, Any]] = field(default_factory=dict)  # chunk -> (scan, bases, mask)
    blobs: dict[int, tuple[Any, Any]] = field(default_factory=dict)  # chunk -> refs of bases, mask
    next_scan: int = 0
    next_unit: int = 0
    scanning: int = 0  # scans in flight
    _needed: set[int] | None = None

    def complete(self) -> bool:
        return self.stitched == self.chunks

    def closed(self, record: int) -> bool:
        return self.stitcher is None or self.complete() or self.stitcher.closed(record)

    def name(self, record: int) -> str:
        if self.stitcher is not None and not self.complete():
            return self.stitcher.records[record][0]
        return self.records[record][0]

    def length(self, record: int) -> int:
        if self.stitcher is not None and not self.complete():
            return self.stitcher.records[record][1]
        return self.records[record][1]

    def needed(self) -> set[int]:
        """Chunks whose bases some unit still to write will use (all of them while stitching)."""
        if self.stitcher is not None:
            return set(range(self.chunks))
        if self._needed is None:  # a loaded plan does not change: computed once
            self._needed = set()
            for i in self.todo:
                self._needed.add(i)
                self._needed.update(k + i for k, _, _ in (self.ahead(i) or []))
        return self._needed

    def ahead(self, i: int) -> list[list[int]] | None:
        """Pieces ``[k, pos, n]`` of chunks i+k that finish chunk i's last record, or None if not known yet."""
        own = self.segments[i]
        if not own:
            return []
        record = own[-1][0]
        pieces, got = [], 0
        c = i + 1
        while got < self.window_bp:
            if c >= self.stitched:
                return pieces if self.closed(record) else None
            segs = self.segments[c]
            if segs and segs[0][0] != record:
                return pieces  # the record ended before chunk c
            if segs:
                take = min(segs[0][3], self.window_bp - got)
                pieces.append([c - i, segs[0][2], take])
                got += take
                if len(segs) > 1:
                    return pieces
            c += 1
        return pieces

    def job_fields(self, i: int, ahead: list[list[int]]) -> dict[str, Any]:
        last_record = self.segments[i][-1][0] if self.segments[i] else -1
        segs = []
        for record, offset, pos, n in self.segments[i]:
            if record != last_record:
                end = offset + n  # the record ends inside this chunk
            else:
                end = self.length(record) if self.closed(record) else None
            segs.append([record, self.name(record), offset, pos, n, end])
        return {"segments": segs, "ahead": ahead}


class Scheduler:
    """Runs the tasks of a prepare run; see the module doc."""

    def __init__(
        self, num_workers: int, *, scan_fn: Any, unit_fn: Any, save_plan: Any, queue: int = 0
    ) -> None:
        # In flight: num_workers tasks, plus `queue` waiting in Ray for a free CPU so that a worker
        # finishing a task starts the next at once (else it idles ~5 ms per task: ~17% at 4 Mb units).
        self.limit = max(1, num_workers) + queue
        self.scan_fn, self.unit_fn, self.save_plan = scan_fn, unit_fn, save_plan
        self.plans: list[FastaPlan] = []
        self.plain: deque[tuple[Any, tuple[Any, ...]]] = deque()  # tasks needing no scan
        self.jobs: dict[int, Any] = {}  # file index -> function of chunk -> job dict

    def add_fasta(self, plan: FastaPlan, job: Any) -> None:
        self.plans.append(plan)
        self.jobs[plan.index] = job

    def add_task(self, fn: Any, *args: Any) -> None:
        self.plain.append((fn, args))

    def run(self) -> None:
        import ray

        pending: dict[Any, tuple[str, Any]] = {}
        total = len(self.plain) + sum(len(p.todo) for p in self.plans)
        bar = progress(range(total), desc="prepare: units", unit="unit")
        try:
            while True:
                self._fill(pending)
                if not pending:
                    break
                done, _ = ray.wait(list(pending), num_returns=1)
                kind, info = pending.pop(done[0])
                try:
                    result = ray.get(done[0])
                except ray.exceptions.RayTaskError as err:
                    log.debug("task failed: %s", err)
                    raise (err.cause if isinstance(err.cause, BaseException) else err) from None
                if kind == "scan":
                    plan, chunk, blob_refs = info
                    plan.scanning -= 1
                    plan.scans[chunk] = result
                    plan.blobs[chunk] = blob_refs
                    self._stitch(plan)
                else:
                    next(bar, None)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            if pending:
                ray.wait(list(pending), num_returns=len(pending), timeout=60)
            raise
        for plan in self.plans:
            if plan.todo:
                raise RuntimeError(f"{plan.url}: units {sorted(plan.todo)[:5]} were never scheduled (a bug)")

    def _fill(self, pending: dict[Any, tuple[str, Any]]) -> None:
        while len(pending) < self.limit:
            task = self._next_unit()
            if task is None and self.plain:
                task = self.plain.popleft()
            if task is not None:
                fn, args = task
                pending[fn.remote(*args)] = ("unit", None)
                continue
            # No unit can start: scan ahead, within the memory bound unless nothing else can run.
            scan = self._next_scan(force=not pending)
            if scan is None:
                return
            plan, chunk = scan
            refs = self.scan_fn(plan.index, chunk)
            plan.scanning += 1
            pending[refs[0]] = ("scan", (plan, chunk, (refs[1], refs[2])))

    def _next_unit(self) -> tuple[Any, tuple[Any, ...]] | None:
        for plan in self.plans:
            while plan.next_unit < plan.chunks and plan.next_unit < plan.stitched:
                i = plan.next_unit
                if i not in plan.todo:
                    plan.next_unit += 1
                    self._release(plan)
                    continue
                ahead = plan.ahead(i)
                if ahead is None:
                    break
                # Bases of chunks i .. i+k (k of the last piece read ahead): blob 2k is chunk i+k's.
                chunks = range(i, i + (ahead[-1][0] if ahead else 0) + 1)
                if any(c not in plan.blobs for c in chunks):
                    break
                fields = plan.job_fields(i, ahead)
                refs = [r for c in chunks for r in plan.blobs[c]]
                plan.todo.discard(i)
                plan.next_unit += 1
                self._release(plan)
                return self.unit_fn, (self.jobs[plan.index](i, fields), *refs)
        return None

    def _next_scan(self, *, force: bool) -> tuple[FastaPlan, int] | None:
        for plan in self.plans:
            need = plan.needed() if plan.stitcher is None else None
            while plan.next_scan < plan.chunks:
                c = plan.next_scan
                if need is not None and c not in need:
                    plan.next_scan += 1
                    continue
                if not force and len(plan.blobs) + plan.scanning >= LOOKAHEAD * self.limit:
                    break  # enough bases waiting in memory; scan more once units have used them
                plan.next_scan += 1
                return plan, c
        return None

    def _stitch(self, plan: FastaPlan) -> None:
        if plan.stitcher is None:  # plan loaded complete: segments are known
            return
        while plan.stitched in plan.scans:
            c = plan.stitched
            scan = plan.scans.pop(c)
            plan.segments[c] = plan.stitcher.add(scan)
            plan.stitched += 1
        if plan.complete() and not plan.records:
            plan.records = plan.stitcher.finish()
            self.save_plan(plan)

    def _release(self, plan: FastaPlan) -> None:
        """Drop references to bases no unit still to be submitted will read."""
        for c in [c for c in plan.blobs if c < plan.next_unit]:
            del plan.blobs[c]
