"""Sampling from DNAGPT: temperature, top-k and nucleus (top-p) filtering, a seed, batches, stop tokens, and an
optional restriction of the choices to a few token ids (e.g. the allele tokens ``<0>``/``<1>`` of a haplotype).

Decoding is incremental through the model's KV cache (``trainer.models.gpt.KVCache``): each new token costs
one position. ``use_cache=False`` recomputes the whole sequence at every step (the reference the cache is
tested and benchmarked against; O(T^2) work over a generation instead of O(T)).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from datapipe.common.config import Config, check
from datapipe.common.logs import progress
from trainer.models.gpt import DNAGPT


@dataclass(kw_only=True)
class SamplingConfig(Config):
    max_new_tokens: int = 128
    """Tokens to sample after the prompt, at most (a row ends earlier at a stop token)."""
    temperature: float = 1.0
    """Logits are divided by this before the softmax; 0 = greedy (the most likely token every step)."""
    top_k: int = 0
    """Sample among the k most likely tokens only (0 = all)."""
    top_p: float = 1.0
    """Nucleus sampling: among the fewest tokens whose probabilities add up to at least top_p (1 = all)."""
    seed: int = 0
    """Seed of the sampler's own generator: the same seed, prompt and batch size give the same samples."""
    batch_size: int = 64
    """Sequences decoded together (memory: the KV cache is 2 x n_layer x batch x context x d_model floats)."""
    use_cache: bool = True
    """Incremental decoding through the KV cache; false recomputes every position at every step."""

    def __post_init__(self) -> None:
        check(self.max_new_tokens >= 1, "max_new_tokens", "must be >= 1")
        check(self.temperature >= 0, "temperature", "must be >= 0 (0 = greedy)")
        check(self.top_k >= 0, "top_k", "must be >= 0 (0 = no top-k filter)")
        check(0 < self.top_p <= 1, "top_p", "must be in (0, 1] (1 = no nucleus filter)")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")


def filter_logits(logits: torch.Tensor, *, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """(B, V) logits with everything outside the top-k / the top-p nucleus set to -inf (the most likely
    token always stays)."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens before it already reach top_p (so the first one is always kept)
        drop_sorted = (torch.cumsum(probs, dim=-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator) -> torch.Tensor:
    """(B, V) logits -> (B,) sampled column indices."""
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@dataclass(kw_only=True)
class Generated:
    """One batch of samples: ``ids`` (B, T_prompt + n) with the prompt first, ``lengths`` (B,) the tokens of
    each row up to and including its stop token (or all of them), ``stopped`` (B,) whether a row ended at a
    stop token."""

    ids: torch.Tensor
    lengths: torch.Tensor
    stopped: torch.Tensor


class _Step:
    """The next-token logits of a batch, incrementally (KV cache) or by recomputing everything."""

    def __init__(self, model: DNAGPT, prompt, num_values, num_in_mask, *, use_cache: bool, total: int):
        self.model, self.use_cache = model, use_cache
        self.num_values, self.num_in_mask = num_values, num_in_mask
        self.cache = model.new_cache(prompt.shape[0], max_len=total) if use_cache else None

    def __call__(self, ids: torch.Tensor, new: int) -> torch.Tensor:
        """ids (B, T) so far, of which the last ``new`` are not in the cache yet -> (B, D) last hidden state."""
        b, t = ids.shape
        values = mask = None
        if self.num_in_mask is not None:  # number slots live in the prompt only; later positions have none
            p = self.num_in_mask.shape[1]
            values = F.pad(self.num_values, (0, t - p))
            mask = F.pad(self.num_in_mask, (0, t - p))
        if self.use_cache:
            sl = slice(t - new, t)
            hidden = self.model(
                ids[:, sl],
                None if values is None else values[:, sl],
                None if mask is None else mask[:, sl],
                cache=self.cache,
            )
        else:
            hidden = self.model(ids, values, mask)
        return hidden[:, -1]


@torch.no_grad()
def generate(
    model: DNAGPT,
    prompt: torch.Tensor,
    cfg: SamplingConfig,
    *,
    generator: torch.Generator | None = None,
    allowed_ids: Sequence[int] | None = None,
    stop_ids: Sequence[int] = (),
    num_values: torch.Tensor | None = None,
    num_in_mask: torch.Tensor | None = None,
    pad_id: int = 20,
    show_progress: bool = True,
) -> Generated:
    """Sample up to ``cfg.max_new_tokens`` tokens after ``prompt`` (B, T) long, for every row at once.

    ``allowed_ids``: the only tokens that may be drawn (the softmax runs over these; stop ids are added).
    Projecting onto just these rows of the LM head costs |allowed| x D per row instead of V x D.
    ``stop_ids``: a row that draws one ends there (its later positions hold padding). ``num_values`` /
    ``num_in_mask`` (B, T): numbers at the prompt's ``<M>`` slots. ``pad_id``: what fills a row after its stop
    (default DNAGPT's ``<P>``). ``generator``: the random stream (default:
    a new one seeded with ``cfg.seed``); pass one to continue a stream across calls.
    """
    model.eval()
    device = model.wte.weight.device
    b, t0 = prompt.shape
    total = t0 + cfg.max_new_tokens
    if total > model.cfg.max_seq_len:
        raise ValueError(
            f"prompt of {t0} tokens + {cfg.max_new_tokens} new tokens exceeds the model's context "
            f"of {model.cfg.max_seq_len} tokens"
        )
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
    choices = None
    if allowed_ids is not None:
        choices = torch.tensor(sorted(set(allowed_ids) | set(stop_ids)), device=device)
    stops = torch.tensor(sorted(set(stop_ids)), device=device, dtype=torch.long)
    pad = torch.tensor(pad_id, device=device)
    ids = torch.empty(b, total, dtype=torch.long, device=device)
    ids[:, :t0] = prompt.to(device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    lengths = torch.full((b,), total, dtype=torch.long, device=device)
    step = _Step(model, prompt, num_values, num_in_mask, use_cache=cfg.use_cache, total=total)
    steps = range(cfg.max_new_tokens)
    if show_progress:
        steps = progress(steps, total=cfg.max_new_tokens, desc="generate", unit="tok")
    for i in steps:
        t = t0 + i
        hidden = step(ids[:, :t], t0 if i == 0 else 1)  # (B, D)
        if choices is None:
            nxt = sample_next(model.lm_logits(hidden), cfg, generator)
        else:
            nxt = choices[sample_next(model.lm_logits(hidden, choices), cfg, generator)]
        nxt = torch.where(done, pad, nxt)
        ids[:, t] = nxt
        if len(stops):
            hit = torch.isin(nxt, stops) & ~done
            lengths = torch.where(hit, t + 1, lengths)
            done |= hit
            if bool(done.all()):  # a CPU-GPU sync per step; only when stop tokens are in play
                ids = ids[:, : t + 1]
                break
    return Generated(ids=ids, lengths=lengths, stopped=done)
