"""Device code of the Triton flash attention (FA2): the @triton.jit kernels. Host side, tuning and
autograd live in ``kernels.triton_attention``, which is the module to import.

Layout: q, k, v, O, dO, dQ, dK, dV are (B, H, T, hd) with any strides but a contiguous last dimension;
KEEP is the (B, T) uint8 key mask; LSE and Delta are (B*H, T) fp32. One program owns a block of
queries (forward, dQ) or of keys (dK/dV) of one (batch, head). Scores are handled in log2 units
(scale * log2 e folded into qk_scale) so every exponential is an exp2, the native instruction.

``@triton.jit`` reads TRITON_INTERPRET when a kernel is *defined*, i.e. when this module is imported:
``INTERPRETED`` records which flavour this process got. Under the interpreter bf16 ``tl.dot`` operands
give garbage (triton-lang/triton#11584); there ``UPCAST`` turns bf16 tiles into fp32 right before each
``tl.dot`` (after rounding P and dS to bf16, as the GPU path does), so the interpreter still checks the
bf16 path's logic and its rounding points.
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.dispatch import triton_interpreting

INTERPRETED = triton_interpreting()
"""True when the kernels below were defined for Triton's CPU interpreter (TRITON_INTERPRET=1)."""


# ----------------------------------------------------------------------------------------- helpers


@triton.jit
def _dot_in(x, UPCAST: tl.constexpr):
    """A tl.dot operand: unchanged on a GPU; fp32 under the interpreter for bf16 (triton#11584)."""
    if UPCAST:
        x = x.to(tl.float32)
    return x


# ----------------------------------------------------------------------------------------- forward


@triton.jit
def _fwd_inner(
    acc, l_i, m_i, q, k_base, v_base, keep_base, stride_kt, stride_vt,
    offs_m, offs_d, lo, hi, seq_len, qk_scale,
    BLOCK_N: tl.constexpr, CAUSAL_MASK: tl.constexpr, BOUNDARY: tl.constexpr,
    HAS_MASK: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """Online softmax over key blocks [lo, hi). Scores are kept in log2 units (qk_scale has log2 e)."""
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_ptrs = k_base + offs_n[:, None] * stride_kt + offs_d[None, :]  # (BLOCK_N, HEAD_DIM)
        v_ptrs = v_base + offs_n[:, None] * stride_vt + offs_d[None, :]
        if BOUNDARY:
            k = tl.load(k_ptrs, mask=offs_n[:, None] < seq_len, other=0.0)
            v = tl.load(v_ptrs, mask=offs_n[:, None] < seq_len, other=0.0)
        else:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        qk = tl.dot(q, tl.trans(_dot_in(k, UPCAST)))  # (BLOCK_M, BLOCK_N) fp32
        if CAUSAL_MASK or BOUNDARY or HAS_MASK:
            qk = qk * qk_scale
            if CAUSAL_MASK:
                qk = tl.where(offs_m[:, None] >= offs_n[None, :], qk, float("-inf"))
            if BOUNDARY:
                qk = tl.where(offs_n[None, :] < seq_len, qk, float("-inf"))
            if HAS_MASK:
                kp = tl.load(keep_base + offs_n, mask=offs_n < seq_len, other=0)
                qk = tl.where(kp[None, :] != 0, qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            # A row with no visible key so far keeps m = -inf; subtract 0 instead so that
            # exp2(-inf - -inf) never makes a NaN (p = 0, alpha = 0 for such rows).
            m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(qk - m_sub[:, None])
        else:
            # Mask-free hot loop: the scale folds into one FMA per score. Non-MMA work per score is
            # what limits: H100 has ~989 TFLOP/s of bf16 MMA but ~3.9 T/s of MUFU exp2 (FA3 paper), and
            # at hd 64 a score costs 256 MMA flops and one exp2, so both units run near their limit.
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            m_sub = m_new
            p = tl.math.exp2(qk * qk_scale - m_sub[:, None])
        alpha = tl.math.exp2(m_i - m_sub)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        # P is rounded to the input dtype for the tensor-core MMA (fp32 accumulate), as in FA2.
        acc = tl.dot(_dot_in(p.to(v.dtype), UPCAST), _dot_in(v, UPCAST), acc)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def attn_fwd(
    Q, K, V, KEEP, Out, LSE, sm_scale,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt, stride_ob, stride_oh, stride_ot, stride_keep_b,
    H, seq_len,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    # Grid (query blocks, B*H): consecutive programs share one head's K/V, which then stays in L2
    # (at T=4096, hd=128 a program streams 2 MB of K/V for 268 MFLOP, below H100's flop/byte ratio
    # from HBM). Causal: the longest (last) query blocks start first so short ones fill the tail.
    pid_m = tl.program_id(0)
    if CAUSAL:
        pid_m = tl.num_programs(0) - 1 - pid_m
    off_bh = tl.program_id(1)
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)
    q_base = Q + off_b * stride_qb + off_h * stride_qh
    k_base = K + off_b * stride_kb + off_h * stride_kh
    v_base = V + off_b * stride_vb + off_h * stride_vh
    keep_base = KEEP + off_b * stride_keep_b

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(
        q_base + offs_m[:, None] * stride_qt + offs_d[None, :], mask=offs_m[:, None] < seq_len, other=0.0
    )
    q = _dot_in(q, UPCAST)  # stays in registers/SMEM for the whole key loop

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    qk_scale = sm_scale * 1.4426950408889634  # log2(e): exp(x) = exp2(x log2 e), exp2 is the native op

    if CAUSAL:
        # Keys left of diag_lo are visible to every row of this block: no mask there.
        diag_lo = (start_m // BLOCK_N) * BLOCK_N
        acc, l_i, m_i = _fwd_inner(
            acc, l_i, m_i, q, k_base, v_base, keep_base, stride_kt, stride_vt, offs_m, offs_d,
            0, diag_lo, seq_len, qk_scale, BLOCK_N, False, False, HAS_MASK, UPCAST,
        )  # fmt: skip
        acc, l_i, m_i = _fwd_inner(
            acc, l_i, m_i, q, k_base, v_base, keep_base, stride_kt, stride_vt, offs_m, offs_d,
            diag_lo, tl.minimum(start_m + BLOCK_M, seq_len), seq_len, qk_scale,
            BLOCK_N, True, True, HAS_MASK, UPCAST,
        )  # fmt: skip
    else:
        full_hi = (seq_len // BLOCK_N) * BLOCK_N  # the last, partial block alone checks bounds
        acc, l_i, m_i = _fwd_inner(
            acc, l_i, m_i, q, k_base, v_base, keep_base, stride_kt, stride_vt, offs_m, offs_d,
            0, full_hi, seq_len, qk_scale, BLOCK_N, False, False, HAS_MASK, UPCAST,
        )  # fmt: skip
        acc, l_i, m_i = _fwd_inner(
            acc, l_i, m_i, q, k_base, v_base, keep_base, stride_kt, stride_vt, offs_m, offs_d,
            full_hi, seq_len, seq_len, qk_scale, BLOCK_N, False, True, HAS_MASK, UPCAST,
        )  # fmt: skip

    # Rows with every key masked: l = 0, m = -inf -> O = 0 and LSE = -inf (never 0/0).
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    acc = acc * (1.0 / l_safe)[:, None]
    # Saved in log2 units, as the backward uses it: converting to natural log and back would add two
    # roundings to every recomputed exponent (visible in fp32, and it makes P = 1 inexact at seq 1).
    lse2 = m_i + tl.math.log2(l_safe)
    in_m = offs_m < seq_len
    tl.store(LSE + off_bh.to(tl.int64) * seq_len + offs_m, lse2, mask=in_m)
    o_base = Out + off_b * stride_ob + off_h * stride_oh
    tl.store(
        o_base + offs_m[:, None] * stride_ot + offs_d[None, :],
        acc.to(Out.dtype.element_ty),
        mask=in_m[:, None],
    )


# ----------------------------------------------------------------------------------------- backward


@triton.jit
def attn_bwd_preprocess(
    Out, DO, Delta, stride_ob, stride_oh, stride_ot, stride_db, stride_dh, stride_dt, H, seq_len,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    """delta = rowsum(dO * O), the softmax-backward correction, once per row (fp32)."""
    off_bh = tl.program_id(1)
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    in_m = offs_m[:, None] < seq_len
    o = tl.load(
        Out + off_b * stride_ob + off_h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :],
        mask=in_m,
        other=0.0,
    )
    do = tl.load(
        DO + off_b * stride_db + off_h * stride_dh + offs_m[:, None] * stride_dt + offs_d[None, :],
        mask=in_m,
        other=0.0,
    )
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(Delta + off_bh.to(tl.int64) * seq_len + offs_m, delta, mask=offs_m < seq_len)


@triton.jit
def _bwd_dkdv_inner(
    dk, dv, k, v, kkeep, q_base, do_base, lse_base, delta_base, stride_qt, stride_dot,
    offs_n, offs_d, lo, hi, seq_len, qk_scale,
    BLOCK_M: tl.constexpr, CAUSAL_MASK: tl.constexpr, BOUNDARY: tl.constexpr,
    HAS_MASK: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """Accumulate dK, dV of one key block over query blocks [lo, hi). Works on P^T (BLOCK_N, BLOCK_M)."""
    for start_m in range(lo, hi, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q_ptrs = q_base + offs_m[:, None] * stride_qt + offs_d[None, :]
        do_ptrs = do_base + offs_m[:, None] * stride_dot + offs_d[None, :]
        if BOUNDARY:
            in_m = offs_m < seq_len
            q = tl.load(q_ptrs, mask=in_m[:, None], other=0.0)
            do = tl.load(do_ptrs, mask=in_m[:, None], other=0.0)
            lse2 = tl.load(lse_base + offs_m, mask=in_m, other=0.0)
            delta = tl.load(delta_base + offs_m, mask=in_m, other=0.0)
        else:
            q = tl.load(q_ptrs)
            do = tl.load(do_ptrs)
            lse2 = tl.load(lse_base + offs_m)
            delta = tl.load(delta_base + offs_m)
        qkT = tl.dot(k, tl.trans(_dot_in(q, UPCAST)))  # (BLOCK_N, BLOCK_M)
        # Fully masked rows have LSE = -inf: exp2 gives inf there, and every such entry is masked
        # below (they only occur where a mask applies), so the selects, not arithmetic, zero them.
        pT = tl.math.exp2(qkT * qk_scale - lse2[None, :])
        if CAUSAL_MASK:
            pT = tl.where(offs_m[None, :] >= offs_n[:, None], pT, 0.0)
        if BOUNDARY:
            pT = tl.where(offs_m[None, :] < seq_len, pT, 0.0)
        if HAS_MASK:
            pT = tl.where(kkeep[:, None], pT, 0.0)
        do_in = _dot_in(do, UPCAST)
        dv = tl.dot(_dot_in(pT.to(do.dtype), UPCAST), do_in, dv)
        dpT = tl.dot(v, tl.trans(do_in))  # (BLOCK_N, BLOCK_M) = V dO^T
        dsT = pT * (dpT - delta[None, :])
        dk = tl.dot(_dot_in(dsT.to(q.dtype), UPCAST), _dot_in(q, UPCAST), dk)
    return dk, dv


@triton.jit
def attn_bwd_dkdv(
    Q, K, V, KEEP, DO, LSE, Delta, DK, DV, sm_scale,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt, stride_dob, stride_doh, stride_dot,
    stride_dkb, stride_dkh, stride_dkt, stride_dvb, stride_dvh, stride_dvt, stride_keep_b,
    H, seq_len,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    # Needs BLOCK_N % BLOCK_M == 0 so that the causal diagonal [start_n, start_n + BLOCK_N) is a whole
    # number of query blocks and the query blocks after it need no causal mask.
    tl.static_assert(BLOCK_N % BLOCK_M == 0)
    pid_n = tl.program_id(0)  # causal: low key blocks have the most work and start first
    off_bh = tl.program_id(1)
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)
    q_base = Q + off_b * stride_qb + off_h * stride_qh
    do_base = DO + off_b * stride_dob + off_h * stride_doh
    lse_base = LSE + off_bh.to(tl.int64) * seq_len
    delta_base = Delta + off_bh.to(tl.int64) * seq_len

    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    in_n = offs_n < seq_len
    # K and V of this block stay on chip for the whole query loop; rows past seq_len load as 0
    # and are never stored.
    k = tl.load(
        K + off_b * stride_kb + off_h * stride_kh + offs_n[:, None] * stride_kt + offs_d[None, :],
        mask=in_n[:, None],
        other=0.0,
    )
    v = tl.load(
        V + off_b * stride_vb + off_h * stride_vh + offs_n[:, None] * stride_vt + offs_d[None, :],
        mask=in_n[:, None],
        other=0.0,
    )
    k = _dot_in(k, UPCAST)
    v = _dot_in(v, UPCAST)
    kkeep = in_n
    if HAS_MASK:
        kkeep = tl.load(KEEP + off_b * stride_keep_b + offs_n, mask=in_n, other=0) != 0
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    qk_scale = sm_scale * 1.4426950408889634

    full_hi = (seq_len // BLOCK_M) * BLOCK_M  # query blocks below this need no bounds check
    if CAUSAL:
        dk, dv = _bwd_dkdv_inner(
            dk, dv, k, v, kkeep, q_base, do_base, lse_base, delta_base, stride_qt, stride_dot,
            offs_n, offs_d, start_n, tl.minimum(start_n + BLOCK_N, seq_len), seq_len, qk_scale,
            BLOCK_M, True, True, HAS_MASK, UPCAST,
        )  # fmt: skip
        lo = start_n + BLOCK_N
    else:
        lo = 0
    dk, dv = _bwd_dkdv_inner(
        dk, dv, k, v, kkeep, q_base, do_base, lse_base, delta_base, stride_qt, stride_dot,
        offs_n, offs_d, lo, full_hi, seq_len, qk_scale, BLOCK_M, False, False, HAS_MASK, UPCAST,
    )  # fmt: skip
    dk, dv = _bwd_dkdv_inner(
        dk, dv, k, v, kkeep, q_base, do_base, lse_base, delta_base, stride_qt, stride_dot,
        offs_n, offs_d, tl.maximum(lo, full_hi), seq_len, seq_len, qk_scale,
        BLOCK_M, False, True, HAS_MASK, UPCAST,
    )  # fmt: skip

    dk = dk * sm_scale  # dS was taken w.r.t. the scaled scores
    dk_ptrs = DK + off_b * stride_dkb + off_h * stride_dkh + offs_n[:, None] * stride_dkt + offs_d[None, :]
    dv_ptrs = DV + off_b * stride_dvb + off_h * stride_dvh + offs_n[:, None] * stride_dvt + offs_d[None, :]
    tl.store(dk_ptrs, dk.to(DK.dtype.element_ty), mask=in_n[:, None])
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=in_n[:, None])


@triton.jit
def _bwd_dq_inner(
    dq, q, do, lse2, delta, k_base, v_base, keep_base, stride_kt, stride_vt,
    offs_m, offs_d, lo, hi, seq_len, qk_scale,
    BLOCK_N: tl.constexpr, CAUSAL_MASK: tl.constexpr, BOUNDARY: tl.constexpr,
    HAS_MASK: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """Accumulate dQ of one query block over key blocks [lo, hi)."""
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_ptrs = k_base + offs_n[:, None] * stride_kt + offs_d[None, :]
        v_ptrs = v_base + offs_n[:, None] * stride_vt + offs_d[None, :]
        if BOUNDARY:
            k = tl.load(k_ptrs, mask=offs_n[:, None] < seq_len, other=0.0)
            v = tl.load(v_ptrs, mask=offs_n[:, None] < seq_len, other=0.0)
        else:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        k_in = _dot_in(k, UPCAST)
        qk = tl.dot(q, tl.trans(k_in))  # (BLOCK_M, BLOCK_N)
        p = tl.math.exp2(qk * qk_scale - lse2[:, None])
        if CAUSAL_MASK:
            p = tl.where(offs_m[:, None] >= offs_n[None, :], p, 0.0)
        if BOUNDARY:
            p = tl.where(offs_n[None, :] < seq_len, p, 0.0)
        if HAS_MASK:
            kp = tl.load(keep_base + offs_n, mask=offs_n < seq_len, other=0)
            p = tl.where(kp[None, :] != 0, p, 0.0)
        dp = tl.dot(do, tl.trans(_dot_in(v, UPCAST)))  # (BLOCK_M, BLOCK_N) = dO V^T
        ds = p * (dp - delta[:, None])
        dq = tl.dot(_dot_in(ds.to(k.dtype), UPCAST), k_in, dq)
    return dq


@triton.jit
def attn_bwd_dq(
    Q, K, V, KEEP, DO, LSE, Delta, DQ, sm_scale,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt, stride_dob, stride_doh, stride_dot,
    stride_dqb, stride_dqh, stride_dqt, stride_keep_b,
    H, seq_len,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    # Needs BLOCK_M % BLOCK_N == 0: then the causal diagonal starts on a key-block boundary.
    tl.static_assert(BLOCK_M % BLOCK_N == 0)
    pid_m = tl.program_id(0)
    if CAUSAL:
        pid_m = tl.num_programs(0) - 1 - pid_m  # longest rows first, as in the forward
    off_bh = tl.program_id(1)
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    in_m = offs_m < seq_len
    q = tl.load(
        Q + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :],
        mask=in_m[:, None],
        other=0.0,
    )
    do = tl.load(
        DO + off_b * stride_dob + off_h * stride_doh + offs_m[:, None] * stride_dot + offs_d[None, :],
        mask=in_m[:, None],
        other=0.0,
    )
    lse2 = tl.load(LSE + off_bh.to(tl.int64) * seq_len + offs_m, mask=in_m, other=0.0)
    delta = tl.load(Delta + off_bh.to(tl.int64) * seq_len + offs_m, mask=in_m, other=0.0)
    q = _dot_in(q, UPCAST)
    do = _dot_in(do, UPCAST)
    k_base = K + off_b * stride_kb + off_h * stride_kh
    v_base = V + off_b * stride_vb + off_h * stride_vh
    keep_base = KEEP + off_b * stride_keep_b
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    qk_scale = sm_scale * 1.4426950408889634

    if CAUSAL:
        dq = _bwd_dq_inner(
            dq, q, do, lse2, delta, k_base, v_base, keep_base, stride_kt, stride_vt, offs_m, offs_d,
            0, start_m, seq_len, qk_scale, BLOCK_N, False, False, HAS_MASK, UPCAST,
        )  # fmt: skip
        dq = _bwd_dq_inner(
            dq, q, do, lse2, delta, k_base, v_base, keep_base, stride_kt, stride_vt, offs_m, offs_d,
            start_m, tl.minimum(start_m + BLOCK_M, seq_len), seq_len, qk_scale,
            BLOCK_N, True, True, HAS_MASK, UPCAST,
        )  # fmt: skip
    else:
        full_hi = (seq_len // BLOCK_N) * BLOCK_N
        dq = _bwd_dq_inner(
            dq, q, do, lse2, delta, k_base, v_base, keep_base, stride_kt, stride_vt, offs_m, offs_d,
            0, full_hi, seq_len, qk_scale, BLOCK_N, False, False, HAS_MASK, UPCAST,
        )  # fmt: skip
        dq = _bwd_dq_inner(
            dq, q, do, lse2, delta, k_base, v_base, keep_base, stride_kt, stride_vt, offs_m, offs_d,
            full_hi, seq_len, seq_len, qk_scale, BLOCK_N, False, True, HAS_MASK, UPCAST,
        )  # fmt: skip

    dq = dq * sm_scale
    dq_ptrs = DQ + off_b * stride_dqb + off_h * stride_dqh + offs_m[:, None] * stride_dqt + offs_d[None, :]
    tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=in_m[:, None])
