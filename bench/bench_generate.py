"""Sampling throughput with the KV cache against recomputing every position at every step.

    .venv/bin/python bench/bench_generate.py --tokens 512 --batch 1 4 --models tiny-512 dnagpt-s-512

For each model (freshly initialised weights: speed does not depend on them) and batch size, one generation
from a 2-token prompt to ``--tokens`` tokens in all, with and without the cache (same seed; the script checks
that both draw the same tokens), best of ``--repeats``. Prints a Markdown table of new tokens per second.
"""

from __future__ import annotations

import argparse
import time

import torch

from trainer.generate import SamplingConfig, generate
from trainer.models.gpt import DNAGPT, GPTConfig
from trainer.recipes import get_recipe


def build(name: str, ctx: int) -> DNAGPT:
    """'tiny-512': tiny-dnagpt (2 layers x 128) with a 512-token context; else a recipe's model."""
    cfg = get_recipe("tiny-dnagpt" if name == "tiny-512" else name).model
    cfg = GPTConfig(**{**cfg.to_dict(), "max_seq_len": max(ctx, cfg.max_seq_len)})
    torch.manual_seed(0)
    return DNAGPT(cfg).eval()


def timed(model: DNAGPT, prompt: torch.Tensor, cfg: SamplingConfig, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = generate(model, prompt, cfg, show_progress=False)
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=512, help="sequence length at the end (prompt + new)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--models", nargs="+", default=["tiny-512", "dnagpt-s-512"])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| model | params | batch | new tokens | cache tok/s | no cache tok/s | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in args.models:
        model = build(name, args.tokens)
        n_params = sum(p.numel() for p in model.parameters())
        for b in args.batch:
            prompt = torch.tensor([[21, 34]]).expand(b, -1)  # <R> and one 6-mer
            new = args.tokens - prompt.shape[1]
            cfg = SamplingConfig(max_new_tokens=new, seed=0, top_k=50)
            t_cache, a = timed(model, prompt, cfg, args.repeats)
            nocache = SamplingConfig(**{**cfg.to_dict(), "use_cache": False})
            t_full, c = timed(model, prompt, nocache, args.repeats)
            same = "" if torch.equal(a.ids, c.ids) else " (tokens differ!)"
            print(
                f"| {name} | {n_params / 1e6:.1f}M | {b} | {new} | {new * b / t_cache:,.0f} | "
                f"{new * b / t_full:,.0f} | {t_full / t_cache:.1f}x{same} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
