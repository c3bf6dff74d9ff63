"""Can an encoder learn to read its neighbour? A toy probe of the MLM plateau behind issue #23.

    .venv/bin/python bench/bench_copy_task.py [--steps 1000] [--seeds 0,1,2] [--init-std 0.02]

tiny-dnabert's MLM accuracy stalls at 0.10 (the share of masked tokens BERT leaves unchanged) with near-uniform
attention. This asks the same encoders a simpler question: random tokens over a 64-symbol vocabulary, 15%
replaced by [MASK], and each masked position must name the token to its left. It needs one attention head
that looks one position back, nothing else. Side by side in one run: dnafm's DNABERT at tiny-dnabert's size
(2 layers x 64, 4 heads, BERT's N(0, 0.02) init, tied MLM head) and torch.nn.TransformerEncoder of the same
size (post-LN, PyTorch's default init, untied output), same data, optimizer (AdamW lr 2e-3) and batches.
Prints the loss every 100 steps and the first step with loss < 1 nat (chance: ln 64 = 4.16). ``--init-std``
sets dnafm DNABERT's init (``model.init_std``; BERT's is 0.02).
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from torch import nn

from trainer.models.bert import DNABERT, BertConfig

V, T, D, MASK = 69, 64, 64, 4  # dnabert-3's vocabulary size: 5 specials, then 64 k-mers


class TorchEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.pos = nn.Embedding(V, D), nn.Embedding(T, D)
        layer = nn.TransformerEncoderLayer(D, 4, 256, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.out = nn.Linear(D, V)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        return self.out(self.enc(self.emb(x) + self.pos(torch.arange(x.shape[1]))))


class Dnabert(nn.Module):
    def __init__(self, init_std: float):
        super().__init__()
        self.bert = DNABERT(BertConfig(vocab_size=V, max_seq_len=T, n_layer=2, n_head=4, d_model=D, d_ff=256,
                                       dropout=0.0, init_std=init_std))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bert.mlm_logits(self.bert(x))


def train(model: nn.Module, steps: int, seed: int) -> list[float]:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(steps):
        x = torch.randint(5, V, (32, T), generator=gen)
        masked = torch.rand(32, T, generator=gen) < 0.15
        target = torch.roll(x, 1, 1).masked_fill(~masked, -100)
        target[:, 0] = -100
        loss = F.cross_entropy(model(x.masked_fill(masked, MASK)).reshape(-1, V), target.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--init-std", type=float, default=0.02, help="dnafm DNABERT's init std (default: BERT's)")
    args = ap.parse_args()
    print(
        f"copy-the-left-neighbour, {args.steps} steps of 32 x {T} tokens; chance loss {math.log(V - 5):.2f} nats\n"
    )
    print(
        "| encoder | seed | "
        + " | ".join(f"loss @{s}" for s in range(100, args.steps + 1, 100))
        + " | first step < 1 nat |"
    )
    print("|---|---|" + "---|" * (args.steps // 100) + "---|")
    for seed in (int(s) for s in args.seeds.split(",")):
        encoders = (
            (f"dnafm DNABERT (tiny, init std {args.init_std:g})", lambda: Dnabert(args.init_std)),
            ("torch TransformerEncoder", TorchEncoder),
        )
        for name, build in encoders:
            torch.manual_seed(seed)
            losses = train(build(), args.steps, seed)
            # the mean of the 20 steps up to each mark (single steps are noisy)
            marks = [sum(losses[s - 20 : s]) / 20 for s in range(100, args.steps + 1, 100)]
            first = next((i + 1 for i, v in enumerate(losses) if v < 1.0), None)
            print(f"| {name} | {seed} | " + " | ".join(f"{m:.2f}" for m in marks) + f" | {first or 'never'} |",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
