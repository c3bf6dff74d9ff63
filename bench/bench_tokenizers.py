"""Throughput of the vectorised tokenizers against a straightforward pure-Python encoder.

    OMP_NUM_THREADS=1 python bench/bench_tokenizers.py --mb 32

For every tokenizer: vectorised ``encode`` of one long ``bytes`` sequence (best of ``--repeats``), the
pure-Python reference below on the first ``--ref-mb`` of it (it is ~20-60x slower, so a smaller
slice keeps the run short), a check that both give identical ids on that slice, and a Markdown table.
The sequence is random ACGT with ~1% N and ~10% lower case, as in a soft-masked genome.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from datapipe.tokenizers import TOKENIZER_NAMES, DnaGptTokenizer, Tokenizer, get_tokenizer


def reference_encode(tok: Tokenizer, seq: str) -> np.ndarray:
    """What one would write first: upper-case, slice k-mers, look each up in a dict (unknown -> unk)."""
    table = {t: i for i, t in enumerate(tok.vocab)}
    seq = seq.upper()
    k = tok.k
    if isinstance(tok, DnaGptTokenizer):  # non-overlapping; pieces not in the vocabulary -> 0
        ids = [table.get(seq[i : i + k], tok.unk_id) for i in range(0, len(seq), k)]
    else:  # overlapping, stride 1
        ids = [table.get(seq[i : i + k], tok.unk_id) for i in range(len(seq) - k + 1)]
    return np.array(ids, dtype=np.int32)


def random_genome(n: int, *, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    seq = np.frombuffer(b"ACGT", np.uint8)[rng.integers(0, 4, n)].copy()
    seq[rng.random(n) < 0.01] = ord("N")
    lower = rng.random(n) < 0.10
    seq[lower] += 32  # soft-masked repeats are lower case
    return seq.tobytes()


def best_of(repeats: int, fn, *args) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(*args)
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=float, default=32.0, help="MB (1e6 bases) for the vectorised encoder")
    parser.add_argument("--ref-mb", type=float, default=1.0, help="MB for the pure-Python reference")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many timed runs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    n = int(args.mb * 1e6)
    n_ref = min(n, int(args.ref_mb * 1e6))
    genome = random_genome(n, seed=args.seed)
    ref_text = genome[:n_ref].decode("ascii")
    rows = []
    for name in TOKENIZER_NAMES:
        tok = get_tokenizer(name)
        t_vec, _ = best_of(args.repeats, tok.encode, genome)
        t_ref, ref_ids = best_of(1, reference_encode, tok, ref_text)
        if not np.array_equal(tok.encode(genome[:n_ref]), ref_ids):
            print(f"MISMATCH: {name} vectorised and reference ids differ", file=sys.stderr)
            return 1
        rows.append((name, n / t_vec / 1e6, n_ref / t_ref / 1e6))

    print(
        f"{args.mb:g} MB random ACGT (1% N, 10% lower case), seed {args.seed}; reference on {n_ref / 1e6:g} MB\n"
    )
    print("| tokenizer | vectorised MB/s | pure-Python MB/s | speedup (x) |")
    print("|---|---:|---:|---:|")
    for name, vec, ref in rows:
        print(f"| {name} | {vec:,.0f} | {ref:,.1f} | {vec / ref:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
