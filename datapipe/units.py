"""Ray task bodies of ``prepare``: scan chunks (phase 1) and turn chunks into shards (phase 2).

Each chunk of an input (``datapipe.io``) is one work unit ``f<input>-u<chunk>``. A unit owns the
windows whose first base lies in its chunk, reads on into the next chunks only as far as its last
window needs, and writes its shards and then ``units/<unit>.json`` (the "done" marker). Everything
here is a pure function of the inputs and the config, so a retried or re-run unit writes the same
bytes. Memory per task: one chunk of text plus at most ``CUT_BYTES`` of bases and one shard.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from datapipe.fasta_chunks import FastaStream, scan_chunk
from datapipe.io import ChunkReader, InputFile, Storage
from datapipe.maf import MafFormatError, MafStream, split_source
from datapipe.prepare_config import PrepareConfig
from datapipe.shards.writer import UnitWriter
from datapipe.windows import Rows, WindowMaker, WindowStats

UNITS = "units"
CUT_BYTES = 1 << 20  # bases buffered before windows are cut: amortises per-call costs, bounds memory


def unit_name(file_index: int, chunk: int) -> str:
    return f"f{file_index:04d}-u{chunk:06d}"


def file_marker(file_index: int) -> str:
    """Written when every unit of a non-splittable (plain gzip) input is done: holds the unit count."""
    return f"f{file_index:04d}.done.json"


@dataclass(kw_only=True)
class Job:
    """What one phase-2 task does: chunks ``first..last`` of one input (``last`` None: to its end)."""

    out: str
    config: dict[str, Any]
    file: dict[str, Any]
    file_index: int
    spec: dict[str, Any]
    chunk_bytes: int
    first: int
    last: int | None
    segments: list[list[Any]] | None = None  # FASTA chunk: see fasta_chunk_unit
    ahead: list[list[int]] | None = None
    done: list[int] = field(default_factory=list)  # units already done (resuming a stream)


def scan_task(
    file: dict[str, Any], chunk_bytes: int, chunk: int, keep_mask: bool
) -> tuple[Any, np.ndarray, np.ndarray]:
    """Phase 1 for one FASTA chunk: (scan, normalised bases, soft-mask bytes); see ``fasta_chunks``.

    Run with ``num_returns=3``: the driver fetches only the small scan; the bases stay in the
    object store until the chunk's unit (and the unit before it, reading ahead) has used them.
    """
    reader = ChunkReader(InputFile(**file), chunk_bytes)
    parts = []
    for c, piece in reader.pieces(chunk):
        if c != chunk:
            break
        parts.append(piece)
    scan, bases, mask = scan_chunk(b"".join(parts), keep_mask)
    # NumPy arrays travel through Ray's object store without pickling, and the unit task maps them
    # read-only without a copy (bytes would be copied on both sides).
    return scan, np.frombuffer(bases, np.uint8), np.frombuffer(mask, np.uint8)


class _Sink:
    """Routes windows to their unit's shard writer; closes units in order, writing their markers."""

    def __init__(self, job: Job, config: PrepareConfig) -> None:
        self.job, self.config = job, config
        self.storage = Storage(job.out)
        self.skip = set(job.done)
        self.next_unit = job.first  # lowest unit not yet closed
        self.writer: UnitWriter | None = None
        self.unit = -1
        self.stats = WindowStats()
        self.species: dict[str, int] = {}
        self.closed: list[dict[str, Any]] = []

    def owned(self, chunk: int) -> bool:
        last = self.job.last
        return chunk >= self.job.first and (last is None or chunk <= last) and chunk not in self.skip

    def add(self, unit: int, rows: Rows, stats: WindowStats, ctx: Any) -> None:
        """Windows of ``unit``; ``ctx`` is one (species, token, assembly, record), or a list of them
        that ``rows.ctx`` indexes."""
        if unit != self.unit:
            self.close_through(unit - 1)
            self._open(unit)
        contexts = ctx if isinstance(ctx, list) else [ctx]
        self.writer.add_rows(rows, contexts)
        self.stats.add(stats)
        for i, n in zip(rows.ctx or [0] * len(rows), rows.n_tokens, strict=True):
            species = contexts[i][0]
            self.species[species] = self.species.get(species, 0) + n

    def _open(self, unit: int) -> None:
        self.unit = unit
        self.writer = UnitWriter(
            self.storage,
            unit_name(self.job.file_index, unit),
            max_samples=self.config.shard_max_samples,
            fsync=self.config.fsync,
        )
        self.stats, self.species = WindowStats(), {}

    def close_through(self, unit: int) -> None:
        """Close every owned unit <= ``unit``: no window can start in them any more."""
        while self.next_unit <= unit:
            u = self.next_unit
            self.next_unit += 1
            if not self.owned(u):
                continue
            if self.unit != u:
                self._open(u)
            entries = self.writer.wait()
            name = unit_name(self.job.file_index, u)
            result = {
                "unit": name,
                "file": self.job.file_index,
                "chunk": u,
                "shards": entries,
                "samples": self.writer.count,
                "tokens_per_species": self.species,
                **self.stats.to_dict(),
            }
            self.storage.write_json(result, UNITS, f"{name}.json")
            self.closed.append(
                {"unit": name, "samples": self.writer.count, "bases": int(self.stats.base_counts.sum())}
            )
            self.writer, self.unit = None, -1


def fasta_chunk_unit(job_dict: dict[str, Any], *blobs: np.ndarray) -> list[dict[str, Any]]:
    """Phase 2 for one FASTA chunk: the windows that start in it, from the scans' bases.

    ``job.segments``: ``[record, name, offset, pos, n, end]`` = ``n`` bases of ``record`` from
    record ``offset`` at ``pos`` of this chunk's bases; ``end`` is the record's length when it ends
    within reach (else None). ``job.ahead``: ``[k, pos, n]`` pieces of the following chunks' bases
    that continue the last segment's record, enough for its last window. ``blobs``: bases and
    mask bytes of this chunk, then of each following chunk used.
    """
    job = Job(**job_dict)
    config = PrepareConfig.from_dict(job.config)
    maker = WindowMaker(config)
    sink = _Sink(job, config)
    ctx = (job.spec["species"], job.spec["token"], job.spec["assembly"])
    segments = job.segments or []
    for i, (record, name, offset, pos, n, end) in enumerate(segments):
        seq = blobs[0][pos : pos + n]  # views of the object store's copy
        mask = blobs[1][pos : pos + n] if maker.keep_mask else None
        if i == len(segments) - 1 and job.ahead:
            seq = np.concatenate([seq, *(blobs[2 * k][p : p + m] for k, p, m in job.ahead)])
            if mask is not None:
                mask = np.concatenate([mask, *(blobs[2 * k + 1][p : p + m] for k, p, m in job.ahead)])
        starts, ends = maker.layout((job.file_index, record), offset, offset + n)
        if end is not None:
            ends = np.minimum(ends, end)
        if len(ends) and int(ends[-1]) > offset + len(seq):
            raise RuntimeError(
                f"{job.file['url']}: unit {job.first} got too few bases to finish its last window"
            )
        rows, stats = maker.make(seq, mask, starts - offset, ends - starts, starts)
        sink.add(job.first, rows, stats, (*ctx, name))
    sink.close_through(job.first)
    return sink.closed


class _RecordWindows:
    """Cuts the windows of the current record of a streamed FASTA as its bases arrive."""

    def __init__(self, maker: WindowMaker, sink: _Sink, ctx: tuple[str, str, str], file_index: int) -> None:
        self.maker, self.sink, self.ctx, self.file_index = maker, sink, ctx, file_index
        self.record = -1
        self.name = ""
        self.buf = bytearray()
        self.mbuf: bytearray | None = bytearray() if maker.keep_mask else None
        self.buf_off = self.length = self.next_start = 0
        self.marks_off: list[int] = []
        self.marks_chunk: list[int] = []

    def start(self, record: int, name: str) -> None:
        if self.record >= 0:
            self.cut(final=True)
        self.record, self.name = record, name
        self.buf = bytearray()
        self.mbuf = bytearray() if self.maker.keep_mask else None
        self.buf_off = self.length = self.next_start = 0
        self.marks_off, self.marks_chunk = [], []

    def bases(self, chunk: int, seq: bytes, mask: bytes | None) -> None:
        if not self.marks_chunk or self.marks_chunk[-1] != chunk:
            self.marks_off.append(self.length)
            self.marks_chunk.append(chunk)
        self.buf += seq
        if self.mbuf is not None:
            self.mbuf += mask
        self.length += len(seq)

    def chunk_of(self, offsets: np.ndarray) -> np.ndarray:
        i = np.searchsorted(np.asarray(self.marks_off), offsets, side="right") - 1
        return np.asarray(self.marks_chunk)[np.maximum(i, 0)]

    def bound(self, current_chunk: int) -> int:
        """The lowest chunk in which a window may still start."""
        if self.record >= 0 and self.next_start < self.length:
            return int(self.chunk_of(np.array([self.next_start]))[0])
        return current_chunk

    def cut(self, *, final: bool) -> None:
        """Emit every window of the record that is complete (all remaining ones when ``final``)."""
        if self.record < 0 or not self.marks_off:
            return
        starts, ends = self.maker.layout((self.file_index, self.record), self.next_start, self.length)
        if final:
            ends = np.minimum(ends, self.length)
        else:
            n = int(np.searchsorted(ends, self.length, side="right"))  # ends increase: complete ones first
            starts, ends = starts[:n], ends[:n]
        if len(starts):
            self._emit(starts, ends)
            self.next_start = int(ends[-1])
        drop = min(self.next_start - self.buf_off, len(self.buf))
        if drop > 0:  # replace rather than resize: NumPy views of the old buffer may still exist
            self.buf = bytearray(memoryview(self.buf)[drop:])
            if self.mbuf is not None:
                self.mbuf = bytearray(memoryview(self.mbuf)[drop:])
            self.buf_off += drop

    def _emit(self, starts: np.ndarray, ends: np.ndarray) -> None:
        units = self.chunk_of(starts)
        bases = np.frombuffer(self.buf, np.uint8)
        mask = np.frombuffer(self.mbuf, np.uint8) if self.mbuf is not None else None
        edges = np.flatnonzero(np.diff(units)) + 1
        for lo, hi in zip([0, *edges.tolist()], [*edges.tolist(), len(units)], strict=True):
            unit = int(units[lo])
            if not self.sink.owned(unit):
                continue
            st, en = starts[lo:hi], ends[lo:hi]
            rows, stats = self.maker.make(bases, mask, st - self.buf_off, en - st, st)
            self.sink.add(unit, rows, stats, (*self.ctx, self.name))


def fasta_stream_units(job_dict: dict[str, Any]) -> list[dict[str, Any]]:
    """Every unit of a plain-gzip FASTA, read from its start in this one task (it cannot be entered
    mid-stream); units already done (``job.done``) are read through but not written again."""
    job = Job(**job_dict)
    config = PrepareConfig.from_dict(job.config)
    file = InputFile(**job.file)
    maker = WindowMaker(config)
    sink = _Sink(job, config)
    stream = FastaStream(file.url, keep_mask=maker.keep_mask)
    windows = _RecordWindows(
        maker, sink, (job.spec["species"], job.spec["token"], job.spec["assembly"]), job.file_index
    )
    chunk = 0
    for chunk, piece in ChunkReader(file, job.chunk_bytes).pieces(0):
        for event in stream.feed(piece):
            if event[0] == "record":
                windows.start(event[1], event[2])
            else:
                windows.bases(chunk, event[1], event[2])
        if len(windows.buf) >= CUT_BYTES:
            windows.cut(final=False)
        sink.close_through(windows.bound(chunk) - 1)
    for event in stream.finish():
        windows.start(event[1], event[2])
    windows.cut(final=True)
    sink.close_through(chunk)
    sink.storage.write_json({"units": chunk + 1}, UNITS, file_marker(job.file_index))
    return sink.closed


def maf_units(job_dict: dict[str, Any]) -> list[dict[str, Any]]:
    """Phase 2 for MAF: every row of the blocks owned by chunks ``first..last`` (see ``maf``)."""
    job = Job(**job_dict)
    config = PrepareConfig.from_dict(job.config)
    file = InputFile(**job.file)
    maker = WindowMaker(config)
    sink = _Sink(job, config)
    sources: dict[str, list[str]] = job.spec.get("sources", {})
    stream = MafStream(
        file.url, keep_mask=maker.keep_mask, first_chunk=job.first, at_file_start=job.first == 0
    )
    reader = ChunkReader(file, job.chunk_bytes)
    chunk = job.first
    for chunk, piece in reader.pieces(job.first):
        if job.last is not None and stream.done_through(job.last):
            break
        _maf_blocks(stream.feed(chunk, piece), maker, sink, sources, job.file_index, stream.error)
        sink.close_through(
            min(stream.partial_chunk, stream.block_chunk if stream.block is not None else chunk) - 1
        )
    else:
        _maf_blocks(stream.finish(), maker, sink, sources, job.file_index, stream.error)
    last = job.last if job.last is not None else chunk
    sink.close_through(last)
    if job.last is None:
        sink.storage.write_json({"units": last + 1}, UNITS, file_marker(job.file_index))
    return sink.closed


def _maf_blocks(
    blocks: Any,
    maker: WindowMaker,
    sink: _Sink,
    sources: dict[str, list[str]],
    file_index: int,
    error: Callable[[int, str], MafFormatError],
) -> None:
    """Windows of every row of the owned blocks, cut in batches of ~CUT_BYTES bases (a block's rows
    are a few kb: one vectorised call per batch instead of one per row)."""
    batch = _MafBatch()
    for unit, rows in blocks:
        if not sink.owned(unit):
            continue
        if unit != batch.unit or batch.size >= CUT_BYTES:
            batch.flush(maker, sink)
            batch.unit = unit
        for row in rows:
            prefix, record = split_source(row.src)
            if prefix not in sources:
                raise error(
                    row.line,
                    f"unknown species {prefix!r} (alignment source {row.src!r}); map it in --species-table "
                    f"with a line '{prefix} <species> [<token>]', e.g. '{prefix} chimp <W>'",
                )
            species, token = sources[prefix]
            key = (file_index, zlib.crc32(row.src.encode()), row.start, int(row.strand == "+"))
            starts, ends = maker.layout(key, 0, row.size)
            ends = np.minimum(ends, row.size)
            batch.add(row, starts, ends, (species, token, prefix, record))
    batch.flush(maker, sink)


class _MafBatch:
    """Rows of MAF blocks collected for one ``WindowMaker.make`` call (windows never span rows)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.unit = -1
        self.bases: list[bytes] = []
        self.masks: list[bytes] = []
        self.lo: list[np.ndarray] = []
        self.lengths: list[np.ndarray] = []
        self.starts: list[np.ndarray] = []
        self.ctx: list[np.ndarray] = []
        self.strands: list[str] = []
        self.contexts: dict[tuple[str, ...], int] = {}
        self.size = 0

    def add(self, row: Any, starts: np.ndarray, ends: np.ndarray, ctx: tuple[str, ...]) -> None:
        c = self.contexts.setdefault(ctx, len(self.contexts))
        self.lo.append(starts + self.size)
        self.lengths.append(ends - starts)
        self.starts.append(starts + row.start)
        self.ctx.append(np.full(len(starts), c, np.int64))
        self.strands += [row.strand] * len(starts)
        self.bases.append(row.bases)
        if row.mask is not None:
            self.masks.append(row.mask)
        self.size += len(row.bases)

    def flush(self, maker: WindowMaker, sink: _Sink) -> None:
        if self.bases:
            bases = np.frombuffer(b"".join(self.bases), np.uint8)
            mask = np.frombuffer(b"".join(self.masks), np.uint8) if maker.keep_mask else None
            ctx = np.concatenate(self.ctx)
            rows, stats = maker.make(
                bases,
                mask,
                np.concatenate(self.lo),
                np.concatenate(self.lengths),
                np.concatenate(self.starts),
                ctx,
            )
            # A '-' row reads its source's reverse strand: its windows are '-', their copies '+'.
            minus = {i for i, s in enumerate(self.strands) if s == "-"}
            if minus:
                _flip_strands(rows, minus)
            sink.add(self.unit, rows, stats, list(self.contexts))
        self.reset()


def _flip_strands(rows: Rows, minus: set[int]) -> None:
    """Flip the strand of the rows cut from the windows whose index is in ``minus``."""
    flip = {"+": "-", "-": "+"}
    rows.strands = [flip[s] if w in minus else s for s, w in zip(rows.strands, rows.window, strict=True)]
