"""Benchmark `dnafm prepare` (Ray, end to end) with 1 and 2 workers, and the training loader with 2 workers.

    .venv/bin/python bench/bench_datapipe.py [--input FASTA] [--window-tokens 508] [--repeats 3]

Prepare throughput is MB of bases per second, end to end: reading and decompressing the input,
parsing, windowing, tokenizing, writing and fsyncing shards, the manifest; on a Ray instance
started once beforehand (its start-up is reported on its own line). "per core" divides by the
number of workers; "per CPU-second" divides by the CPU time all processes of the run used (Ray
workers and driver), which does not depend on how many cores the machine really gives.

The machine-ceiling row runs the same pure-Python loop in 1 and 2 processes: on a 2-vCPU virtual
machine whose vCPUs share physical cores, no program gets more than that ratio from a 2nd worker.

Loader throughput is k-mer tokens per second delivered to the training process by a ShardLoader
(2 DataLoader workers, micro-batch 8) over the shards just written, with the trainer's own collate
(GptSampleBuilder: ids, or bases for the fused k-mer embedding) and with a minimal one (pad ids into
one tensor).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def default_input() -> str:
    """GRCh37 chr20 (bgzip, 63.0 Mbp) from the public data collection ($DNAFM_DATA_ROOT, else ../shared/data)."""
    from eval.tasks import default_data_root

    return str(default_data_root() / "genomes" / "GRCh37_chr20.fa.gz")


def _burn(n: int) -> float:
    t0 = time.perf_counter()
    x = 0
    for i in range(n):
        x += i * i
    return time.perf_counter() - t0


def machine_ceiling(n: int = 10_000_000) -> float:
    """Throughput of 2 CPU-bound processes relative to 1 (2.0 on two real cores)."""
    one = _burn(n)
    with mp.get_context("fork").Pool(2) as pool:
        two = max(pool.map(_burn, [n, n]))
    return 2 * one / two


def _cpu_seconds() -> float:
    """CPU time of this process and every Ray process of this session (workers, raylet, GCS)."""
    import psutil

    total = 0.0
    me = psutil.Process()
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            pass
    return total


def _machine_busy() -> float:
    """CPU-seconds the whole machine has spent busy so far (all processes, every core)."""
    import psutil

    t = psutil.cpu_times()
    return t.user + t.system + t.nice + getattr(t, "irq", 0) + getattr(t, "softirq", 0)


def bench_prepare(
    path: str, species: str, window_tokens: int, workers: int, scratch: Path
) -> dict[str, float]:
    from datapipe.prepare import InputSpec, PrepareConfig, run_prepare

    out = scratch / f"prepare-w{workers}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = PrepareConfig(window_tokens=window_tokens, num_workers=workers)
    cpu0, busy0, t0 = _cpu_seconds(), _machine_busy(), time.perf_counter()
    manifest = run_prepare([InputSpec(path=path, species=species)], out, cfg)
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    others = max(0.0, _machine_busy() - busy0 - cpu) / wall  # cores other programs used meanwhile
    mb = manifest["totals"]["bases"] / 1e6
    return {"mb": mb, "wall": wall, "cpu": cpu, "others": others, "out": str(out)}


def _pad_collate(samples, rng):
    import torch

    ids = np.zeros((len(samples), max(len(s.ids) for s in samples)), np.int64)
    for i, s in enumerate(samples):
        ids[i, : len(s.ids)] = s.ids
    return {"input_ids": torch.from_numpy(ids), "num_tokens": torch.tensor(sum(len(s.ids) for s in samples))}


def bench_loader(data: str, collate, *, workers: int, batch: int, batches: int) -> tuple[float, float]:
    """k-mer tokens per second delivered by the loader (after a warm-up of 200 batches), and per
    CPU-second of the loader's processes (the training process and its workers)."""
    from datapipe.loader import LoaderConfig, ShardLoader

    loader = ShardLoader(data, LoaderConfig(micro_batch_size=batch, num_workers=workers), collate=collate)
    for _ in range(200):
        next(loader)
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    tokens = 0
    for _ in range(batches):
        b = next(loader)
        tokens += int(b["num_tokens"]) - (4 * batch if "n_kmers" in b else 0)  # template tokens are not data
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    del loader
    return tokens / wall, tokens / cpu


def prepare_table(args: argparse.Namespace, scratch: Path) -> dict[int, dict]:
    """Prepare with 1 and 2 workers on a fresh Ray instance each; print the table; the best runs."""
    from cluster.ray_connect import connect, disconnect
    from datapipe import io as datapipe_io

    inflater = "libdeflate (optional `deflate` package)" if datapipe_io._libdeflate else "zlib (stdlib)"
    ceiling = machine_ceiling()
    results, colds, starts = {}, {}, {}
    for workers in (1, 2):
        # A Ray instance with as many CPUs as workers, as `dnafm prepare --num-workers N` starts.
        t0 = time.perf_counter()
        connect(num_cpus=workers)
        starts[workers] = time.perf_counter() - t0
        colds[workers] = bench_prepare(args.input, args.species, args.window_tokens, workers, scratch)
        runs = [
            bench_prepare(args.input, args.species, args.window_tokens, workers, scratch)
            for _ in range(args.repeats)
        ]
        results[workers] = min(runs, key=lambda r: r["wall"])
        disconnect()
    cold = colds[2]
    print(
        f"\ninput: {args.input} ({cold['mb']:.1f} Mb), window {args.window_tokens} tokens, best of "
        f"{args.repeats} after a first run that starts the Ray workers ({colds[1]['wall']:.2f} s with 1 worker, "
        f"{cold['wall']:.2f} s with 2); Ray start {starts[1]:.1f} s; BGZF inflater: {inflater}\n"
    )
    print("| prepare | wall s | MB/s | MB/s per core | MB per CPU-second | speed-up | other programs |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for w, r in results.items():
        rate = r["mb"] / r["wall"]
        speedup = rate / (results[1]["mb"] / results[1]["wall"])
        print(
            f"| {w} worker{'s' if w > 1 else ''} | {r['wall']:.2f} | {rate:.1f} | {rate / w:.1f} | "
            f"{r['mb'] / r['cpu']:.1f} | {speedup:.2f}x | {r['others']:.2f} cores |"
        )
    print(f"| machine ceiling (pure Python, 2 processes vs 1) | | | | | {ceiling:.2f}x | |")
    return results


def loader_table(data: Path, args: argparse.Namespace) -> None:
    from datapipe.tokenizers import get_tokenizer
    from trainer.samples import GptSampleBuilder

    tok, ctx = get_tokenizer("dnagpt-6mer"), args.window_tokens + 4
    builder = GptSampleBuilder(tokenizer=tok, max_seq_len=ctx)
    fused = GptSampleBuilder(tokenizer=tok, max_seq_len=ctx, ship_bases=True)
    print("\n| loader, micro-batch 8 | M tokens/s | M tokens per CPU-second |")
    print("|---|---:|---:|")
    for name, collate in (
        ("trainer collate (GptSampleBuilder)", builder),
        ("trainer collate shipping bases (model.embedding=fused)", fused),
        ("pad-only collate", _pad_collate),
    ):
        for workers in (2, 0):
            rate, per_cpu = bench_loader(data, collate, workers=workers, batch=8, batches=args.loader_batches)
            where = "2 workers" if workers else "no workers (in the training process)"
            print(f"| {where}, {name} | {rate / 1e6:.1f} | {per_cpu / 1e6:.1f} |")


def extrapolation(per_core: float) -> None:
    bases = 200e9 * 6  # 200B tokens of 6-mers
    print(
        f"\n200B tokens (~{bases / 1e12:.1f} Tbp of 6-mers) at {per_core:.0f} MB/s per core (1-worker rate):"
    )
    for nodes, cores in ((1, 16), (10, 32), (100, 64)):
        minutes = bases / (per_core * 1e6 * nodes * cores) / 60
        print(f"  {nodes:>3} nodes x {cores} cores: {minutes:8.1f} min")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--input", help="FASTA input (default: GRCh37 chr20, bgzip, from the public data collection)"
    )
    p.add_argument("--species", default="human")
    p.add_argument("--window-tokens", type=int, default=508)
    p.add_argument("--repeats", type=int, default=3, help="runs per worker count (best is reported)")
    p.add_argument("--loader-batches", type=int, default=4000)
    args = p.parse_args()
    args.input = args.input or default_input()
    from cluster.ray_connect import disconnect

    scratch = Path(tempfile.mkdtemp(prefix="bench-datapipe-"))
    try:
        results = prepare_table(args, scratch)
        loader_table(results[2]["out"], args)
        extrapolation(results[1]["mb"] / results[1]["wall"])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
