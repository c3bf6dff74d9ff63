"""Benchmark datapipe.fasta on a real genome: parse time, throughput and peak memory per mode.

Each mode runs in a fresh spawned process so ``ru_maxrss`` is that mode's own peak. "decompress" is the
floor: reading the stream through ``open_maybe_compressed`` with no parsing at all.

    .venv/bin/python bench/bench_fasta.py data/genomes/grch37_chr20_44-46Mb.fa.gz
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time
from concurrent.futures import ProcessPoolExecutor

from datapipe.fasta import BLOCK_SIZE, fasta_summary, open_maybe_compressed, read_fasta

MODES = ("decompress", "upper", "mask", "summary")


def run_mode(path: str, mode: str, repeats: int, block_size: int) -> tuple[float, int, int]:
    """Best wall time over ``repeats`` (s), bytes of text (decompressed) and bases, plus peak RSS."""
    best, n_text, n_bp = float("inf"), 0, 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        if mode == "decompress":
            with open_maybe_compressed(path) as fh:
                n_text = sum(len(b) for b in iter(lambda: fh.read1(block_size), b""))  # noqa: B023
        elif mode == "summary":
            n_bp = sum(n for _, n in fasta_summary(path, block_size=block_size))
        else:
            n_bp = 0
            for rec in read_fasta(path, soft_mask=mode, block_size=block_size):
                n_bp += len(rec.seq)
                del rec  # a real consumer keeps one record at a time
        best = min(best, time.perf_counter() - t0)
    return best, n_text, n_bp


def child(path: str, mode: str, repeats: int, block_size: int) -> tuple[float, int, int, float]:
    best, n_text, n_bp = run_mode(path, mode, repeats, block_size)
    return best, n_text, n_bp, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--block-size", type=int, default=BLOCK_SIZE, help="bytes of text per parse step")
    args = parser.parse_args()
    text_bytes = 0
    print(f"{'mode':<11} {'best s':>7} {'MB/s':>7} {'Mbp':>7} {'peak RSS MiB':>12}")
    for mode in MODES:
        with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
            best, n_text, n_bp, rss = pool.submit(
                child, args.path, mode, args.repeats, args.block_size
            ).result()
        text_bytes = n_text or text_bytes  # "decompress" runs first and measures the text size
        print(f"{mode:<11} {best:7.2f} {text_bytes / best / 1e6:7.0f} {n_bp / 1e6:7.2f} {rss:12.0f}")


if __name__ == "__main__":
    main()
