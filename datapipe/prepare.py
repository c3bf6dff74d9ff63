"""``dnafm prepare``: genomes (FASTA, MAF) -> tokenized WebDataset shards + manifest, with Ray.

The driver only plans and collects; every byte of input is read by Ray tasks, which is what lets
the same command run on one laptop or on many nodes (inputs and output through fsspec):

1. ``sniff`` each input (compression from the magic bytes, FASTA or MAF); a missing, empty or
   bzip2/xz/zstd input fails here, before anything is written.
2. Chunks (``io``) are the work units. FASTA inputs that can be entered mid-file (plain text,
   bgzip) get a ``scan_task`` per chunk, in parallel; the driver stitches the scans in chunk order
   (``fasta_chunks``; format errors surface here with their line) and, pipelined with the scans,
   submits ``fasta_chunk_unit`` for each chunk whose windows it can now place (``schedule``).
   MAF chunks need no scan (``maf_units``); a plain-gzip input is one task (``fasta_stream_units``
   or ``maf_units``) that reads it from the start. A unit is done when ``units/<unit>.json``
   exists; it is written after the unit's shards are renamed into place.
3. The manifest is assembled from the unit markers in unit order.

Unit and shard names depend only on the inputs and the config, so any number of workers gives the
same bytes, and re-running the same command finishes only the missing units. Ray re-runs a task
whose worker died (``max_retries``); a format error or a full disk is not retried.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from datapipe.common.errors import OutputExistsError, UsageError
from datapipe.fasta_chunks import Stitcher
from datapipe.io import COMPRESSION_RATIO, ChunkReader, InputFile, Storage, sniff
from datapipe.maf import MafFormatError
from datapipe.prepare_config import RUNTIME_FIELDS, InputSpec, PrepareConfig, assembly_name
from datapipe.schedule import FastaPlan, Scheduler
from datapipe.shards.format import SHARDS
from datapipe.shards.manifest import MANIFEST, build_manifest
from datapipe.tokenizers import get_tokenizer
from datapipe.units import (
    UNITS,
    Job,
    fasta_chunk_unit,
    fasta_stream_units,
    file_marker,
    maf_units,
    scan_task,
    unit_name,
)

__all__ = ["InputSpec", "PrepareConfig", "run_prepare", "assembly_name"]

log = logging.getLogger(__name__)
PLAN = "plan"


def chunk_bytes(file: InputFile, config: PrepareConfig) -> int:
    """Bytes per chunk: of the file for plain and bgzip inputs, of decompressed text for plain gzip."""
    return config.region_bp // COMPRESSION_RATIO if file.compression == "bgzf" else config.region_bp


def run_prepare(
    inputs: list[InputSpec],
    out_dir: str | Path,
    config: PrepareConfig,
    *,
    connect: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Prepare shards for ``inputs`` into ``out_dir`` (a path or fsspec URL); return the manifest.

    Ray must be connected when the work starts: ``connect()`` is called once the inputs and the output folder
    have been checked (``cluster.ray_connect.connect`` joins a cluster or starts a private instance); without
    it, the caller connected already.

    On an error nothing partial is left: a folder this call created is removed, an existing one
    keeps its completed units only. Interrupted (Ctrl-C, or killed), the completed units stay and
    the same call finishes the rest.
    """
    if not inputs:
        raise UsageError("no inputs given: name one or more FASTA or MAF files")
    storage = Storage(out_dir)
    files = [sniff(spec.path) for spec in inputs]  # missing, empty, bzip2 ... fail before anything is written
    _check_out_dir(storage, inputs, files, config)
    existed = storage.exists()
    fresh = not existed or not storage.listdir()  # ours entirely: removed again on error
    try:
        for folder in (SHARDS, UNITS, PLAN):
            storage.makedirs(folder)
        removed = storage.remove_temporaries(SHARDS, UNITS, PLAN)
        if removed:
            log.info("removed %d temporary files of an interrupted run", removed)
        storage.write_json(config.to_dict(), "prepare_config.json")
        storage.write_json({"inputs": _inputs_record(inputs, files)}, "inputs.json")
        _save_tokenizer(storage, config.tokenizer)
        if connect is not None:
            connect()
        _require_ray()
        t0 = time.perf_counter()
        plans = _run(storage, inputs, files, config)
        storage.remove_temporaries(SHARDS, UNITS, PLAN)  # left by attempts whose worker died (retried)
        manifest = build_manifest(
            storage,
            _inputs_record(inputs, files),
            [_num_units(storage, i, f, config) for i, f in enumerate(files)],
            {i: len(plan.records) for i, plan in plans.items()},
            config,
        )
        storage.write_json(manifest, MANIFEST)
    except KeyboardInterrupt:  # keep the completed units: the same command resumes from them
        if storage.exists():
            storage.remove_temporaries(SHARDS, UNITS, PLAN)
        raise
    except BaseException:  # bad input, full disk ...: nothing partial left, a previous state kept
        if fresh and not existed:
            storage.remove()
        elif fresh:  # an empty folder the user made: empty it again, keep the folder
            for name in storage.listdir():
                storage.remove(name)
        elif storage.exists():
            storage.remove_temporaries(SHARDS, UNITS, PLAN)
        raise
    elapsed = time.perf_counter() - t0
    bases = manifest["totals"]["bases"]
    log.info(
        "prepare: %.1f Mb in %.1f s = %.1f MB/s of bases (%d workers)",
        bases / 1e6,
        elapsed,
        bases / 1e6 / max(elapsed, 1e-9),
        config.num_workers,
    )
    return manifest


def _inputs_record(inputs: list[InputSpec], files: list[InputFile]) -> list[dict[str, Any]]:
    return [
        {**vars(s), "size": f.size, "format": f.fmt, "compression": f.compression}
        for s, f in zip(inputs, files, strict=True)
    ]


def _check_out_dir(
    storage: Storage, inputs: list[InputSpec], files: list[InputFile], config: PrepareConfig
) -> None:
    """Refuse to mix runs: an output folder holding another run's shards is an error, left untouched."""
    if not storage.exists():
        return
    if not storage.exists("prepare_config.json"):
        if storage.listdir(SHARDS) or storage.exists(MANIFEST):
            raise OutputExistsError(
                f"{storage.url} holds shards of another run but no prepare_config.json; choose an empty --out folder"
            )
        return
    old = storage.read_json("prepare_config.json")
    new = config.to_dict()
    diff = sorted(k for k in set(old) | set(new) if k not in RUNTIME_FIELDS and old.get(k) != new.get(k))
    old_inputs = storage.read_json("inputs.json")["inputs"] if storage.exists("inputs.json") else None
    if diff or (old_inputs is not None and old_inputs != _inputs_record(inputs, files)):
        what = f"config fields {', '.join(diff)}" if diff else "the inputs (paths, species or file sizes)"
        raise OutputExistsError(
            f"{storage.url} holds shards of another prepare run ({what} differ); choose an empty --out "
            "folder, or delete that folder to start over"
        )


def _save_tokenizer(storage: Storage, name: str) -> None:
    tok = get_tokenizer(name)
    if storage.local:
        tok.save(storage.path("tokenizer"))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tok.save(tmp)
        for path in sorted(Path(tmp).iterdir()):
            storage.write_bytes(path.read_bytes(), "tokenizer", path.name)


def _require_ray() -> None:
    import ray

    if not ray.is_initialized():
        raise RuntimeError(
            "run_prepare needs a Ray connection: pass connect= or call cluster.ray_connect.connect()"
        )


def _remote(fn: Any, **options: Any) -> Any:
    import ray

    # max_retries: a worker that dies (OOM, node lost, killed) gets its task re-run; a raised error
    # (bad input, full disk) does not, since retry_exceptions stays False.
    # SPREAD: short tasks go round the nodes of a cluster instead of packing onto the driver's node first
    # (Ray's default), so every node reads and writes; on one machine it changes nothing.
    return ray.remote(num_cpus=1, max_retries=3, scheduling_strategy="SPREAD", **options)(fn)


def _queue_depth(num_workers: int) -> int:
    """Extra tasks to keep queued: only when the cluster has no more CPUs than ``num_workers``, so
    queued tasks wait for a worker instead of running beside the ones asked for."""
    import ray

    cpus = ray.cluster_resources().get("CPU", 0)
    return max(1, num_workers // 4) if cpus <= num_workers else 0


def _fields(f: InputFile) -> dict[str, Any]:
    return {"url": f.url, "size": f.size, "compression": f.compression, "fmt": f.fmt}


def _run(
    storage: Storage, inputs: list[InputSpec], files: list[InputFile], config: PrepareConfig
) -> dict[int, Any]:
    """Plan every unit not yet done and run them (see ``schedule``); returns the FASTA plans."""
    done = {n.removesuffix(".json") for n in storage.listdir(UNITS) if n.endswith(".json")}
    keep_mask = config.soft_mask == "mask"
    scan = _remote(scan_task, num_returns=3)
    units = {
        "chunk": _remote(fasta_chunk_unit),
        "stream": _remote(fasta_stream_units),
        "maf": _remote(maf_units),
    }
    fields = [_fields(f) for f in files]

    def save_plan(plan: FastaPlan) -> None:
        segments = [plan.segments[c] for c in range(plan.chunks)]
        storage.write_json(
            {"chunks": plan.chunks, "records": plan.records, "segments": segments},
            PLAN,
            f"f{plan.index:04d}.json",
        )

    sched = Scheduler(
        config.num_workers,
        scan_fn=lambda i, c: scan.remote(fields[i], chunk_bytes(files[i], config), c, keep_mask),
        unit_fn=units["chunk"],
        save_plan=save_plan,
        queue=_queue_depth(config.num_workers),
    )
    plans: dict[int, Any] = {}
    for i, (spec, f) in enumerate(zip(inputs, files, strict=True)):
        base = {
            "out": storage.url,
            "config": config.to_dict(),
            "file": fields[i],
            "file_index": i,
            "spec": vars(spec),
            "chunk_bytes": chunk_bytes(f, config),
        }
        if not f.splittable:
            if file_marker(i).removesuffix(".json") not in done:
                mine = sorted(int(u.rsplit("-u", 1)[1]) for u in done if u.startswith(f"f{i:04d}-u"))
                fn = units["stream"] if f.fmt == "fasta" else units["maf"]
                sched.add_task(fn, vars(Job(**base, first=0, last=None, done=mine)))
            continue
        n = ChunkReader(f, base["chunk_bytes"]).num_chunks() or 0
        todo = {c for c in range(n) if unit_name(i, c) not in done}
        if f.fmt == "maf":
            for c in sorted(todo):
                sched.add_task(units["maf"], vars(Job(**base, first=c, last=c)))
            continue
        plan = FastaPlan(index=i, url=f.url, chunks=n, window_bp=config.window_bp(), todo=todo)
        if storage.exists(PLAN, f"f{i:04d}.json"):
            saved = storage.read_json(PLAN, f"f{i:04d}.json")
            plan.records, plan.stitched = saved["records"], n
            plan.segments = dict(enumerate(saved["segments"]))
        else:
            plan.stitcher = Stitcher(f.url)
        plans[i] = plan
        sched.add_fasta(plan, lambda c, extra, base=base: vars(Job(**base, first=c, last=c, **extra)))
    try:
        sched.run()
    except MafFormatError as err:
        raise _global_line(err, files, config) from None
    return plans


def _global_line(err: MafFormatError, files: list[InputFile], config: PrepareConfig) -> MafFormatError:
    """A chunk task counts MAF lines from its chunk's first byte; add the lines of the chunks before."""
    if not err.chunk or err.line is None:
        return err
    f = next(f for f in files if f.url == err.path)
    lines = 0
    for c, piece in ChunkReader(f, chunk_bytes(f, config)).pieces(0):
        if c >= err.chunk:
            break
        lines += piece.count(b"\n")
    return MafFormatError(err.path, err.line + lines, err.message)


def _num_units(storage: Storage, i: int, f: InputFile, config: PrepareConfig) -> int:
    if not f.splittable:
        return int(storage.read_json(UNITS, file_marker(i))["units"])
    return ChunkReader(f, chunk_bytes(f, config)).num_chunks() or 0
