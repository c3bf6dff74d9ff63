"""Attention op used by both models: causal (DNAGPT) and padded bidirectional (DNABERT).

``fused_attention`` is the public op; ``attention_ref`` is the plain torch reference beside the
Triton flash-attention kernel in ``kernels.triton_attention``. Which one runs:

- CUDA tensors (fp16/bf16, head_dim 32/64/128, self-attention shapes): the Triton kernel.
- CPU tensors with ``TRITON_INTERPRET=1``: the same Triton kernel through Triton's CPU interpreter
  (the tests; ~400x slower than torch, for correctness only).
- otherwise torch: SDPA without a padding mask, the reference with one; also for shapes or dtypes
  the kernel does not take (e.g. head_dim 8 in tiny test models, fp32 on a GPU).

The choice is logged once per path through ``kernels.dispatch.announce``. The Triton module is
imported on first use only: importing ``kernels`` must work without a GPU (and without Triton), and
``@triton.jit`` fixes interpreter-or-GPU when a kernel is defined, i.e. when that module is imported.
"""

from __future__ import annotations

import math
from types import ModuleType

import torch
import torch.nn.functional as F

from kernels.dispatch import announce, triton_refusal

TRITON_HEAD_DIMS = (32, 64, 128)


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
    Query rows whose keys are all padded return zeros and get zero gradients (never NaN).
    ``upcast`` computes in fp32 and returns q's dtype.
    """
    dtype = q.dtype
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
    probs = attention_probs(q, k, causal=causal, key_padding_mask=key_padding_mask, sm_scale=sm_scale)
    return torch.matmul(probs, v).to(dtype)


def attention_probs(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    causal: bool,
    key_padding_mask: torch.Tensor | None = None,
    sm_scale: float | None = None,
) -> torch.Tensor:
    """(B, H, T, T) attention probabilities softmax(q k^T * scale) over the visible keys, in q's dtype:
    what interpretation reads (``fused_attention`` never forms this matrix). Masked keys get exactly 0;
    query rows with no visible key are all 0 (not NaN)."""
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale  # (B, H, T, T)
    keep = _keep_matrix(q, k, causal, key_padding_mask)  # (B or 1, 1, T, T)
    has_key = keep.any(dim=-1, keepdim=True)  # rows with at least one visible key
    # Rows with nothing to attend to get finite dummy scores (softmax stays NaN-free in the
    # backward too); their probabilities are zeroed below.
    scores = scores.masked_fill(~keep, float("-inf")).masked_fill(~has_key, 0.0)
    return torch.softmax(scores, dim=-1) * has_key


def attention_lse_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    causal: bool,
    key_padding_mask: torch.Tensor | None = None,
    sm_scale: float | None = None,
) -> torch.Tensor:
    """(B, H, T) fp32 log-sum-exp of each row's visible scaled scores; -inf for rows with none."""
    q, k = q.float(), k.float()
    scale = sm_scale if sm_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    scores = scores.masked_fill(~_keep_matrix(q, k, causal, key_padding_mask), float("-inf"))
    return torch.logsumexp(scores, dim=-1)


def _keep_matrix(q, k, causal, key_padding_mask) -> torch.Tensor:
    t_q, t_k = q.shape[-2], k.shape[-2]
    keep = torch.ones(t_q, t_k, dtype=torch.bool, device=q.device)
    if causal:
        keep = torch.tril(keep, diagonal=t_k - t_q)
    keep = keep[None, None]
    if key_padding_mask is not None:
        keep = keep & key_padding_mask[:, None, None, :].to(device=q.device, dtype=torch.bool)
    return keep


def triton_unsupported(q, k, v, key_padding_mask, *, interpreted: bool) -> str | None:
    """Why the Triton kernel cannot take these tensors (None if it can); the dispatcher's rule."""
    if q.dim() != 4:
        return f"expects (batch, heads, seq, head_dim) tensors, got q of shape {tuple(q.shape)}"
    if q.shape != k.shape or q.shape != v.shape:
        return f"expects q, k, v of one shape (self-attention), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
    if not (q.dtype == k.dtype == v.dtype):
        return f"expects one dtype for q, k, v, got {q.dtype}, {k.dtype}, {v.dtype}"
    if q.device != k.device or q.device != v.device:
        return "expects q, k, v on one device"
    hd = q.shape[-1]
    if hd not in TRITON_HEAD_DIMS:
        return f"head_dim {hd} is not supported (32, 64 or 128); change d_model / n_head"
    allowed = (torch.float16, torch.bfloat16) + ((torch.float32,) if interpreted else ())
    if q.dtype not in allowed:
        return (
            f"dtype {q.dtype} is not supported on this path ({', '.join(map(str, allowed))}); "
            "on a GPU run the model in bf16 or fp16 (fp32 operands would be rounded to tf32)"
        )
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (q.shape[0], q.shape[2]):
        return f"key_padding_mask must be (batch, seq) = {(q.shape[0], q.shape[2])}, got {tuple(key_padding_mask.shape)}"
    return None


def _triton_module() -> ModuleType | None:
    """kernels.triton_attention, imported on first use; None when Triton is not installed."""
    try:
        from kernels import triton_attention
    except ImportError:
        return None
    return triton_attention


def fused_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    key_padding_mask: torch.Tensor | None = None,
    sm_scale: float | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """(B, H, T, hd) -> (B, H, T, hd). Routes to the best available implementation (module docstring).

    ``impl``: "auto" chooses as above; "torch" always takes the torch path; "triton" requires the kernel and
    raises with the reason when it cannot run (a model config field picks this)."""
    if impl not in ("auto", "torch", "triton"):
        raise ValueError(f"attention impl must be 'auto', 'torch' or 'triton', got {impl!r}")
    why = (
        _triton_refusal(q, k, v, key_padding_mask) if impl != "torch" else "attention impl 'torch' requested"
    )
    if impl == "triton" and why is not None:
        raise RuntimeError(f"attention impl 'triton' requested but the kernel cannot run: {why}")
    if why is None:
        ops = _triton_module()
        where = "interpreter" if ops.INTERPRETED else "GPU"
        announce("attention", f"Triton flash-attention ({where})", f"{q.device.type} tensors, {q.dtype}")
        return ops.flash_attention(
            q, k, v, causal=causal, key_padding_mask=key_padding_mask, sm_scale=sm_scale
        )
    if key_padding_mask is None:
        # SDPA picks flash / memory-efficient / math itself; no T x T tensor on its fused backends.
        announce("attention", "torch SDPA", why)
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=sm_scale)
    announce("attention", "torch reference (masked)", why)
    return attention_ref(q, k, v, causal=causal, key_padding_mask=key_padding_mask, sm_scale=sm_scale)


def _triton_refusal(q, k, v, key_padding_mask) -> str | None:
    """None if the Triton kernel should run on these tensors, else why not (for the log)."""
    refusal = triton_refusal(q.device.type, _triton_module)
    if refusal is not None:
        return refusal
    reason = triton_unsupported(q, k, v, key_padding_mask, interpreted=_triton_module().INTERPRETED)
    return None if reason is None else f"Triton kernel: {reason}"
