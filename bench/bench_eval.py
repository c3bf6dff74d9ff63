"""Scoring speed of `dnafm eval`: a tiny model embeds and scores N sequences of 600 bp on the CPU.

    .venv/bin/python bench/bench_eval.py [--n 10000] [--recipe tiny-dnagpt]

Times the same path `dnafm eval` takes after fine-tuning (tokenize + prompt encoding + batched forward +
softmax over the answer tokens), against a per-sequence loop (batch size 1) on the first 500 sequences in
the same run. Goal (issue #8): 10k sequences of 600 bp in under a minute on CPU.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from datapipe.tokenizers import get_tokenizer
from eval.finetune import predict
from eval.heads import build_classifier, encode_inputs
from trainer.families import bare_model
from trainer.recipes import get_recipe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--length", type=int, default=600)
    ap.add_argument("--recipe", default="tiny-dnagpt")
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()

    cfg = get_recipe(args.recipe)
    tok = get_tokenizer(cfg.tokenizer)
    torch.manual_seed(0)
    model = build_classifier(cfg.family, bare_model(cfg), tok, probe=False).eval()
    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACGT"), args.length)) for _ in range(args.n)]
    device = torch.device("cpu")

    t0 = time.perf_counter()
    ids, pos = encode_inputs(
        cfg.family, tok, seqs, species_token="R", max_len=cfg.model.max_seq_len, crop=True
    )
    t_encode = time.perf_counter() - t0
    t0 = time.perf_counter()
    prob = predict(model, ids, pos, batch_size=args.batch, device=device)
    t_score = time.perf_counter() - t0
    n_ref = min(500, args.n)
    t0 = time.perf_counter()
    ref = predict(model, ids[:n_ref], pos[:n_ref], batch_size=1, device=device)
    t_ref = (time.perf_counter() - t0) * args.n / n_ref
    assert np.allclose(prob[:n_ref], ref, atol=1e-4), "batched and per-sequence scores differ"

    total = t_encode + t_score
    print(
        f"\n{args.recipe} on CPU ({torch.get_num_threads()} threads): {args.n:,} sequences of {args.length} bp, "
        f"{ids.shape[1]} tokens each\n"
    )
    print("| path | seconds | sequences/s | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| per-sequence loop (extrapolated from {n_ref}) | {t_ref:.1f} | {args.n / t_ref:,.0f} | 1.00 |")
    print(
        f"| dnafm eval scoring: encode {t_encode:.2f} s + batched forward {t_score:.2f} s | {total:.1f} | "
        f"{args.n / total:,.0f} | {t_ref / total:.1f}x |"
    )
    print(
        f"\ngoal: {args.n:,} sequences in under 60 s -> {'met' if total < 60 else 'NOT met'} ({total:.1f} s)"
    )


if __name__ == "__main__":
    main()
