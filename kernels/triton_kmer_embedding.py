"""Triton k-mer embedding, forward and backward, behind ``kernels.kmer_embedding`` (issue 7).

Token ids are computed in registers from the bytes (``_token_ids``): each output position knows its
row and column, hence whether it is a prefix, k-mer, suffix or pad slot (``kernels.kmer_embedding``
for the layout); a k-mer slot loads its <= 6 bytes, maps them to digits through the 256-entry byte
table and Horner-combines them into a window index, and one gather from the window table gives the
vocabulary id. Per token that is ~k one-byte loads and two small table gathers (all L1/L2 hits),
next to D * 2 bytes of embedding row read and written: the op is a row gather, bound by memory.

- forward: grid (token blocks, D blocks); a program computes the ids of BLOCK_T tokens, gathers a
  (BLOCK_T, BLOCK_D) tile of weight rows and stores it; the D-block-0 programs also store the ids
  (int32, B * T_out * 4 bytes), which the backward reuses instead of recomputing.
- backward, atomic (default): the same grid; each program atomically adds its fp32 tile of dY into
  an fp32 (V, D) buffer at its ids (relaxed ``red.add``). Cost beyond reading dY once: zeroing the
  buffer (V * D * 4 bytes) and, for fp16/bf16 weights, one cast pass (read V * D * 4, write V * D * 2);
  fp32 weights take the atomics directly. Summation order varies run to run (last-bit differences).
- backward, deterministic: sort the ids (stable, so each id's tokens stay in token order) and split
  every id's run into pieces of at most CHUNK tokens. Pass 1, one program per (piece, D block), sums
  its piece in a fixed order (fp32) and writes the dW row directly when the id has one piece, else a
  partial row to a workspace; pass 2, one program per (vocab row, D block), writes zeros for ids that
  do not occur and sums the partials of multi-piece ids in piece order. Every dW row is written once
  (V * D * elt), dY is read once, the workspace holds < 2 * N / CHUNK fp32 rows, and the pieces keep a
  very frequent id (padding, poly-A) from serialising on one program. Extra cost: torch.sort of the
  N int32 ids, three searchsorted and two cumsums (about 10 small launches over O(N + V) integers), no
  host synchronisation (grids are sized by bounds, surplus programs exit at once).

``@triton.jit`` reads TRITON_INTERPRET when a kernel is defined, i.e. when this module is imported:
``INTERPRETED`` records which flavour this process got (``kernels.kmer_embedding`` imports it lazily).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.dispatch import triton_interpreting
from kernels.kmer_embedding import KERNEL_DTYPES, KmerTables, SampleLayout, prepare

INTERPRETED = triton_interpreting()
"""True when the kernels below were defined for Triton's CPU interpreter (TRITON_INTERPRET=1)."""

# Blocks. GPU: a (32, 256) bf16 tile is 16 KB per program; 256 divides d_model 768 and 2048, so the
# benchmark shapes need no column mask (it is there for other widths). Compiled for sm_90 offline
# (`bench/bench_kmer_embedding.py --compile-report`, no GPU needed): 64-117 registers at 4 warps, no
# spills, when D and the strides are 16-divisible as at the benchmark shapes (Triton specialises on
# that and emits 16-byte vector loads). Untuned: no GPU was at hand when this was written (`--sweep`).
# Interpreter: numpy calls per program, so few large blocks, except CHUNK, kept small so that the
# tests' repeated ids (padding) exercise ids spread over several pieces.
GPU_BLOCKS = {
    "BLOCK_T": 32,
    "TILE_BYTES": 512,
    "num_warps": 4,
    "CHUNK": 256,
    "BLOCK_T_DET": 16,
    "BLOCK_V": 16,
}
INTERPRETER_BLOCKS = {
    "BLOCK_T": 64,
    "TILE_BYTES": 128,
    "num_warps": 1,
    "CHUNK": 8,
    "BLOCK_T_DET": 4,
    "BLOCK_V": 512,
}


def blocks() -> dict:
    return INTERPRETER_BLOCKS if INTERPRETED else GPU_BLOCKS


# ----------------------------------------------------------------------------------------- device code


@triton.jit
def _token_ids(
    f, valid, bases_ptr, stride_bb, L, nb_ptr, rev_ptr,
    pre_ptr, stride_pb, stride_pt, suf_ptr, stride_sb, stride_st, rep_ptr, stride_rb, stride_rt,
    code_ptr, table_ptr, T_out, P, S, PAD_ID,
    K: tl.constexpr, STRIDE: tl.constexpr, RADIX: tl.constexpr,
    HAS_NB: tl.constexpr, HAS_REV: tl.constexpr, HAS_PRE: tl.constexpr, HAS_SUF: tl.constexpr,
    HAS_REP: tl.constexpr,
):  # fmt: skip
    """(BLOCK_T,) int32 ids of the flat output positions ``f`` (row f // T_out, column f % T_out)."""
    row = f // T_out
    t = f % T_out
    if HAS_NB:  # clamped: a bad num_bases on CUDA must not read outside the row (the host checks on CPU)
        nb = tl.load(nb_ptr + row, mask=valid, other=0).to(tl.int32)
        nb = tl.minimum(tl.maximum(nb, 0), L)
    else:
        nb = tl.zeros_like(t) + L
    if STRIDE == K:  # DNAGPT: ceil(nb / 6) non-overlapping k-mers, the last one 1..6 bases
        n = (nb + (K - 1)) // K
    else:  # DNABERT: nb - k + 1 overlapping ones
        n = tl.maximum(nb - (K - 1), 0)
    pos = t - P
    is_kmer = valid & (pos >= 0) & (pos < n)
    j = pos
    if HAS_REV:
        rev = tl.load(rev_ptr + row, mask=valid, other=0)
        j = tl.where(rev != 0, n - 1 - pos, pos)
    start = j * STRIDE
    w = tl.minimum(nb - start, K)  # bases in this window: K except DNAGPT's tail
    base = bases_ptr + row.to(tl.int64) * stride_bb + start
    index = tl.zeros_like(t)
    power = tl.zeros_like(t) + 1
    for c in tl.static_range(K):  # Horner over the window's digits, radix RADIX
        take = c < w
        byte = tl.load(base + c, mask=is_kmer & take, other=0).to(tl.int32)
        code = tl.load(code_ptr + byte)
        index = tl.where(take, index * RADIX + code, index)
        power = tl.where(take, power * RADIX, power)
    first = (power - RADIX) // (RADIX - 1)  # start of the w-mer table inside window_ids
    ids = tl.load(table_ptr + first + index, mask=is_kmer, other=PAD_ID)
    if HAS_PRE:
        is_pre = valid & (t < P)
        pre = tl.load(pre_ptr + row * stride_pb + t * stride_pt, mask=is_pre, other=0).to(tl.int32)
        ids = tl.where(is_pre, pre, ids)
    if HAS_SUF:
        s = pos - n
        is_suf = valid & (s >= 0) & (s < S)
        suf = tl.load(suf_ptr + row * stride_sb + s * stride_st, mask=is_suf, other=0).to(tl.int32)
        ids = tl.where(is_suf, suf, ids)
    if HAS_REP:
        rep = tl.load(rep_ptr + row * stride_rb + t * stride_rt, mask=valid, other=-1).to(tl.int32)
        ids = tl.where(rep >= 0, rep, ids)
    return ids


@triton.jit
def kmer_fwd(
    bases_ptr, stride_bb, L, nb_ptr, rev_ptr,
    pre_ptr, stride_pb, stride_pt, suf_ptr, stride_sb, stride_st, rep_ptr, stride_rb, stride_rt,
    code_ptr, table_ptr, T_out, P, S, PAD_ID,
    weight_ptr, stride_w, out_ptr, ids_ptr, N, D,
    K: tl.constexpr, STRIDE: tl.constexpr, RADIX: tl.constexpr,
    HAS_NB: tl.constexpr, HAS_REV: tl.constexpr, HAS_PRE: tl.constexpr, HAS_SUF: tl.constexpr,
    HAS_REP: tl.constexpr, GATHER: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """ids of BLOCK_T output positions; with GATHER, their (BLOCK_T, BLOCK_D) tile of weight rows."""
    pid_d = tl.program_id(1)
    f = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    valid = f < N
    ids = _token_ids(
        f, valid, bases_ptr, stride_bb, L, nb_ptr, rev_ptr,
        pre_ptr, stride_pb, stride_pt, suf_ptr, stride_sb, stride_st, rep_ptr, stride_rb, stride_rt,
        code_ptr, table_ptr, T_out, P, S, PAD_ID,
        K, STRIDE, RADIX, HAS_NB, HAS_REV, HAS_PRE, HAS_SUF, HAS_REP,
    )  # fmt: skip
    if pid_d == 0:
        tl.store(ids_ptr + f, ids, mask=valid)
    if GATHER:
        d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
        mask = valid[:, None] & (d < D)[None, :]
        rows = tl.load(weight_ptr + ids.to(tl.int64)[:, None] * stride_w + d[None, :], mask=mask)
        tl.store(out_ptr + f.to(tl.int64)[:, None] * D + d[None, :], rows, mask=mask)


@triton.jit
def kmer_bwd_atomic(
    grad_ptr, stride_g, ids_ptr, dw_ptr, N, D, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr
):  # fmt: skip
    """dW[ids[f]] += dY[f] for a (BLOCK_T, BLOCK_D) tile; dW is fp32 (V, D) contiguous."""
    f = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    valid = f < N
    mask = valid[:, None] & (d < D)[None, :]
    ids = tl.load(ids_ptr + f, mask=valid, other=0)
    g = tl.load(grad_ptr + f.to(tl.int64)[:, None] * stride_g + d[None, :], mask=mask, other=0.0)
    tl.atomic_add(
        dw_ptr + ids.to(tl.int64)[:, None] * D + d[None, :], g.to(tl.float32), mask=mask, sem="relaxed"
    )


@triton.jit
def kmer_bwd_pieces(
    grad_ptr, stride_g, perm_ptr, piece_row_ptr, piece_start_ptr, row_start_ptr, row_end_ptr,
    num_pieces_ptr, part_start_ptr, dw_ptr, part_ptr, V, D,
    CHUNK: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Pass 1: the sum of one piece (<= CHUNK sorted tokens of one id) for one D block, in token order."""
    p = tl.program_id(0)
    v = tl.load(piece_row_ptr + p)
    if v < V:  # the grid is a bound on the number of pieces; surplus programs have v == V
        q = p - tl.load(piece_start_ptr + v)
        lo = tl.load(row_start_ptr + v) + q * CHUNK
        hi = tl.minimum(lo + CHUNK, tl.load(row_end_ptr + v))
        d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        acc = tl.zeros((BLOCK_D,), tl.float32)
        for t0 in range(lo, hi, BLOCK_T):
            offs = t0 + tl.arange(0, BLOCK_T)
            tok = tl.load(perm_ptr + offs, mask=offs < hi, other=0)
            mask = (offs < hi)[:, None] & (d < D)[None, :]
            g = tl.load(grad_ptr + tok.to(tl.int64)[:, None] * stride_g + d[None, :], mask=mask, other=0.0)
            acc += tl.sum(g.to(tl.float32), axis=0)
        if tl.load(num_pieces_ptr + v) == 1:
            tl.store(dw_ptr + v.to(tl.int64) * D + d, acc.to(dw_ptr.dtype.element_ty), mask=d < D)
        else:
            slot = tl.load(part_start_ptr + v) + q
            tl.store(part_ptr + slot.to(tl.int64) * D + d, acc, mask=d < D)


@triton.jit
def kmer_bwd_rows(
    num_pieces_ptr, part_start_ptr, dw_ptr, part_ptr, V, D, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr
):  # fmt: skip
    """Pass 2, BLOCK_V dW rows per program: 0 where the id does not occur, the sum of its partials in piece
    order where it has several pieces; rows of one piece were written by pass 1 and are left alone."""
    v = tl.program_id(0) * BLOCK_V + tl.arange(0, BLOCK_V)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.load(num_pieces_ptr + v, mask=v < V, other=1)  # 1: nothing to write
    first = tl.load(part_start_ptr + v, mask=v < V, other=0).to(tl.int64)
    acc = tl.zeros((BLOCK_V, BLOCK_D), tl.float32)
    for q in range(0, tl.max(n, axis=0)):  # > 1 only where a frequent id lies in this block
        take = ((q < n) & (n > 1))[:, None] & (d < D)[None, :]
        acc += tl.load(part_ptr + (first + q)[:, None] * D + d[None, :], mask=take, other=0.0)
    keep = (n != 1)[:, None] & (d < D)[None, :]
    tl.store(dw_ptr + v.to(tl.int64)[:, None] * D + d[None, :], acc.to(dw_ptr.dtype.element_ty), mask=keep)


# ----------------------------------------------------------------------------------------- host side


def _block_d(d: int, elt_size: int) -> int:
    return max(16, min(triton.next_power_of_2(max(d, 1)), blocks()["TILE_BYTES"] // elt_size))


def _layout_args(layout: SampleLayout, dummy: torch.Tensor) -> tuple[list, dict]:
    """Pointer and stride arguments of the optional layout tensors (a dummy pointer where absent)."""

    def two_d(x):
        return (x, x.stride(0), x.stride(1)) if x is not None else (dummy, 0, 0)

    args = [
        layout.num_bases if layout.num_bases is not None else dummy,
        layout.reverse.view(torch.uint8) if layout.reverse is not None else dummy,
        *two_d(layout.prefix_ids), *two_d(layout.suffix_ids), *two_d(layout.replace_ids),
    ]  # fmt: skip
    flags = dict(
        HAS_NB=layout.num_bases is not None,
        HAS_REV=layout.reverse is not None,
        HAS_PRE=layout.num_prefix > 0,
        HAS_SUF=layout.num_suffix > 0,
        HAS_REP=layout.replace_ids is not None,
    )
    return args, flags


def _launch_fwd(bases, tables: KmerTables, layout: SampleLayout, t_out: int, weight, out, ids) -> None:
    b, length = bases.shape
    n = b * t_out
    if n == 0:
        return
    if bases.stride(1) != 1:
        bases = bases.contiguous()
    cfg = blocks()
    gather = weight is not None
    d = weight.shape[1] if gather else 0
    block_d = _block_d(d, weight.element_size()) if gather else 16
    args, flags = _layout_args(layout, ids)
    grid = (triton.cdiv(n, cfg["BLOCK_T"]), triton.cdiv(d, block_d) if gather and d else 1)
    kmer_fwd[grid](
        bases, bases.stride(0), length, *args,
        tables.byte_code, tables.window_ids, t_out, layout.num_prefix, layout.num_suffix, tables.pad_id,
        weight if gather else ids, weight.stride(0) if gather else 0, out if gather else ids, ids, n, d,
        K=tables.k, STRIDE=tables.stride, RADIX=tables.radix, **flags, GATHER=gather and d > 0,
        BLOCK_T=cfg["BLOCK_T"], BLOCK_D=block_d, num_warps=cfg["num_warps"],
    )  # fmt: skip


def kmer_ids(bases: torch.Tensor, *, tokenizer: str, **layout) -> torch.Tensor:
    """(B, L) uint8 -> (B, T_out) int64 ids through the kernel (no gather)."""
    tables, lay, t_out = prepare(bases, tokenizer, **layout)
    ids = torch.empty((bases.shape[0], t_out), dtype=torch.int64, device=bases.device)
    _launch_fwd(bases, tables, lay, t_out, None, None, ids)
    return ids


def embedding_backward(grad: torch.Tensor, ids: torch.Tensor, weight_shape, dtype, deterministic: bool):
    """dW (V, D) in ``dtype`` from dY (N, D) and the forward's int32 ids (N,)."""
    v, d = weight_shape
    n = ids.numel()
    if grad.stride(1) != 1:
        grad = grad.contiguous()
    if deterministic:
        return _backward_sorted(grad, ids, v, d, dtype)
    cfg = blocks()
    acc = torch.zeros((v, d), dtype=torch.float32, device=grad.device)
    if n and d:
        block_d = _block_d(d, 4)
        kmer_bwd_atomic[(triton.cdiv(n, cfg["BLOCK_T"]), triton.cdiv(d, block_d))](
            grad, grad.stride(0), ids, acc, n, d,
            BLOCK_T=cfg["BLOCK_T"], BLOCK_D=block_d, num_warps=cfg["num_warps"],
        )  # fmt: skip
    return acc if dtype == torch.float32 else acc.to(dtype)


def _backward_sorted(grad, ids, v: int, d: int, dtype):
    """The deterministic two-pass backward (module docstring)."""
    cfg = blocks()
    chunk = cfg["CHUNK"]
    n = ids.numel()
    dw = torch.empty((v, d), dtype=dtype, device=grad.device)
    if d == 0:
        return dw
    sorted_ids, perm = torch.sort(
        ids, stable=True
    )  # token positions grouped by id, in token order within one
    vocab = torch.arange(v, dtype=ids.dtype, device=ids.device)
    # each id's run in the sorted order (searchsorted, not bincount: no atomics, so nothing that
    # torch.use_deterministic_algorithms could object to)
    row_start = torch.searchsorted(sorted_ids, vocab)
    row_end = torch.searchsorted(sorted_ids, vocab, right=True)
    counts = row_end - row_start  # (V,)
    pieces = (counts + chunk - 1) // chunk  # 0 for ids that do not occur
    piece_end = torch.cumsum(pieces, 0)
    piece_start = piece_end - pieces
    multi = torch.where(pieces > 1, pieces, 0)
    part_start = torch.cumsum(multi, 0) - multi  # first workspace row of each multi-piece id
    # bounds, so no host sync: each occurring id has <= count / chunk + 1 pieces; an id with several
    # has count > chunk, so < 2 * count / chunk of them
    max_pieces = min(v, n) + n // chunk
    workspace = torch.empty((2 * n // chunk + 1, d), dtype=torch.float32, device=grad.device)
    i32 = dict(dtype=torch.int32)
    piece_row = torch.searchsorted(piece_end, torch.arange(max_pieces, device=grad.device), right=True)
    block_d = _block_d(d, 4)
    if max_pieces:
        kmer_bwd_pieces[(max_pieces, triton.cdiv(d, block_d))](
            grad, grad.stride(0), perm.to(**i32), piece_row.to(**i32), piece_start.to(**i32),
            row_start.to(**i32), row_end.to(**i32), pieces.to(**i32), part_start.to(**i32), dw, workspace, v, d,
            CHUNK=chunk, BLOCK_T=cfg["BLOCK_T_DET"], BLOCK_D=block_d, num_warps=cfg["num_warps"],
        )  # fmt: skip
    kmer_bwd_rows[(triton.cdiv(v, cfg["BLOCK_V"]), triton.cdiv(d, block_d))](
        pieces.to(**i32), part_start.to(**i32), dw, workspace, v, d,
        BLOCK_V=cfg["BLOCK_V"], BLOCK_D=block_d, num_warps=cfg["num_warps"],
    )  # fmt: skip
    return dw


class _KmerEmbedding(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, bases, tables, layout, t_out, deterministic):
        b = bases.shape[0]
        out = torch.empty((b, t_out, weight.shape[1]), dtype=weight.dtype, device=weight.device)
        ids = torch.empty((b, t_out), dtype=torch.int32, device=weight.device)
        _launch_fwd(bases, tables, layout, t_out, weight, out, ids)
        ctx.save_for_backward(ids)
        ctx.mark_non_differentiable(ids)
        ctx.weight_shape, ctx.weight_dtype, ctx.deterministic = (
            tuple(weight.shape),
            weight.dtype,
            deterministic,
        )
        return out, ids

    @staticmethod
    def backward(ctx, grad_out, _grad_ids):
        (ids,) = ctx.saved_tensors
        d = ctx.weight_shape[1]
        grad = grad_out.reshape(-1, d)
        dw = embedding_backward(grad, ids.view(-1), ctx.weight_shape, ctx.weight_dtype, ctx.deterministic)
        return dw, None, None, None, None, None


def kmer_embedding(
    bases: torch.Tensor, weight: torch.Tensor, *, tokenizer: str, deterministic: bool = False, **layout
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T_out, D) embeddings and the (B, T_out) int32 ids, through the kernels; raises ValueError if
    the inputs do not fit (``kernels.kmer_embedding`` documents the arguments)."""
    if weight.dim() != 2 or weight.dtype not in KERNEL_DTYPES:
        raise ValueError(
            f"kmer_embedding: the kernel takes a 2-D float32/float16/bfloat16 weight, got {weight.dtype}"
        )
    tables, lay, t_out = prepare(bases, tokenizer, vocab_rows=weight.shape[0], **layout)
    if weight.stride(1) != 1:
        weight = weight.contiguous()  # rows are gathered with vector loads along D
    return _KmerEmbedding.apply(weight, bases, tables, lay, t_out, bool(deterministic))
