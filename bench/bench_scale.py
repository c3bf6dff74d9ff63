"""How every cost of `dnafm prepare` and the training loader grows with the data: 0.1, 1 and 10 Gbp.

    .venv/bin/python bench/bench_scale.py [--sizes 0.1,1,10] [--workers 2] [--json out.json]

For each size a synthetic corpus is written (``scale_corpus``: copies of public genomes under distinct
record names, species labels in rotation; it measures cost, not biology), prepared by the CLI
(``python -m cluster.cli prepare``, its own local Ray instance with ``--workers`` CPUs), checked with
``prepare --verify``, and read by the training loader at 1 and 2 ranks (one process per rank, all at
once, in-process reading with a pad-only collate so the figure is the loader's own cost). Then the
corpus and its shards are deleted before the next size.

Columns: wall time of the whole CLI run (Ray start-up included) and the driver's own prepare time (its
log line, Ray start-up excluded), MB of bases per second of the latter; peak RSS of the driver process
(its own ``getrusage``) and of the largest Ray worker process (``VmHWM``, polled; a worker runs many
tasks, and its RSS includes the object-store pages it mapped); the driver's CPU time per work unit;
``manifest.json`` size and ``read_manifest`` time (best of 3); ``prepare --verify`` time; bytes on disk
per base of everything prepare wrote. Loader: start-up per rank (``ShardLoader(...)`` until it can
serve a batch; the slowest rank), files it opened under ``shards/`` meanwhile, and k-mer tokens per
second per rank after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_corpus import NOTE, Corpus, build_corpus, remove  # noqa: E402
from scale_model import flatness, project  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# The CLI's main, then this process's own peak RSS and CPU time on stderr (what the driver itself used).
DRIVER = (
    "import json, resource, sys\n"
    "from cluster.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "r = resource.getrusage(resource.RUSAGE_SELF)\n"
    "print('BENCH-DRIVER ' + json.dumps({'maxrss_kb': r.ru_maxrss, 'cpu': r.ru_utime + r.ru_stime}), file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def _vm_hwm_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class WorkerPeaks(threading.Thread):
    """Polls the peak RSS (VmHWM) of the Ray worker processes under a process, until stopped."""

    def __init__(self, pid: int, every: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.peak = 0.0
        self.workers: set[int] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self.stop.wait(self.every):
            try:
                procs = root.children(recursive=True)
            except psutil.NoSuchProcess:
                return
            for p in procs:
                try:
                    if p.cmdline()[:1] and p.cmdline()[0].startswith("ray::"):
                        self.workers.add(p.pid)
                        self.peak = max(self.peak, _vm_hwm_mb(p.pid))
                except (psutil.NoSuchProcess, psutil.AccessDenied, IndexError):
                    pass


def prepare(corpus: Corpus, out: Path, workers: int, env: dict[str, str]) -> dict[str, Any]:
    args = ["prepare", *map(str, corpus.files)]
    for species in corpus.species:
        args += ["--species", species]
    args += ["--window-tokens", "508", "--num-workers", str(workers), "--no-mlflow", "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peaks = WorkerPeaks(proc.pid)
    peaks.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    peaks.stop.set()
    peaks.join()
    if proc.returncode != 0:
        raise RuntimeError(f"prepare failed ({proc.returncode}):\n{stderr[-3000:]}")
    driver = json.loads(re.search(r"BENCH-DRIVER (\{.*\})", stderr).group(1))
    own = re.search(r"prepare: ([\d.]+) Mb in ([\d.]+) s", stderr)
    return {
        "wall": wall,
        "prepare_s": float(own.group(2)) if own else float("nan"),
        "driver_mb": driver["maxrss_kb"] / 1024,
        "driver_cpu": driver["cpu"],
        "task_mb": peaks.peak,
        "ray_workers": len(peaks.workers),
        "stdout": stdout.strip(),
    }


def verify(out: Path, env: dict[str, str], workers: int = 1) -> float:
    """Wall time of ``prepare --verify --num-workers workers`` (its Python start-up included, ~1-2 s)."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "prepare", "--verify", str(out), "--num-workers", str(workers)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"verify failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def manifest_load(out: Path) -> tuple[float, float, float]:
    """manifest.json MB on disk, best ``read_manifest`` time of 3, and MB of Python objects it becomes."""
    import tracemalloc

    from datapipe.shards.manifest import read_manifest

    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        read_manifest(out)
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    manifest = read_manifest(out)
    held = tracemalloc.get_traced_memory()[0] / 1e6
    tracemalloc.stop()
    del manifest
    return (out / "manifest.json").stat().st_size / 1e6, min(times), held


def disk_bytes(out: Path) -> int:
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


def _pad_collate(samples: list[Any], rng: Any) -> dict[str, Any]:
    import torch

    ids = np.zeros((len(samples), max(len(s.ids) for s in samples)), np.int64)
    for i, s in enumerate(samples):
        ids[i, : len(s.ids)] = s.ids
    return {"input_ids": torch.from_numpy(ids), "num_tokens": torch.tensor(sum(len(s.ids) for s in samples))}


def _rank(data: str, rank: int, world: int, checks: str | None, batches: int, queue: Any) -> None:
    """One rank: start a loader, count the shard files it opens meanwhile, then time its batches."""
    import psutil

    from datapipe.loader import LoaderConfig, ShardLoader

    opened = [0]
    counting = [True]

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if counting[0] and event == "open" and isinstance(args[0], str | bytes | os.PathLike):
            if "/shards/" in os.fsdecode(args[0]):
                opened[0] += 1

    sys.addaudithook(hook)
    extra = {"check_shards": checks} if checks else {}
    rss0 = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    loader = ShardLoader(
        data,
        LoaderConfig(micro_batch_size=8, num_workers=0, **extra),
        collate=_pad_collate,
        rank=rank,
        world_size=world,
    )
    start = time.perf_counter() - t0
    counting[0] = False
    rss = (psutil.Process().memory_info().rss - rss0) / 1e6
    for _ in range(100):
        next(loader)
    t0, tokens = time.perf_counter(), 0
    for _ in range(batches):
        tokens += int(next(loader)["num_tokens"])
    queue.put(
        {
            "rank": rank,
            "start": start,
            "opened": opened[0],
            "rss": rss,
            "tps": tokens / (time.perf_counter() - t0),
        }
    )


def loader(out: Path, world: int, checks: str | None, batches: int) -> dict[str, float]:
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_rank, args=(str(out), r, world, checks, batches, queue)) for r in range(world)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=1800) for _ in procs]
    for p in procs:
        p.join()
    return {
        "start": max(r["start"] for r in results),
        "opened": max(r["opened"] for r in results),
        "rss": max(r["rss"] for r in results),
        "tps": sum(r["tps"] for r in results) / world,
    }


def check_modes() -> list[str | None]:
    from dataclasses import fields

    from datapipe.loader import LoaderConfig

    names = {f.name for f in fields(LoaderConfig)}
    return ["all", "sample"] if "check_shards" in names else [None]


def one_size(target: float, args: argparse.Namespace, scratch: Path, env: dict[str, str]) -> dict[str, Any]:
    from eval.tasks import default_data_root

    folder, out = scratch / "corpus", scratch / "out"
    t0 = time.perf_counter()
    corpus = build_corpus(int(target * 1e9), folder, default_data_root())
    print(
        f"[{target} Gbp] corpus: {len(corpus.files)} files, {corpus.records} records, "
        f"{corpus.bases / 1e9:.3f} Gbp, {corpus.bytes / 1e9:.2f} GB bgzip in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    try:
        row: dict[str, Any] = {
            "target_gbp": target,
            "files": len(corpus.files),
            "records": corpus.records,
            "input_bytes": corpus.bytes,
        }
        row.update(prepare(corpus, out, args.workers, env))
        manifest = json.loads((out / "manifest.json").read_text())
        row.update({k: manifest["totals"][k] for k in ("bases", "tokens", "samples", "shards", "units")})
        print(f"[{target} Gbp] {row.pop('stdout')}; {row['prepare_s']:.1f} s", flush=True)
        row["manifest_mb"], row["manifest_s"], row["manifest_mem_mb"] = manifest_load(out)
        row["disk_bytes"] = disk_bytes(out)
        row["verify_s"] = verify(out, env)
        row["verify_workers_s"] = verify(out, env, args.workers)
        print(
            f"[{target} Gbp] verify {row['verify_s']:.1f} s, "
            f"{row['verify_workers_s']:.1f} s with {args.workers} processes",
            flush=True,
        )
        row["loader"] = [
            {
                "world": world,
                "checks": checks or "all (before)",
                **loader(out, world, checks, args.loader_batches),
            }
            for checks in check_modes()
            for world in (1, 2)
        ]
        return row
    finally:
        remove(folder)
        shutil.rmtree(out, ignore_errors=True)


def print_tables(rows: list[dict[str, Any]]) -> None:
    print(f"\n{NOTE}.\n")
    print(
        "| corpus | files | records | bases | tokens | shards | units | wall s (CLI) | prepare s | MB/s | "
        "driver peak MB | task peak MB | driver CPU ms/unit | manifest MB | manifest load s | manifest in memory MB | "
        "verify s | verify MB/s | verify s, --workers processes | disk B/base |"
    )
    print("|---" + "|---:" * 19 + "|")
    for r in rows:
        print(
            f"| {r['target_gbp']} Gbp | {r['files']} | {r['records']:,} | {r['bases'] / 1e9:.3f} G | "
            f"{r['tokens'] / 1e9:.3f} G | {r['shards']:,} | {r['units']:,} | {r['wall']:.1f} | "
            f"{r['prepare_s']:.1f} | {r['bases'] / 1e6 / r['prepare_s']:.1f} | {r['driver_mb']:.0f} | "
            f"{r['task_mb']:.0f} | {1e3 * r['driver_cpu'] / r['units']:.1f} | {r['manifest_mb']:.2f} | "
            f"{r['manifest_s']:.3f} | {r['manifest_mem_mb']:.1f} | {r['verify_s']:.1f} | {r['bases'] / 1e6 / r['verify_s']:.1f} | "
            f"{r.get('verify_workers_s', float('nan')):.1f} | "
            f"{r['disk_bytes'] / r['bases']:.3f} |"
        )
    print(
        "\n| corpus | shards | ranks | shard checks at start | start-up s per rank | shard files opened "
        "at start per rank | RSS growth at start MB | M tokens/s per rank |"
    )
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for r in rows:
        for lo in r["loader"]:
            print(
                f"| {r['target_gbp']} Gbp | {r['shards']:,} | {lo['world']} | {lo['checks']} | {lo['start']:.3f} | "
                f"{lo['opened']:,} | {lo['rss']:.1f} | {lo['tps'] / 1e6:.2f} |"
            )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="0.1,1,10", help="corpus sizes in Gbp, comma-separated")
    p.add_argument("--workers", type=int, default=2, help="prepare --num-workers")
    p.add_argument("--loader-batches", type=int, default=2000, help="timed batches of 8 per rank")
    p.add_argument("--scratch", help="folder for corpora and shards (default: a new temporary folder)")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    scratch = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.scratch))
    rows = []
    try:
        for size in (float(s) for s in args.sizes.split(",")):
            need = size * 1e9 * 1.6  # ~0.3 B/base of bgzip input + ~1.1 B/base of shards, with margin
            free = shutil.disk_usage(scratch).free
            if need > free * 0.8:
                raise SystemExit(
                    f"{size} Gbp needs ~{need / 1e9:.0f} GB, {free / 1e9:.0f} GB free at {scratch}"
                )
            rows.append(one_size(size, args, scratch, env))
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=2))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print_tables(rows)
    if len(rows) >= 2:
        flatness(rows)
        project(rows, None, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
