"""Can a tiny encoder learn DNABERT's span-masked objective at all? The model half of issue #23's MLM plateau.

    .venv/bin/python bench/bench_span_mlm.py [--k 3] [--steps 2000] [--init-std 0.1] [--layers 2] [--width 64]

tiny-dnabert's masked-LM accuracy stays at 0.10 (the masked tokens BERT leaves unchanged) however long it
trains. This takes the data pipeline out of the question: uniformly random bases, cut into overlapping k-mers
in code here, masked by dnafm's own ``span_mask`` / ``apply_replacement`` (15%, 80/10/10), fed straight to the
model. Each masked span hides exactly one base; every other base of a masked k-mer is visible in the nearest
unmasked neighbours, so an encoder that reads them reaches about 25% accuracy (one base in four) plus the 10%
left unchanged. Side by side in one run, same batches and optimizer (AdamW, betas (0.9, 0.98), clip 1.0): dnafm's
DNABERT (post-LN, tied MLM head, ``--init-std``) and torch.nn.TransformerEncoder (pre-LN, PyTorch's default
init, untied output) of the same size. Prints masked-token accuracy, averaged over the 100 steps up to each mark.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainer.masking import MaskingConfig, apply_replacement, span_mask
from trainer.models.bert import DNABERT, BertConfig

# 126 k-mers per window; ids 0-4 are the specials, as in the dnabert vocabularies
T, MASK, FIRST_KMER = 126, 4, 5


class TorchEncoder(nn.Module):
    def __init__(self, vocab: int, width: int, layers: int):
        super().__init__()
        self.emb, self.pos = nn.Embedding(vocab, width), nn.Embedding(T, width)
        layer = nn.TransformerEncoderLayer(
            width, 4, 4 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Linear(width, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        return self.out(self.enc(self.emb(x) + self.pos(torch.arange(x.shape[1]))))


class Dnabert(nn.Module):
    def __init__(self, vocab: int, width: int, layers: int, init_std: float):
        super().__init__()
        cfg = BertConfig(vocab_size=vocab, max_seq_len=T, n_layer=layers, n_head=4, d_model=width,
                         d_ff=4 * width, dropout=0.0, init_std=init_std)  # fmt: skip
        self.bert = DNABERT(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bert.mlm_logits(self.bert(x))


def batches(k: int, n: int, seed: int):
    """Endless (input ids, labels) pairs, each (n, T); labels are -100 off the masked positions."""
    rng = np.random.default_rng(seed)
    cfg, vocab = MaskingConfig(), 4**k + FIRST_KMER
    kmer_ids = np.arange(FIRST_KMER, vocab)
    while True:
        bases = rng.integers(0, 4, (n, T + k - 1))
        ids = sum(bases[:, j : j + T] * 4 ** (k - 1 - j) for j in range(k)) + FIRST_KMER  # (n, T) k-mer ids
        inputs, labels = ids.copy(), np.full_like(ids, -100)
        for row in range(n):
            masked, _ = span_mask(T, k=k, rate=cfg.mask_rate, rng=rng)
            inputs[row] = apply_replacement(
                ids[row], masked, cfg=cfg, mask_id=MASK, kmer_ids=kmer_ids, rng=rng
            )
            labels[row, masked] = ids[row, masked]
        yield torch.from_numpy(inputs), torch.from_numpy(labels)


def train(model: nn.Module, args: argparse.Namespace) -> list[float]:
    """-> masked-token accuracy of every step."""
    vocab = 4**args.k + FIRST_KMER
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    accs = []
    for x, y in itertools.islice(batches(args.k, 16, args.seed), args.steps):
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sel = y != -100
        accs.append((logits.argmax(-1)[sel] == y[sel]).float().mean().item())
    return accs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=3, help="k-mer size (DNABERT-k)")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--init-std", type=float, default=0.1, help="dnafm DNABERT's init std (BERT's: 0.02)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    vocab = 4**args.k + FIRST_KMER
    marks = range(args.steps // 10, args.steps + 1, args.steps // 10)
    print(f"span-masked DNABERT-{args.k} on random bases, {args.layers} layers x {args.width}, batch 16 x {T}, "
          f"lr {args.lr:g}; reading the neighbours gives ~0.25 + 0.10\n")  # fmt: skip
    print("| encoder | " + " | ".join(f"acc @{s}" for s in marks) + " |")
    print("|---|" + "---|" * len(marks))
    encoders = (
        (
            f"dnafm DNABERT (init std {args.init_std:g})",
            lambda: Dnabert(vocab, args.width, args.layers, args.init_std),
        ),
        ("torch TransformerEncoder (pre-LN)", lambda: TorchEncoder(vocab, args.width, args.layers)),
    )
    for name, build in encoders:
        torch.manual_seed(args.seed)
        accs = train(build(), args)
        print(
            f"| {name} | " + " | ".join(f"{np.mean(accs[s - 100 : s]):.3f}" for s in marks) + " |", flush=True
        )


if __name__ == "__main__":
    main()
