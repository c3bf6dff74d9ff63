"""Training steps of a recipe on synthetic shards, for `./dev gpu` (bench/gpu.py): our trainer against a plain
``torch.compile`` + SDPA loop of the same model.

- ours: the trainer's own build steps and loop (``trainer.pretrain.build_model_and_engine``, ``build_loader``,
  ``trainer.loop.StepLoop``): a DeepSpeed engine (ZeRO-1, bf16 on a GPU), ``model.embedding=fused`` (the
  loader ships bases, ``kernels.kmer_embedding`` embeds them) and ``model.attention=triton``; tracking off.
- plain: the same model (same seed, same recipe) with token ids and PyTorch SDPA attention (a padding mask,
  DNABERT's, goes to SDPA as a boolean ``attn_mask``), ``torch.compile``d, fused AdamW with the recipe's
  schedule and clipping, bf16 autocast; batches from the same shards through the same loader.

Ours is the trainer as it runs, including its per-micro-batch NaN/inf guard (an all-reduce read on the host:
one device sync per step); the baseline reads its loss once per window.

Each path runs in its own process (``bench/gpu.py --section train``): the baseline replaces the attention op
for the whole process, and neither inherits the other's memory or compiled state. Tokens/s is taken over
the steps after the first window (that one pays for compilation and autotuning); MFU uses the trainer's
accounting (``trainer.loop.model_flops_per_token``: 6N + 12 * L * d * T per token) over the bf16 dense peak.
The shards are random ACGT windows of the recipe's full length, written with ``datapipe.shards.writer``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)
# Micro-batch per recipe on the GPU: 32 x 512 tokens fills an H200 better than the recipes' own 8 (DNAGPT)
# or 25 (DNABERT, the published batch) while staying far inside its memory; both paths use the same.
GPU_MICRO_BATCH = 32
# Dry run (CPU): one layer, head_dim 64 (a size the Triton attention kernel takes), 64 positions.
TINY = ["model.n_layer=1", "model.d_model=64", "model.n_head=1", "model.max_seq_len=64"]
TINY_BERT = ["model.d_ff=128", "model.dropout=0.0"]


def recipe_config(recipe: str, *, path: str, dry_run: bool, micro_batch: int | None = None):
    """The recipe with the overrides of one path ("ours" or "plain"); the same model either way."""
    from trainer.recipes import get_recipe

    cfg = get_recipe(recipe)
    sets = [
        f"loader.micro_batch_size={micro_batch or (2 if dry_run else GPU_MICRO_BATCH)}",
        "tracking.enabled=false",
        "train.precision=auto",  # bf16 on a GPU, fp32 on CPU
        f"model.embedding={'fused' if path == 'ours' else 'ids'}",  # plain and hf: token ids
        f"model.attention={'triton' if path == 'ours' else 'torch'}",
    ]
    if dry_run:
        sets += TINY + (TINY_BERT if cfg.family == "dnabert" else []) + ["loader.num_workers=1"]
    return cfg.with_overrides(sets)


def write_synthetic_shards(cfg, out: Path, *, samples: int, per_shard: int = 64, seed: int = 0) -> Path:
    """``samples`` full-length windows of random ACGT for ``cfg``'s tokenizer, as shards + a manifest that
    ``ShardLoader`` and ``trainer.pretrain.check_data`` accept. -> the data folder."""
    from datapipe.shards.format import Sample
    from datapipe.shards.manifest import FORMAT_VERSION
    from datapipe.shards.writer import write_shard
    from datapipe.tokenizers import get_tokenizer
    from trainer.families import FAMILIES

    tok = get_tokenizer(cfg.tokenizer)
    window = cfg.model.max_seq_len - FAMILIES[cfg.family].template_tokens
    # DNAGPT: non-overlapping k-mers, k bases each; DNABERT: overlapping, k - 1 more bases than tokens.
    n_bases = window * tok.k if cfg.family == "dnagpt" else window + tok.k - 1
    rng = np.random.default_rng(seed)
    shards = out / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    entries = []
    for s0 in range(0, samples, per_shard):
        unit = f"f0000-u{s0 // per_shard:06d}"
        batch = []
        for i in range(min(per_shard, samples - s0)):
            bases = rng.choice(np.frombuffer(b"ACGT", np.uint8), n_bases)
            ids = tok.encode(bases).astype(np.uint16)
            assert len(ids) == window, (len(ids), window)
            gc = float(np.isin(bases, np.frombuffer(b"GC", np.uint8)).mean())
            meta = {"species": "human", "token": "R", "assembly": "synthetic", "record": "random"}
            meta |= {"start": i * n_bases, "end": (i + 1) * n_bases, "strand": "+", "gc": gc, "n_frac": 0.0}
            batch.append(Sample(key=f"{unit}-{i:06d}", ids=ids, meta=meta))
        entries.append(write_shard(shards / f"{unit}-000.tar", batch))
    manifest = {
        "format_version": FORMAT_VERSION,
        "tokenizer": cfg.tokenizer,
        "config": {"window_tokens": window, "tokenizer": cfg.tokenizer},
        "shards": entries,
        "totals": {"samples": samples, "tokens": sum(e["tokens"] for e in entries), "shards": len(entries)},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


class _Deadline:
    """The loop's stop flag (``StopRequested``'s interface): raised once the part's time is up and at least
    ``min_windows`` windows are logged (the warm-up and one timed), so the loop ends at a step boundary
    with a figure instead of being killed mid-way (the run's hard limit still applies)."""

    def __init__(self, deadline: float, jsonl: Path, min_windows: int = 2) -> None:
        self.deadline, self.jsonl, self.min_windows = deadline, jsonl, min_windows
        self.signum = 0

    def poll(self) -> int:
        """StepLoop asks this after every step (as it asks trainer.pretrain.StopRequested): 15 once due."""
        if not self.signum and time.time() > self.deadline and self.jsonl.exists():
            if len(self.jsonl.read_text().splitlines()) >= self.min_windows:
                self.signum = 15
        return self.signum


def run_ours(cfg, data_dir: Path, work: Path, *, window_steps: int, windows: int, deadline: float) -> dict:
    """Our trainer's build steps and StepLoop: windows of ``window_steps`` steps, the first one warm-up."""
    from cluster.launch import init_process_group
    from datapipe.common.tracking import NullTracker
    from trainer.families import FAMILIES, count_params
    from trainer.loop import StepLoop
    from trainer.pretrain import build_loader, build_model_and_engine, check_data

    cfg = cfg.with_overrides(
        [f"train.steps={window_steps * (windows + 1)}", f"train.log_every={window_steps}"]
    )
    check_data(cfg, data_dir)
    t0 = time.perf_counter()
    dist_info = init_process_group()
    engine, _ = build_model_and_engine(cfg, dist_info)
    loader = build_loader(cfg, data_dir, dist_info)
    jsonl = work / "ours-metrics.jsonl"
    jsonl.unlink(missing_ok=True)  # the loop appends
    loop = StepLoop(
        cfg=cfg,
        metric_keys=FAMILIES[cfg.family].metrics,
        engine=engine,
        loader=loader,
        tracker=NullTracker(),
        device=dist_info.device,
        jsonl=jsonl,
        n_params=count_params(cfg),
        stop=_Deadline(deadline, jsonl),
        checkpoint=lambda step: f"(no checkpoint at step {step}: benchmark)",
    )
    setup_s = time.perf_counter() - t0
    outcome = loop.run(0)
    # A stop mid-window logs that partial window too (the loop logs before any checkpoint): only whole
    # windows count, so that every timed window holds the same number of steps.
    logged = [json.loads(line) for line in jsonl.read_text().splitlines()]
    logged = [r for r in logged if r["step"] % window_steps == 0]
    from kernels.dispatch import chosen_paths

    return _summary(
        cfg,
        [(r["train/tokens_per_s"], r["train/loss"]) for r in logged],
        setup_s=setup_s,
        window_steps=window_steps,
        stopped=outcome != "completed",
        paths=chosen_paths(),
    )


def sdpa_attention(q, k, v, *, causal, key_padding_mask=None, sm_scale=None, impl="auto"):
    """The baseline's attention: PyTorch SDPA, with a padding mask as a boolean ``attn_mask`` (B, 1, 1, T)."""
    if causal and key_padding_mask is not None:
        raise ValueError("the baseline's attention takes a causal mask or a padding mask, not both")
    mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :].to(torch.bool)
    return torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal and mask is None, scale=sm_scale
    )


def run_plain(
    cfg,
    data_dir: Path,
    *,
    window_steps: int,
    windows: int,
    deadline: float,
    compile_backend: str | None,
    hf: bool = False,
) -> dict:
    """The same model with token ids and SDPA, torch.compile'd (``compile_backend``; None: eager), in a plain
    loop over the same shards. ``hf``: DNABERT as transformers' BertForMaskedLM with the same weights."""
    from bench_pretrain import hf_masked_lm, plain_step_fn

    import kernels
    from datapipe.loader import ShardLoader
    from datapipe.tokenizers import get_tokenizer
    from trainer.families import FAMILIES

    kernels.fused_attention = sdpa_attention  # the models call kernels.fused_attention: SDPA for this process
    log.info("baseline: attention through torch SDPA (padding mask as attn_mask), %s", "transformers"
             if hf else f"torch.compile backend {compile_backend}")  # fmt: skip
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    family = FAMILIES[cfg.family]
    torch.manual_seed(cfg.train.seed)  # the engine path's seed: the same initial weights
    t0 = time.perf_counter()
    model = family.build(cfg)
    model = hf_masked_lm(model, device) if hf else model.to(device).train()
    if compile_backend is not None:
        model = torch.compile(model, backend=compile_backend)
    step = plain_step_fn(model, cfg, device)
    loader = ShardLoader(data_dir, cfg.loader, collate=family.collate(cfg, get_tokenizer(cfg.tokenizer)))
    setup_s = time.perf_counter() - t0
    logged = []
    for w in range(windows + 1):
        if w > 1 and time.time() > deadline:  # the warm-up window and one timed window in any case
            break
        tokens, loss_sum, t_start = 0, 0.0, time.perf_counter()
        for _ in range(window_steps):
            host = next(loader)
            tokens += int(host["num_tokens"])  # read on the host: no device sync inside the window
            loss_sum = loss_sum + step({k: v.to(device, non_blocking=True) for k, v in host.items()}).detach()
        mean_loss = float(loss_sum) / window_steps  # one sync per window; the window's mean, as ours logs
        if device.type == "cuda":
            torch.cuda.synchronize()
        logged.append((tokens / (time.perf_counter() - t_start), mean_loss))
    return _summary(
        cfg, logged, setup_s=setup_s, window_steps=window_steps, stopped=len(logged) <= windows, paths={}
    )


def _summary(cfg, logged: list[tuple[float, float]], *, setup_s, window_steps, stopped, paths) -> dict:
    """Tokens/s over the windows after the first (total tokens / total time: windows hold equal tokens, so
    the harmonic mean of their rates), MFU, and the loss of the first and last windows."""
    from trainer.families import count_params
    from trainer.loop import device_peak_flops, model_flops_per_token

    measured = [r for r, _ in logged[1:]]
    rate = len(measured) / sum(1 / r for r in measured) if measured else None
    m = cfg.model
    flops = model_flops_per_token(count_params(cfg), m.n_layer, m.d_model, m.max_seq_len)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peak = device_peak_flops(device)
    losses = [loss for _, loss in logged]
    return {
        "tokens_per_s": rate,
        "mfu": rate * flops / peak if rate and peak else None,
        "measured_steps": len(measured) * window_steps,
        "setup_s": setup_s,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "finite": all(np.isfinite(x) for x in losses),
        "stopped_early": stopped,
        "kernel_paths": paths,
    }


def run_path(args: Any) -> dict:
    """Entry point of one path's process (``bench/gpu.py --section train``)."""
    cfg = recipe_config(args.recipe, path=args.path, dry_run=args.dry_run, micro_batch=args.micro_batch)
    work = Path(args.work)
    data_dir = work / "data"
    window_steps, windows = (1, 2) if args.dry_run else (20, 4)
    if args.path == "ours":
        return run_ours(
            cfg, data_dir, work, window_steps=window_steps, windows=windows, deadline=args.deadline
        )
    # The dry run compiles with aot_eager: it captures the graphs (dynamo + AOTAutograd) as the GPU's inductor
    # does, without inductor's CPU C++ code generation (which the GPU never uses; minutes when cold on 2 cores).
    backend = None if args.path == "hf" else "aot_eager" if args.dry_run else "inductor"
    return run_plain(
        cfg,
        data_dir,
        window_steps=window_steps,
        windows=windows,
        deadline=args.deadline,
        compile_backend=backend,
        hf=args.path == "hf",
    )
