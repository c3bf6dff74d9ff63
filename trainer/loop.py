"""The optimizer-step loop: micro-batches, the NaN/inf guard, metrics, periodic and signal checkpoints."""

from __future__ import annotations

import json
import logging
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from datapipe.common.errors import UserError
from datapipe.common.tracking import Tracker
from trainer.config import PretrainConfig

log = logging.getLogger(__name__)
# Dense bf16 tensor-core peaks (TFLOP/s) for MFU; devices not listed get no MFU rather than a guess.
BF16_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.1, "A10G": 70.0}


class TooManyBadSteps(UserError, RuntimeError):
    """Too many micro-batches in a row had a NaN/inf loss; the last good state was saved."""


def model_flops_per_token(n_params: int, n_layer: int, d_model: int, seq_len: int) -> float:
    """6N (forward + backward of the weights) + 12 * L * d * T for attention scores and values (PaLM's
    accounting; causal masking is not subtracted)."""
    return 6.0 * n_params + 12.0 * n_layer * d_model * seq_len


def device_peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in BF16_PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


@dataclass(kw_only=True)
class StepLoop:
    cfg: PretrainConfig
    metric_keys: tuple[str, ...]
    """Keys of the training module's output dict to average and log; 'loss' first."""
    engine: Any
    loader: Any
    tracker: Tracker
    device: torch.device
    jsonl: Path | None
    n_params: int
    stop: Any  # trainer.pretrain.StopRequested: .poll() != 0 once a stop was asked for
    checkpoint: Callable[[int], str]
    skipped_total: int = 0
    tokens_seen: int = 0
    """Tokens trained on by all ranks since step 0 (carried across resumes by the checkpoint state)."""
    _signal_agreed: bool = False
    _window: dict[str, Any] = field(default_factory=dict)

    def run(self, start_step: int) -> str:
        cfg = self.cfg.train
        self._reset_window()
        for step in range(start_step + 1, cfg.steps + 1):
            self._one_step(step)
            stop = self._stop_requested()
            save = stop or bool(cfg.ckpt_every and step % cfg.ckpt_every == 0) or step == cfg.steps
            if step % cfg.log_every == 0 or save:  # a checkpoint's tokens_seen includes every step before it
                self._log(step)
            if stop:
                log.warning(
                    "signal %d received: saving a checkpoint at step %d and stopping; resume with --resume",
                    self.stop.signum,
                    step,
                )
                self.checkpoint(step)
                return "signal"
            if save:
                self.checkpoint(step)
        return "completed"

    def _one_step(self, step: int) -> None:
        """One optimizer step = grad_accum_steps good micro-batches. A micro-batch whose loss is NaN/inf on
        any rank is skipped on every rank (no backward, no step) and replaced by the next one."""
        good, bad_in_a_row = 0, 0
        while good < self.cfg.train.grad_accum_steps:
            batch = {k: v.to(self.device, non_blocking=True) for k, v in next(self.loader).items()}
            out = self.engine(batch)
            if not self._finite_everywhere(out["loss"]):
                self.skipped_total += 1
                bad_in_a_row += 1
                log.warning(
                    "step %d: non-finite loss, micro-batch skipped (%d in a row, %d in total)",
                    step,
                    bad_in_a_row,
                    self.skipped_total,
                )
                if bad_in_a_row >= self.cfg.train.max_bad_steps:
                    tag = self.checkpoint(step - 1)
                    raise TooManyBadSteps(
                        f"{bad_in_a_row} micro-batches in a row had a NaN/inf loss at step {step}; saved the last "
                        f"good state as checkpoint {tag}. Lower optim.lr, check the data, or raise "
                        "train.max_bad_steps, then resume with --resume"
                    )
                continue
            bad_in_a_row = 0
            self.engine.backward(out["loss"])
            self.engine.step()
            good += 1
            w = self._window
            for k in self.metric_keys:
                w[k] += out[k].detach().float()
            w["tokens"] += int(batch["num_tokens"])
            w["samples"] += batch["input_ids" if "input_ids" in batch else "bases"].shape[0]
            w["micro"] += 1

    def _finite_everywhere(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every rank. The same all-reduce (one per micro-batch: a sync point,
        but every rank must agree to skip together) also carries the signal flag, so a SIGTERM that reached
        one rank stops all of them at the same step without a second collective."""
        flag = torch.tensor(
            [0.0 if torch.isfinite(loss.detach()).all() else 1.0, float(self.stop.poll())], device=self.device
        )
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        bad, signum = flag.tolist()
        if signum and not self.stop.signum:
            self.stop.signum = int(signum)
        self._signal_agreed = self._signal_agreed or bool(signum)
        return bad == 0.0

    def _stop_requested(self) -> bool:
        """True once a signal was seen by any rank in an all-reduce; every rank sees the same value."""
        return self._signal_agreed

    def _reset_window(self) -> None:
        self._window = {
            **dict.fromkeys(self.metric_keys, 0.0),
            "tokens": 0,
            "samples": 0,
            "micro": 0,
            "t0": time.perf_counter(),
        }

    def _log(self, step: int) -> None:
        w = self._window
        elapsed = time.perf_counter() - w["t0"]
        world = dist.get_world_size()
        micro = max(w["micro"], 1)
        vec = torch.tensor(
            [float(w[k]) / micro for k in self.metric_keys] + [w["tokens"], w["samples"]],
            dtype=torch.float64,
            device=self.device,
        )
        dist.all_reduce(vec)  # one collective per log window
        vec = vec.cpu()
        metrics = {
            f"train/{k}": float(v) / world
            for k, v in zip(self.metric_keys, vec[: len(self.metric_keys)], strict=True)
        }
        grad_norm = self.engine.get_global_grad_norm()
        tokens_per_s = float(vec[-2]) / elapsed
        self.tokens_seen += int(vec[-2])
        metrics.update(
            {
                "train/lr": self.engine.get_lr()[0],
                "train/grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                "train/tokens_per_s": tokens_per_s,
                "train/tokens_seen": float(self.tokens_seen),
                "train/samples_per_s": float(vec[-1]) / elapsed,
                "train/peak_mem_gb": _peak_mem_gb(),
                "train/skipped_steps": float(self.skipped_total),
                "train/skipped_shards": float(getattr(self.loader, "skipped_shards", 0)),
            }
        )
        peak = device_peak_flops(self.device)
        if peak:
            m = self.cfg.model
            flops = model_flops_per_token(self.n_params, m.n_layer, m.d_model, m.max_seq_len)
            metrics["train/mfu"] = tokens_per_s * flops / (peak * world)
        self.tracker.log_metrics(metrics, step=step)
        if self.jsonl is not None:
            with open(self.jsonl, "a") as f:
                f.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")
        parts = "  ".join(f"{k} {metrics[f'train/{k}']:.4f}" for k in self.metric_keys)
        log.info("step %d  %s  lr %.2e  %.0f tok/s", step, parts, metrics["train/lr"], tokens_per_s)
        self._reset_window()


def _peak_mem_gb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB
