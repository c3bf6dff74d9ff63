"""Attention op used by both models: causal (DNAGPT) and padded bidirectional (DNABERT).

``fused_attention`` is the public op. Today it dispatches to the torch reference on every
device; the Triton flash-attention kernel (issue 6) plugs in behind the same signature, chosen
on CUDA tensors and under ``TRITON_INTERPRET=1``, with the choice logged by ``dispatch``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kernels.dispatch import announce


def attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    key_padding_mask: torch.Tensor | None = None,
    sm_scale: float | None = None,
    upcast: bool = False,
) -> torch.Tensor:
    """Plain softmax attention. q, k, v: (B, H, T, hd); key_padding_mask: (B, T) bool, True = keep.

    Materialises the (B, H, T, T) score matrix: O(T^2) memory, a reference, not a fast path.
    Query rows whose keys are all padded return zeros (not NaN). ``upcast`` computes in fp32.
    """
    dtype = q.dtype
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale  # (B, H, T, T)
    t_q, t_k = q.shape[-2], k.shape[-2]
    keep = torch.ones(t_q, t_k, dtype=torch.bool, device=q.device)
    if causal:
        keep = torch.tril(keep, diagonal=t_k - t_q)
    keep = keep[None, None]
    if key_padding_mask is not None:
        keep = keep & key_padding_mask[:, None, None, :].to(torch.bool)
    scores = scores.masked_fill(~keep, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    probs = torch.nan_to_num(probs, nan=0.0)  # all-masked rows: softmax of all -inf is NaN
    return torch.matmul(probs, v).to(dtype)


def fused_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    key_padding_mask: torch.Tensor | None = None,
    sm_scale: float | None = None,
) -> torch.Tensor:
    """(B, H, T, hd) -> (B, H, T, hd). Routes to the best available implementation."""
    if key_padding_mask is None:
        # SDPA picks flash / memory-efficient / math itself; no T x T tensor on its fused backends.
        announce("attention", "torch SDPA", "no Triton attention kernel in this build")
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=sm_scale)
    announce(
        "attention",
        "torch reference (masked)",
        "padding mask given; no Triton attention kernel in this build",
    )
    return attention_ref(q, k, v, causal=causal, key_padding_mask=key_padding_mask, sm_scale=sm_scale)
