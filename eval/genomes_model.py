"""Haplotypes as DNAGPT token sequences: the template, its windows, fine-tuning, and generation.

**Template.** One window of a haplotype is

    <R>  <M>  a_s  a_s+1  ...  a_e-1

``<R>`` the species token (human), ``<M>`` a number slot whose value, s / S (the window's first SNP over the
panel's S SNPs), enters through DNAGPT's number embedding and tells the model where in the panel the window
lies, then one allele token per SNP in panel order: ``<0>`` for the allele coded 0 (REF in a VCF), ``<1>`` for
the allele coded 1. The alleles reuse DNAGPT's reserved digit tokens, so a SNP is exactly one token, no new
embedding rows are needed, and the vocabulary needs no change. (DNAGPT itself was fine-tuned on 0/1 haplotype
sequences; k-mer tokens of the actual bases would put up to six SNPs in one token, 4^6 choices each.) The
next-token loss, and sampling, run over the two allele tokens only: the softmax over ``<0>``/``<1>`` is the
model's conditional allele probability.

**Windows (panels longer than the context).** A window holds up to W = context - 2 SNPs. A panel of S <= W
SNPs is one window. A longer one is cut into windows of W SNPs starting every W - overlap SNPs (default
overlap W / 2), the last one moved back to end at S. Training uses every window of every training haplotype.
Generation samples window 0 from ``<R><M>``; every later window is prompted with ``<R><M>`` and the SNPs it
shares with the windows already generated (at least ``overlap``), and samples the rest: each new SNP is
conditioned on up to W - 1 SNPs before it. A 10,000-SNP panel with a 4,096-token model is 4 windows.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from datapipe.common.config import Config, check
from datapipe.common.logs import progress
from datapipe.common.tracking import Tracker
from trainer.generate import SamplingConfig, generate
from trainer.models.gpt import DNAGPT

log = logging.getLogger(__name__)

SPECIES_ID = 21  # <R>
NUMBER_ID = 18  # <M>
ALLELE_IDS = (0, 1)  # <0> <1>
PREFIX = 2  # <R><M>


@dataclass(frozen=True)
class WindowPlan:
    """Window k covers SNPs [starts[k], starts[k] + width); ``new_from[k]``: its first SNP not covered by an
    earlier window (what generation samples in window k)."""

    n_snps: int
    width: int
    starts: tuple[int, ...]

    @property
    def new_from(self) -> tuple[int, ...]:
        return (0, *(self.starts[k - 1] + self.width for k in range(1, len(self.starts))))


def plan_windows(n_snps: int, context: int, overlap: float = 0.5) -> WindowPlan:
    """Windows of a panel of ``n_snps`` for a model of ``context`` tokens (``overlap``: fraction of a window
    shared with the previous one)."""
    width = context - PREFIX
    if width < 2:
        raise ValueError(f"a context of {context} tokens leaves no room for alleles")
    if n_snps <= width:
        return WindowPlan(n_snps=n_snps, width=n_snps, starts=(0,))
    stride = max(1, width - int(round(overlap * width)))
    starts = list(range(0, n_snps - width, stride)) + [n_snps - width]
    return WindowPlan(n_snps=n_snps, width=width, starts=tuple(starts))


def window_tokens(alleles: np.ndarray, plan: WindowPlan, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, S) alleles -> window k as (H, 2 + width) token ids and (H,) number values."""
    s = plan.starts[k]
    h = alleles.shape[0]
    ids = np.empty((h, PREFIX + plan.width), np.int64)
    ids[:, 0], ids[:, 1] = SPECIES_ID, NUMBER_ID
    ids[:, PREFIX:] = np.asarray(ALLELE_IDS)[alleles[:, s : s + plan.width]]
    return ids, np.full(h, s / plan.n_snps, np.float32)


def show_template(alleles: np.ndarray, plan: WindowPlan, k: int = 0, n: int = 8) -> list[tuple[str, str]]:
    """The first ``n`` tokens of window k of one haplotype, as (token, role) pairs (for docs and logs)."""
    ids, value = window_tokens(alleles[None], plan, k)
    s = plan.starts[k]
    out = [("<R>", "species"), ("<M>", f"number slot, value {value[0]:.4g} = {s} / {plan.n_snps}")]
    out += [(f"<{t}>", f"SNP {s + i}") for i, t in enumerate(ids[0, PREFIX:n].tolist())]
    return out


@dataclass(kw_only=True)
class HaploTuneConfig(Config):
    epochs: int = 3
    lr: float = 1e-3
    micro_batch_size: int = 32
    """Windows per optimizer step."""
    val_fraction: float = 0.05
    """Training individuals held out to pick the best epoch (by validation loss)."""
    window_overlap: float = 0.5
    """Fraction of a window shared with the previous one, for panels longer than the context."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0 = all epochs); for quick runs."""
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.epochs >= 1, "epochs", "must be >= 1")
        check(self.lr > 0, "lr", "must be > 0")
        check(self.micro_batch_size >= 1, "micro_batch_size", "must be >= 1")
        check(0 <= self.val_fraction < 0.5, "val_fraction", "must be in [0, 0.5)")
        check(0 <= self.window_overlap < 1, "window_overlap", "must be in [0, 1)")
        check(self.max_steps >= 0, "max_steps", "must be >= 0")


class HaplotypeLM(nn.Module):
    """DNAGPT with the next-allele loss: cross-entropy over the two allele tokens at every allele position."""

    def __init__(self, gpt: DNAGPT):
        super().__init__()
        self.gpt = gpt

    def forward(self, ids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """ids (B, T) windows, values (B,) -> mean next-allele loss (nats)."""
        b, t = ids.shape
        slot = torch.zeros(b, t, dtype=torch.bool, device=ids.device)
        slot[:, 1] = True
        hidden = self.gpt(ids, values[:, None].expand(b, t), slot)  # (B, T, D)
        # position j predicts token j + 1: positions 1 .. T-2 predict the alleles at 2 .. T-1
        alleles = torch.tensor(ALLELE_IDS, device=ids.device)
        logits = self.gpt.lm_logits(hidden[:, PREFIX - 1 : -1], alleles)  # (B, T-2, 2)
        return F.cross_entropy(logits.reshape(-1, 2).float(), ids[:, PREFIX:].reshape(-1))


def _windows(alleles: np.ndarray, plan: WindowPlan) -> tuple[np.ndarray, np.ndarray]:
    parts = [window_tokens(alleles, plan, k) for k in range(len(plan.starts))]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@torch.no_grad()
def mean_loss(model: HaplotypeLM, ids: np.ndarray, values: np.ndarray, device, batch: int = 64) -> float:
    model.eval()
    total = 0.0
    for lo in range(0, len(ids), batch):
        x = torch.from_numpy(ids[lo : lo + batch]).to(device)
        total += float(model(x, torch.from_numpy(values[lo : lo + batch]).to(device))) * len(x)
    return total / max(len(ids), 1)


def finetune_haplotypes(
    gpt: DNAGPT,
    train: np.ndarray,
    val: np.ndarray,
    cfg: HaploTuneConfig,
    *,
    dist_info,
    tracker: Tracker,
) -> tuple[DNAGPT, dict]:
    """Fine-tune on the windows of ``train`` (H, S) on the DeepSpeed engine; keep the epoch with the lowest
    validation loss. Returns the model (eval mode) and the history."""
    from trainer.config import OptimConfig, TrainConfig
    from trainer.engine import build_engine

    torch.manual_seed(cfg.seed)
    plan = plan_windows(train.shape[1], gpt.cfg.max_seq_len, cfg.window_overlap)
    ids, values = _windows(train, plan)
    val_ids, val_values = _windows(val, plan)
    steps_per_epoch = -(-len(ids) // cfg.micro_batch_size)
    total = (
        steps_per_epoch * cfg.epochs
        if not cfg.max_steps
        else min(cfg.max_steps, steps_per_epoch * cfg.epochs)
    )
    optim = OptimConfig(lr=cfg.lr, warmup_steps=max(total // 20, 1), min_lr_ratio=0.1, weight_decay=0.01)
    engine, _ = build_engine(
        HaplotypeLM(gpt),
        TrainConfig(steps=total, zero_stage=0, seed=cfg.seed),
        optim,
        micro_batch_size=cfg.micro_batch_size,
        dist_info=dist_info,
    )
    device = dist_info.device
    history = [{"epoch": 0, "val_loss": mean_loss(engine.module, val_ids, val_values, device)}]
    best, best_state, step = history[0]["val_loss"], copy.deepcopy(engine.module.state_dict()), 0
    log.info("haplotype fine-tune: %d windows of %d SNPs per epoch, %d steps", len(ids), plan.width, total)
    start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        engine.train()
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(ids))
        batches = range(0, len(order), cfg.micro_batch_size)
        running = []
        for lo in progress(batches, total=len(batches), desc=f"fine-tune epoch {epoch}"):
            b = order[lo : lo + cfg.micro_batch_size]
            loss = engine(torch.from_numpy(ids[b]).to(device), torch.from_numpy(values[b]).to(device))
            engine.backward(loss)
            engine.step()
            step += 1
            running.append(float(loss.detach()))
            if step % 20 == 0:
                tracker.log_metrics({"finetune/loss": float(np.mean(running[-20:]))}, step=step)
            if step % max(total // 20, 1) == 0:  # milestones for the log (the bar is quiet off a terminal)
                rate = step / (time.perf_counter() - start)
                log.info("step %d/%d: loss %.4f (%.2f steps/s)", step, total, np.mean(running[-20:]), rate)
            if step >= total:
                break
        val_loss = mean_loss(engine.module, val_ids, val_values, device)
        history.append({"epoch": epoch, "train_loss": float(np.mean(running)), "val_loss": val_loss})
        tracker.log_metrics({"val/loss": val_loss}, step=step)
        log.info("epoch %d: train loss %.4f, validation loss %.4f", epoch, np.mean(running), val_loss)
        if val_loss < best:
            best, best_state = val_loss, copy.deepcopy(engine.module.state_dict())
        if step >= total:
            break
    engine.module.load_state_dict(best_state)
    info = {
        "history": history,
        "best_val_loss": best,
        "steps": step,
        "windows": len(plan.starts),
        "context": gpt.cfg.max_seq_len,
        "device": device.type,
    }
    return engine.module.gpt.eval(), info


@torch.no_grad()
def generate_haplotypes(
    gpt: DNAGPT, n: int, n_snps: int, *, sampling: SamplingConfig, overlap: float = 0.5
) -> np.ndarray:
    """Sample ``n`` haplotypes of ``n_snps`` SNPs window by window (module docstring) -> (n, n_snps) uint8."""
    plan = plan_windows(n_snps, gpt.cfg.max_seq_len, overlap)
    device = gpt.wte.weight.device
    out = np.zeros((n, n_snps), np.uint8)
    gen = torch.Generator(device=device).manual_seed(sampling.seed)
    batches = range(0, n, sampling.batch_size)
    for lo in progress(batches, total=len(batches), desc="generate haplotypes", unit="batch"):
        rows = slice(lo, min(lo + sampling.batch_size, n))
        for k, s in enumerate(plan.starts):
            ids, values = window_tokens(out[rows], plan, k)  # the alleles known so far fill the prompt
            keep = PREFIX + plan.new_from[k] - s
            prompt = torch.from_numpy(ids[:, :keep]).to(device)
            slot = torch.zeros(prompt.shape, dtype=torch.bool, device=device)
            slot[:, 1] = True
            vals = torch.from_numpy(values)[:, None].expand(prompt.shape).to(device)
            step = SamplingConfig(
                **{**sampling.to_dict(), "max_new_tokens": s + plan.width - plan.new_from[k]}
            )
            res = generate(
                gpt,
                prompt,
                step,
                generator=gen,
                allowed_ids=ALLELE_IDS,
                num_values=vals,
                num_in_mask=slot,
                show_progress=False,
            )
            out[rows, plan.new_from[k] : s + plan.width] = (
                res.ids[:, keep:].cpu().numpy()
            )  # ids 0/1 = alleles
    return out
