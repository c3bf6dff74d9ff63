"""Long inputs on the CPU: sequences/s for 10,500-bp promoters (the expression task's input, 1,750 DNAGPT
tokens) read whole by a model with a long enough context, or as mean-pooled overlapping windows by one with a
512- (or 128-) token context, through the regression path `dnafm eval` takes (prompt encoding + batched
forward + the regression head).

    .venv/bin/python bench/bench_long_inputs.py [--n 16] [--arch s|tiny] [--batch 4]

The models are untrained (speed does not depend on the weights): the dnagpt-s-512 architecture (12 x 768) or
tiny-dnagpt's (2 x 128), each built once with a 1,760-token context (reads 1,753-token prompts whole) and once
with its own context (512 / 128 tokens: 5 / 19 windows at overlap 0.25). The same sequences in the same run.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch

from datapipe.tokenizers import get_tokenizer
from eval.long_inputs import encode
from eval.regress_finetune import predict_values
from eval.regress_heads import build_regressor
from trainer.models.gpt import DNAGPT
from trainer.recipes import get_recipe

RECIPES = {"s": "dnagpt-s-512", "tiny": "tiny-dnagpt"}


def _time(model, tok, seqs, *, ctx: int, overlap: float, batch: int) -> tuple[float, float, float]:
    """(encode seconds, forward seconds, windows per sequence)."""
    t0 = time.perf_counter()
    inp = encode(
        "dnagpt", tok, seqs, species_token="R", max_len=ctx, pool="mean", overlap=overlap, prompt="regress"
    )
    t_enc = time.perf_counter() - t0
    predict_values(
        model, inp, np.arange(min(batch, len(seqs))), device=torch.device("cpu"), batch_size=batch
    )  # warm
    t0 = time.perf_counter()
    predict_values(model, inp, np.arange(len(seqs)), device=torch.device("cpu"), batch_size=batch)
    return t_enc, time.perf_counter() - t0, float(inp.windows_per_example.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--length", type=int, default=10_500)
    ap.add_argument("--arch", choices=tuple(RECIPES), default="s")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--overlap", type=float, default=0.25)
    args = ap.parse_args()

    cfg = get_recipe(RECIPES[args.arch])
    tok = get_tokenizer("dnagpt-6mer")
    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACGT"), args.length)) for _ in range(args.n)]
    short = cfg.model.max_seq_len
    rows = []
    for ctx in (1760, short):
        torch.manual_seed(0)
        gpt = DNAGPT(replace(cfg.model, vocab_size=tok.vocab_size, max_seq_len=ctx, attention="torch"))
        model = build_regressor("dnagpt", gpt.eval(), tok, n_features=0, probe=False, pool="mean").eval()
        rows.append((ctx, *_time(model, tok, seqs, ctx=ctx, overlap=args.overlap, batch=args.batch)))
    print(
        f"\n{RECIPES[args.arch]} architecture on CPU ({torch.get_num_threads()} threads): {args.n} sequences of "
        f"{args.length:,} bp, batches of {args.batch}, overlap {args.overlap}\n"
    )
    print("| context (tokens) | read as | windows / sequence | encode s | forward s | sequences/s | ratio |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    base = args.n / (rows[0][1] + rows[0][2])
    for ctx, t_enc, t_fwd, w in rows:
        rate = args.n / (t_enc + t_fwd)
        how = "whole" if w == 1 else "mean-pooled windows"
        print(f"| {ctx} | {how} | {w:.0f} | {t_enc:.2f} | {t_fwd:.2f} | {rate:.2f} | {rate / base:.2f} |")


if __name__ == "__main__":
    main()
