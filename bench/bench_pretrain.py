"""Pretraining throughput: our DeepSpeed engine against a plain PyTorch loop over the same model, same batches.

    .venv/bin/python bench/bench_pretrain.py                      # CPU: tiny-dnagpt, fp32, ZeRO-1, 1 rank
    python bench/bench_pretrain.py --recipe dnagpt-s-512 --micro-batch 16   # on a GPU: bf16, MFU, torch.compile

Both paths train the same initial weights on the same pre-built batches (the loader is left out: it has its
own benchmark), with AdamW, the warm-up/cosine schedule and clipping. They run in alternating blocks so a
noisy neighbour hits both alike. On a GPU the plain loop is `torch.compile(model)` with PyTorch SDPA
attention, the baseline the issue names; MFU uses 6N + 12*L*d*T FLOPs per token over the bf16 peak.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch

from cluster.launch import init_process_group
from datapipe.fasta import read_fasta
from datapipe.shards.format import Sample
from datapipe.tokenizers import get_tokenizer
from trainer.engine import build_engine, lr_lambda, param_groups
from trainer.families import FAMILIES, count_params
from trainer.loop import device_peak_flops, model_flops_per_token
from trainer.recipes import get_recipe

GENOME = Path(__file__).resolve().parents[1] / "data/genomes/grch37_chr20_44-46Mb.fa.gz"


def make_batches(cfg, n: int, micro_batch: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """n batches of full-length windows cut from real chr20 sequence."""
    tok = get_tokenizer(cfg.tokenizer)
    family = FAMILIES[cfg.family]
    window = cfg.model.max_seq_len - family.template_tokens
    seq = next(read_fasta(GENOME)).seq
    ids = tok.encode(seq).astype(np.uint16)
    builder = family.collate(cfg, tok)
    rng = np.random.default_rng(0)
    batches = []
    for b in range(n):
        samples = []
        for i in range(micro_batch):
            start = int(rng.integers(0, len(ids) - window))
            samples.append(
                Sample(
                    key=f"u000000-{b * micro_batch + i:06d}",
                    ids=ids[start : start + window],
                    meta={"token": "R", "gc": float(rng.random())},
                )
            )
        batches.append({k: v.to(device) for k, v in builder(samples, rng).items()})
    return batches


def plain_step_fn(model, cfg, device):
    opt = torch.optim.AdamW(
        param_groups(model, cfg.optim.weight_decay),
        lr=cfg.optim.lr,
        betas=tuple(cfg.optim.betas),
        fused=device.type == "cuda",
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.optim, cfg.train.steps))
    bf16 = device.type == "cuda"

    def step(batch):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(batch)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def timed(step, batches, device) -> float:
    """Seconds for one pass over batches (the loss is read once at the end: one sync)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    loss = None
    for b in batches:
        loss = step(b)
    float(loss.detach())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


class _HFMaskedLM(torch.nn.Module):
    """transformers' BertForMaskedLM behind our batch -> loss-dict interface."""

    def __init__(self, hf):
        super().__init__()
        self.hf = hf

    def forward(self, batch):
        out = self.hf(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"].long(),
            labels=batch["mlm_labels"],
        )
        return {"loss": out.loss}


def hf_masked_lm(base: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Same weights as our DNABERT, loaded through the Hugging Face export, with SDPA attention."""
    import tempfile

    import transformers

    from trainer.models.hf_bert import save_hf_bert

    with tempfile.TemporaryDirectory() as tmp:
        save_hf_bert(base.bert, Path(tmp) / "m")
        hf = transformers.BertForMaskedLM.from_pretrained(Path(tmp) / "m", attn_implementation="sdpa")
    return _HFMaskedLM(hf).to(device).train()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="tiny-dnagpt")
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10, help="steps per timed block")
    ap.add_argument("--blocks", type=int, default=4, help="alternating timed blocks per path")
    ap.add_argument("--no-compile", action="store_true", help="GPU: skip torch.compile for the plain loop")
    ap.add_argument(
        "--hf-baseline",
        action="store_true",
        help="DNABERT: the plain loop trains transformers' BertForMaskedLM (SDPA) with the same weights",
    )
    args = ap.parse_args()

    dist_info = init_process_group()
    device = dist_info.device
    cfg = get_recipe(args.recipe).with_overrides(
        [f"loader.micro_batch_size={args.micro_batch}", "train.steps=100000"]
    )
    torch.manual_seed(0)
    base = FAMILIES[cfg.family].build(cfg)
    plain_model = copy.deepcopy(base).to(device)
    for m in plain_model.modules():  # the baseline uses PyTorch SDPA, not our kernels
        if hasattr(m, "impl"):
            m.impl = "torch"
    if args.hf_baseline:
        plain_model = hf_masked_lm(base, device)
    if device.type == "cuda":
        if not args.no_compile:
            plain_model = torch.compile(plain_model)
    plain = plain_step_fn(plain_model, cfg, device)
    engine, _ = build_engine(
        copy.deepcopy(base), cfg.train, cfg.optim, micro_batch_size=args.micro_batch, dist_info=dist_info
    )

    def ds_step(batch):
        out = engine(batch)
        engine.backward(out["loss"])
        engine.step()
        return out["loss"]

    batches = make_batches(cfg, args.steps, args.micro_batch, device)
    tokens = sum(int(b["num_tokens"]) for b in batches)
    timed(plain, batches[:2], device)  # warm-up (and compilation)
    timed(ds_step, batches[:2], device)
    t_plain, t_ds = [], []
    for _ in range(args.blocks):
        t_plain.append(timed(plain, batches, device))
        t_ds.append(timed(ds_step, batches, device))
    plain_tps, ds_tps = tokens / min(t_plain), tokens / min(t_ds)
    n = count_params(cfg)
    flops = model_flops_per_token(n, cfg.model.n_layer, cfg.model.d_model, cfg.model.max_seq_len)
    peak = device_peak_flops(device)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(
        f"\n{args.recipe}: {n / 1e6:.2f}M parameters, micro-batch {args.micro_batch} x {cfg.model.max_seq_len} "
        f"tokens, {name}, best of {args.blocks} blocks of {args.steps} steps\n"
    )
    print("| path | tokens/s | MFU | ratio to plain |")
    print("|---|---:|---:|---:|")
    plain_label = "transformers BertForMaskedLM (SDPA)" if args.hf_baseline else "plain PyTorch loop"
    for label, tps in (
        (
            plain_label + (" (torch.compile)" if device.type == "cuda" and not args.no_compile else ""),
            plain_tps,
        ),
        (f"dnafm DeepSpeed engine (ZeRO-{cfg.train.zero_stage})", ds_tps),
    ):
        mfu = f"{tps * flops / peak:.1%}" if peak else "n/a"
        print(f"| {label} | {tps:,.0f} | {mfu} | {tps / plain_tps:.3f} |")
    print(f"\nengine overhead (plain / engine time per token): {plain_tps / ds_tps:.3f}x")


if __name__ == "__main__":
    main()
