"""Flash attention (FA2) forward and backward in Triton, behind ``kernels.fused_attention``.

q, k, v: (B, H, T, hd) with hd in {32, 64, 128}, any T; ``keep``: (B, T) key mask, True = attend.
Forward: one program per (query block, batch*head) streams key/value blocks through an online
softmax and writes O and the per-row log-sum-exp of the scaled scores (LSE, kept in log2 units).
Backward, as in FA2 and the Triton tutorial: a preprocess kernel computes delta = rowsum(dO * O);
a dK/dV kernel holds one key block and loops over query blocks; a dQ kernel holds one query block
and loops over key blocks. P is recomputed from Q, K and the saved LSE, so no T x T tensor exists
anywhere, forward or backward.

Masking is split so that the hot loop carries none: for causal attention the key blocks left of
the diagonal run without masks and only the diagonal blocks carry the causal/boundary mask; for
bidirectional attention only the last, partial key block carries the boundary mask. The padding
mask (``HAS_MASK``) is a per-key vector load and one select per score, applied in every block
when present. Rows whose visible keys are all padded give O = 0 and LSE = -inf, and zero grads.

Device code (the @triton.jit kernels) is in ``kernels.triton_attention_kernels``; this module holds
the GPU tuning, the launches and the autograd Function. Both are imported lazily by
``kernels.attention``: @triton.jit fixes interpreted-or-compiled when the kernels are defined.
"""

from __future__ import annotations

import math
import os

import torch
import triton

from kernels.triton_attention_kernels import (
    INTERPRETED,
    attn_bwd_dkdv,
    attn_bwd_dq,
    attn_bwd_preprocess,
    attn_fwd,
)

HEAD_DIMS = (32, 64, 128)

# Fixed blocks under the interpreter, which runs each program as numpy calls: its cost grows with the
# number of block iterations, so blocks are as large as still leaves the tests' 17/129/300-token
# sequences several full and partial blocks. Unequal M/N blocks take the same diagonal-split code
# paths as the GPU configs (BLOCK_M != BLOCK_N).
INTERPRETER_BLOCKS = {"fwd": (64, 32), "dkdv": (32, 64), "dq": (64, 32), "pre": 64}


# ----------------------------------------------------------------------------------------- GPU tuning
#
# Two resources bound the configs on H100 (checked offline by compiling every config for sm_90 with
# `bench/bench_attention.py --compile-report`, which needs no GPU):
# - registers: each program keeps its fp32 tiles (accumulators, scores) in registers, at most 255 per
#   thread. Beyond ~160 fp32 values per thread ptxas spills to local memory, which costs far more than a
#   smaller tile: e.g. the forward at hd 128 with BLOCK_M 128 spills on 4 warps and not on 8, and
#   dK/dV with BLOCK_N 128 at hd 128 needs 8 warps. Configs over that estimate are never compiled.
# - shared memory (227 KB per block): the resident tiles plus num_stages copies of the streamed ones
#   (the software pipeline's cp.async buffers), 2 bytes per element.

_SMEM_BYTES = 227 * 1024
_MAX_FP32_PER_THREAD = 160


def _footprint(kind: str, bm: int, bn: int, hd: int) -> tuple[int, int, int]:
    """(fp32 values live per program, resident tile elements, streamed tile elements per stage)."""
    if kind == "fwd":  # acc (BM, hd) + scores (BM, BN); Q resident; K, V streamed
        return bm * hd + bm * bn, bm * hd, 2 * bn * hd
    if kind == "dkdv":  # dK, dV (BN, hd) + P^T, dS^T (BN, BM); K, V resident; Q, dO streamed
        return 2 * bn * hd + 2 * bn * bm, 2 * bn * hd, 2 * bm * hd
    return bm * hd + 2 * bm * bn, 2 * bm * hd, 2 * bn * hd  # dq: dQ + P, dS; Q, dO resident; K, V streamed


def config_fits(kind: str, cfg: triton.Config, head_dim: int) -> bool:
    bm, bn = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]
    live, resident, streamed = _footprint(kind, bm, bn, head_dim)
    regs_ok = live / (32 * cfg.num_warps) <= _MAX_FP32_PER_THREAD
    return regs_ok and (resident + cfg.num_stages * streamed) * 2 <= _SMEM_BYTES


def _prune(kind: str):
    def prune(configs, named_args, **kwargs):
        hd = kwargs.get("HEAD_DIM", named_args.get("HEAD_DIM"))
        return [c for c in configs if config_fits(kind, c, hd)] or configs[:1]

    return prune


def _configs(space):
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s) for bm, bn, w, s in space
    ]


# Hopper search spaces, (BLOCK_M, BLOCK_N, num_warps, num_stages): 6-9 configs per kernel survive the
# prune, so tuning one (head_dim, causal, mask, dtype) variant costs about a minute of compiles; the
# results are cached on disk (cache_results). dK/dV needs BLOCK_N % BLOCK_M == 0 and dQ
# BLOCK_M % BLOCK_N == 0 (see the kernels).
SEARCH_SPACES = {
    "fwd": [
        (64, 64, 4, 3), (64, 64, 4, 4), (64, 128, 8, 2), (128, 32, 8, 3), (128, 64, 4, 3),
        (128, 64, 8, 3), (128, 64, 8, 4), (128, 128, 8, 2), (128, 128, 8, 3),
    ],
    "dkdv": [
        (16, 128, 4, 3), (16, 128, 8, 3), (32, 64, 4, 3), (32, 64, 8, 3), (32, 128, 8, 2),
        (32, 128, 8, 3), (64, 64, 8, 2), (64, 128, 8, 2),
    ],
    "dq": [(64, 32, 4, 3), (64, 64, 4, 3), (128, 32, 4, 3), (128, 32, 8, 3), (128, 64, 8, 2), (128, 64, 8, 3)],
}  # fmt: skip


def default_config(kind: str, head_dim: int) -> triton.Config:
    """Blocks used when autotuning is off (DNAFM_ATTENTION_AUTOTUNE=0, e.g. in GPU tests): spill-free
    at every supported head_dim on sm_90 (--compile-report), close to the tutorial's picks."""
    bm, bn, w, s = {
        "fwd": (128, 64, 8 if head_dim == 128 else 4, 3),
        "dkdv": (32, 128, 8, 3),
        "dq": (128, 32, 8 if head_dim == 128 else 4, 3),
    }[kind]
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)


_TUNE_KEY = ["seq_len", "HEAD_DIM", "CAUSAL", "HAS_MASK"]  # the tensors' dtypes are added by autotune
KERNELS = {"fwd": attn_fwd, "dkdv": attn_bwd_dkdv, "dq": attn_bwd_dq}

if not INTERPRETED:
    _TUNED = {
        kind: triton.autotune(
            _configs(SEARCH_SPACES[kind]),
            key=_TUNE_KEY,
            prune_configs_by={"early_config_prune": _prune(kind)},
            cache_results=True,
        )(kernel)
        for kind, kernel in KERNELS.items()
    }


def autotune_enabled() -> bool:
    """GPU block sizes are autotuned per (seq_len, head_dim, causal, mask, dtype) unless
    DNAFM_ATTENTION_AUTOTUNE=0 (read per call): tuning compiles every config once per variant."""
    return os.environ.get("DNAFM_ATTENTION_AUTOTUNE", "1") != "0"


FORCED_CONFIGS: dict[str, triton.Config] = {}
"""{kernel kind: config} that GPU launches use instead of tuning ("fwd", "dkdv", "dq"); for
`bench/bench_attention.py --check`, which runs every config of the search spaces once."""


def _launch(kernel, name: str, rows_per_program: str, bh: int, *args, **meta) -> None:
    """Fixed small blocks under the interpreter; autotuned (or default, or forced) blocks on a GPU.

    rows_per_program: "M" when a program owns a block of queries (fwd, dq), "N" for keys (dk/dv).
    """
    if INTERPRETED:
        bm, bn = INTERPRETER_BLOCKS[name]
        grid = (triton.cdiv(meta["seq_len"], bm if rows_per_program == "M" else bn), bh)
        kernel[grid](*args, **meta, BLOCK_M=bm, BLOCK_N=bn)
        return

    def grid(cfg):
        return (triton.cdiv(meta["seq_len"], cfg["BLOCK_" + rows_per_program]), bh)

    if name not in FORCED_CONFIGS and autotune_enabled():
        _TUNED[name][grid](*args, **meta)
        return
    cfg = FORCED_CONFIGS.get(name) or default_config(name, meta["HEAD_DIM"])
    kernel[grid(cfg.kwargs)](*args, **meta, **cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


# ----------------------------------------------------------------------------------------- host side


def _strides(x: torch.Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    # The kernels address the head dimension with stride 1 (vector loads); any other layout of
    # (B, H, T) is fine, e.g. the models' (B, T, H, hd).transpose(1, 2) views.
    return x if x.stride(-1) == 1 else x.contiguous()


def check_inputs(q, k, v, key_padding_mask) -> None:
    """Raise ValueError naming what to change when the kernel cannot take these tensors."""
    from kernels.attention import triton_unsupported  # the same rules the dispatcher uses

    reason = triton_unsupported(q, k, v, key_padding_mask, interpreted=INTERPRETED)
    if reason is not None:
        raise ValueError(f"Triton attention: {reason}")


def attention_forward(q, k, v, keep, causal: bool, sm_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """O (B, H, T, hd) in q's dtype and LSE2 (B, H, T) fp32: log2 of each row's sum of exp2(scores * log2 e),
    i.e. the natural log-sum-exp of the scaled scores times log2(e); -inf for rows with no visible key."""
    b, h, t, hd = q.shape
    o = torch.empty_like(q)
    lse2 = torch.empty((b, h, t), device=q.device, dtype=torch.float32)
    _launch(
        attn_fwd, "fwd", "M", b * h,
        q, k, v, keep if keep is not None else q, o, lse2, sm_scale,
        *_strides(q), *_strides(k), *_strides(v), *_strides(o),
        keep.stride(0) if keep is not None else 0, h,
        seq_len=t, HEAD_DIM=hd, CAUSAL=causal, HAS_MASK=keep is not None, UPCAST=_upcast(q),
    )  # fmt: skip
    return o, lse2


def attention_backward(do, q, k, v, o, lse2, keep, causal: bool, sm_scale: float):
    """dQ, dK, dV in the inputs' dtypes."""
    b, h, t, hd = q.shape
    do = _last_dim_contiguous(do)
    delta = torch.empty_like(lse2)
    pre = INTERPRETER_BLOCKS["pre"] if INTERPRETED else 128
    attn_bwd_preprocess[(triton.cdiv(t, pre), b * h)](
        o, do, delta, *_strides(o), *_strides(do), h, t, HEAD_DIM=hd, BLOCK_M=pre
    )
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    keep_arg = keep if keep is not None else q
    keep_stride = keep.stride(0) if keep is not None else 0
    meta = dict(seq_len=t, HEAD_DIM=hd, CAUSAL=causal, HAS_MASK=keep is not None, UPCAST=_upcast(q))
    _launch(
        attn_bwd_dkdv, "dkdv", "N", b * h,
        q, k, v, keep_arg, do, lse2, delta, dk, dv, sm_scale,
        *_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dk), *_strides(dv),
        keep_stride, h, **meta,
    )  # fmt: skip
    _launch(
        attn_bwd_dq, "dq", "M", b * h,
        q, k, v, keep_arg, do, lse2, delta, dq, sm_scale,
        *_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dq),
        keep_stride, h, **meta,
    )  # fmt: skip
    return dq, dk, dv


def _upcast(q: torch.Tensor) -> bool:
    return INTERPRETED and q.dtype == torch.bfloat16


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, keep, causal, sm_scale):
        o, lse2 = attention_forward(q, k, v, keep, causal, sm_scale)
        ctx.save_for_backward(q, k, v, o, lse2, keep)
        ctx.causal, ctx.sm_scale = causal, sm_scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse2, keep = ctx.saved_tensors
        dq, dk, dv = attention_backward(do, q, k, v, o, lse2, keep, ctx.causal, ctx.sm_scale)
        return dq, dk, dv, None, None, None


def _prepare(q, k, v, key_padding_mask, sm_scale):
    check_inputs(q, k, v, key_padding_mask)
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    keep = None
    if key_padding_mask is not None:  # (B, T) bool -> uint8, one byte per key
        keep = key_padding_mask.to(device=q.device, dtype=torch.uint8).contiguous()
    scale = float(sm_scale) if sm_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    return q, k, v, keep, scale


def flash_attention(q, k, v, *, causal: bool, key_padding_mask=None, sm_scale=None) -> torch.Tensor:
    """Differentiable Triton attention. (B, H, T, hd) -> (B, H, T, hd); raises ValueError if unsupported."""
    q, k, v, keep, scale = _prepare(q, k, v, key_padding_mask, sm_scale)
    return _FlashAttention.apply(q, k, v, keep, bool(causal), scale)


def flash_attention_with_lse(q, k, v, *, causal: bool, key_padding_mask=None, sm_scale=None):
    """Forward only (no autograd): (O, LSE), LSE (B, H, T) fp32 natural-log log-sum-exp of the scaled
    scores (the backward keeps it in log2 units; this converts)."""
    q, k, v, keep, scale = _prepare(q, k, v, key_padding_mask, sm_scale)
    o, lse2 = attention_forward(q, k, v, keep, bool(causal), scale)
    return o, lse2 * math.log(2.0)
