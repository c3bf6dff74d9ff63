"""Embedding speed of `dnafm embed` on the CPU: sequences per second, batched vs one at a time.

    .venv/bin/python bench/bench_embed.py [--n 2000] [--length 101 500] [--recipes tiny-dnabert tiny-dnagpt dnabert-6]

For each recipe (freshly initialised weights: speed does not depend on them) and sequence length, times
``eval.interpret.embed.embed_sequences`` (length-sorted batches of ``--batch``, mean pooling, windowing past the
context) on N random sequences, and the same function one sequence per call on the first ``--n-ref``
sequences in the same run (the baseline; the two must agree to 1e-4). Includes tokenisation.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from datapipe.tokenizers import get_tokenizer
from eval.interpret.embed import EmbedConfig, embed_sequences, windows
from trainer.families import bare_model
from trainer.recipes import get_recipe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--n-ref", type=int, default=100)
    ap.add_argument("--length", type=int, nargs="+", default=[101, 500])
    ap.add_argument("--recipes", nargs="+", default=["tiny-dnabert", "tiny-dnagpt", "dnabert-6"])
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"\nCPU, {torch.get_num_threads()} threads; mean pooling; random sequences\n")
    print("| model | params | bp | windows/seq | one per call (seq/s) | batched (seq/s) | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for recipe in args.recipes:
        cfg = get_recipe(recipe)
        tok = get_tokenizer(cfg.tokenizer)
        torch.manual_seed(0)
        model = bare_model(cfg).eval()
        params = sum(p.numel() for p in model.parameters())
        for length in args.length:
            n = args.n if params < 20e6 else max(args.n // 10, args.n_ref)  # BERT-base: fewer, still minutes
            seqs = ["".join(rng.choice(list("ACGT"), length)) for _ in range(n)]
            cfg_b = EmbedConfig(batch_size=args.batch)
            t0 = time.perf_counter()
            batched = embed_sequences(model, cfg.family, tok, seqs, cfg_b)
            t_batch = time.perf_counter() - t0
            n_ref = min(args.n_ref, n)
            t0 = time.perf_counter()
            one = np.concatenate(
                [
                    embed_sequences(model, cfg.family, tok, [s], EmbedConfig(batch_size=1))
                    for s in seqs[:n_ref]
                ]
            )
            t_one = time.perf_counter() - t0
            assert np.allclose(batched[:n_ref], one, atol=1e-4), "batched and one-at-a-time embeddings differ"
            per_seq = len(windows(seqs[0], cfg.family, tok.k, cfg.model.max_seq_len))
            print(
                f"| {recipe} | {params / 1e6:.1f}M | {length} | {per_seq} | {n_ref / t_one:,.1f} | "
                f"{n / t_batch:,.1f} | {(n / t_batch) / (n_ref / t_one):.1f}x |"
            )


if __name__ == "__main__":
    main()
