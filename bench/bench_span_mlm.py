"""Can a tiny encoder learn DNABERT's span-masked objective at all? The model half of issue #23's MLM plateau.

    .venv/bin/python bench/bench_span_mlm.py [--k 3] [--steps 2000] [--init-std 0.1] [--layers 2] [--width 64]

tiny-dnabert's masked-LM accuracy stays at 0.10 (the masked tokens BERT leaves unchanged) however long it
trains. This takes the data pipeline out of the question: uniformly random bases, cut into overlapping k-mers
by dnafm's DNABERT-k tokenizer, masked by its own ``span_mask`` / ``apply_replacement`` (15%, 80/10/10), fed
straight to the model. Each masked span hides exactly one base; every other base of a masked k-mer is visible
in the nearest unmasked neighbours, so an encoder that reads them reaches about 0.33 accuracy (one base in four
on the 90% of masked tokens that are replaced, plus the 10% left unchanged). Side by side in one run, same batches and optimizer (AdamW, betas (0.9, 0.98), clip 1.0): dnafm's
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

from datapipe.tokenizers import get_tokenizer
from trainer.masking import MaskingConfig, apply_replacement, span_mask
from trainer.models.bert import DNABERT, BertConfig

T, BATCH = 126, 16  # k-mers per window (tiny-dnabert's windows), windows per step


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


def batches(tok, seed: int):
    """Endless (input ids, labels) pairs, each (BATCH, T) int64; labels are -100 off the masked positions."""
    rng = np.random.default_rng(seed)
    cfg, acgt = MaskingConfig(), np.frombuffer(b"ACGT", np.uint8)
    while True:
        inputs, labels = [], []
        for _ in range(BATCH):
            ids = tok.encode(acgt[rng.integers(0, 4, T + tok.k - 1)].tobytes().decode()).astype(np.int64)
            masked, _ = span_mask(T, k=tok.k, rate=cfg.mask_rate, rng=rng)
            inputs.append(
                apply_replacement(ids, masked, cfg=cfg, mask_id=tok.mask_id, kmer_ids=tok.kmer_ids, rng=rng)
            )
            labels.append(np.where(masked, ids, -100))
        yield torch.from_numpy(np.stack(inputs)), torch.from_numpy(np.stack(labels))


def train(model: nn.Module, tok, args: argparse.Namespace) -> list[float]:
    """-> masked-token accuracy of every step."""
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    accs = []
    for x, y in itertools.islice(batches(tok, args.seed), args.steps):
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, tok.vocab_size), y.reshape(-1))
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
    tok = get_tokenizer(f"dnabert-{args.k}")
    vocab = tok.vocab_size
    marks = range(args.steps // 10, args.steps + 1, args.steps // 10)
    print(f"span-masked DNABERT-{args.k} on random bases, {args.layers} layers x {args.width}, batch {BATCH} x {T}, "
          f"lr {args.lr:g}; reading the neighbours gives about 0.33\n")  # fmt: skip
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
        accs = train(build(), tok, args)
        print(
            f"| {name} | " + " | ".join(f"{np.mean(accs[max(0, s - 100) : s]):.3f}" for s in marks) + " |",
            flush=True,
        )


if __name__ == "__main__":
    main()
