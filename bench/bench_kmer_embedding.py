"""Fused k-mer embedding (kernels/triton_kmer_embedding.py) against the torch paths, on one GPU (issue 7).

    python bench/bench_kmer_embedding.py               # the issue-7 table (needs a GPU; an H100 for the record)
    python bench/bench_kmer_embedding.py --sweep       # also time a few forward block shapes (tuning aid)
    python bench/bench_kmer_embedding.py --cpu-sanity  # no GPU: small interpreter-vs-reference check, not a benchmark
    python bench/bench_kmer_embedding.py --compile-report  # no GPU needed: compile every kernel variant for sm_90

The table: bf16 weights, batch x seq = 65,536 tokens (128 rows of 512 k-mer tokens), d_model 768 and 2048,
for dnagpt-6mer (3,072 bases a row) and dnabert-6 (517 bases a row); bases are random ACGT with 1% N and
10% lower case. Forward and forward+backward time of

- ours: ``kernels.triton_kmer_embedding.kmer_embedding`` from the bytes (backward: atomic, and deterministic);
- (a) ``F.embedding`` on the tokenizer's ids already on the GPU (tokenisation excluded: the floor of the
  token-id path);
- (b) ``kernels.kmer_embedding_ref``: the all-torch unfold-and-index path from the same bytes.

Effective bandwidth of a forward = (bytes of bases read + ids written + embedding rows read and written) /
time, against a device-to-device ``copy_`` of a (65,536, d_model) bf16 tensor in the same run. Goals:
forward >= 75% of copy bandwidth; forward+backward >= 1.3x the faster torch path. Times are
``triton.testing.do_bench`` medians; ``.grad`` is reset between runs so every backward writes a fresh grad.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

TOKENS, ROWS = 64 * 1024, 128
D_MODELS = (768, 2048)
TOKENIZERS = ("dnagpt-6mer", "dnabert-6")
NO_GPU = (
    "bench_kmer_embedding: no CUDA GPU here. The table needs one (the figures for BENCHMARKS.md come from an "
    "H100; until then they are owed). `--cpu-sanity` runs a small correctness check through Triton's CPU "
    "interpreter instead; its times are not performance figures."
)


def make_bases(rows: int, length: int, seed: int = 0):
    """(rows, length) uint8: random ACGT, 1% N, 10% lower case."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.choice(np.frombuffer(b"ACGT", np.uint8), size=(rows, length))
    x[rng.random(x.shape) < 0.01] = ord("N")
    lower = rng.random(x.shape) < 0.1
    x[lower] += 32
    return x


def case(name: str, d: int, device: str, dtype, tokens: int = TOKENS, rows: int = ROWS):
    """Bases, the tokenizer's ids of them (on ``device``), a weight and an output gradient."""
    import numpy as np
    import torch

    from datapipe.tokenizers import get_tokenizer

    tok = get_tokenizer(name)
    per_row = tokens // rows
    length = per_row * tok.k if name.startswith("dnagpt") else per_row + tok.k - 1
    bases_np = make_bases(rows, length)
    ids = torch.from_numpy(np.stack([tok.encode(r) for r in bases_np]).astype(np.int64)).to(device)
    g = torch.Generator().manual_seed(0)
    weight = (torch.randn(tok.vocab_size, d, generator=g) * 0.02).to(device, dtype)
    dy = torch.randn(rows, per_row, d, generator=g).to(device, dtype)
    return torch.from_numpy(bases_np).to(device), ids, weight, dy


def time_ms(fn, grads=()) -> float:
    from triton.testing import do_bench

    fn()  # compile / warm up outside the timing
    return do_bench(fn, grad_to_none=list(grads))


def paths(name: str):
    """{label: fn(bases, ids, weight) -> (B, T, D)} of the compared implementations."""
    import torch.nn.functional as F

    from kernels import kmer_embedding_ref
    from kernels import triton_kmer_embedding as tk

    return {
        "ours": lambda x, ids, w: tk.kmer_embedding(x, w, tokenizer=name)[0],
        "ours-det": lambda x, ids, w: tk.kmer_embedding(x, w, tokenizer=name, deterministic=True)[0],
        "ids+F.embedding": lambda x, ids, w: F.embedding(ids, w),
        "torch-from-bytes": lambda x, ids, w: kmer_embedding_ref(x, w, tokenizer=name),
    }


def copy_bandwidth(d: int, dtype, *, device: str = "cuda", tokens: int = TOKENS, timer=time_ms) -> float:
    """GB/s of a same-run device-to-device copy of a (tokens, d) tensor: read + write bytes / time."""
    import torch

    src = torch.empty(tokens, d, device=device, dtype=dtype).normal_()
    dst = torch.empty_like(src)
    return 2 * src.numel() * src.element_size() / (timer(lambda: dst.copy_(src)) * 1e-3) / 1e9


def measure_case(
    name: str,
    d: int,
    *,
    device: str = "cuda",
    dtype=None,
    tokens: int = TOKENS,
    rows: int = ROWS,
    timer=time_ms,
) -> dict:
    """Times (ms) of every path at one (tokenizer, d_model), keyed by (pass, label); checked equal first.
    Defaults: the table's GPU case (bf16); `./dev gpu --dry-run` passes CPU, fp32, tiny sizes and its timer."""
    import torch

    dtype = dtype or torch.bfloat16
    x, ids, w, dy = case(name, d, device, dtype, tokens=tokens, rows=rows)
    fns = paths(name)
    out = fns["ours"](x, ids, w)
    assert torch.equal(out, fns["ids+F.embedding"](x, ids, w)), f"{name}: ours != F.embedding"
    moved = x.numel() + ids.numel() * 4 + 2 * out.numel() * out.element_size()
    copy = copy_bandwidth(d, dtype, device=device, tokens=tokens, timer=timer)
    row = dict(tokenizer=name, d=d, copy=copy, moved=moved)
    for label, fn in fns.items():
        if label != "ours-det":  # its forward is ours'
            row[("fwd", label)] = timer(lambda fn=fn: fn(x, ids, w))
        wg = w.detach().requires_grad_()
        row[("fwd+bwd", label)] = timer(lambda fn=fn, wg=wg: fn(x, ids, wg).backward(dy), grads=(wg,))
    return row


def run_table() -> list[dict]:
    import torch

    rows = []
    for name in TOKENIZERS:
        for d in D_MODELS:
            print(f"{name} d_model {d} ...", file=sys.stderr, flush=True)
            rows.append(measure_case(name, d))
            torch.cuda.empty_cache()
    return rows


def print_table(rows: list[dict]) -> None:
    import torch
    import triton

    print(f"device: {torch.cuda.get_device_name()} | date: {datetime.date.today().isoformat()} | "
          f"torch {torch.__version__} | triton {triton.__version__}")  # fmt: skip
    print(f"bf16 weights, {TOKENS:,} tokens ({ROWS} rows x {TOKENS // ROWS}); times are medians in ms\n")
    head = ["tokenizer", "d_model", "pass", "ours", "ours-det", "ids+F.embedding", "torch-from-bytes"]
    head += ["ours GB/s", "copy GB/s", "ours / copy", "speedup vs faster torch"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        for mode in ("fwd", "fwd+bwd"):
            t = {
                label: r.get((mode, label))
                for label in ("ours", "ours-det", "ids+F.embedding", "torch-from-bytes")
            }
            faster = min(t["ids+F.embedding"], t["torch-from-bytes"])
            cells = [r["tokenizer"], str(r["d"]), mode]
            cells += ["-" if v is None else f"{v:.3f}" for v in t.values()]
            if mode == "fwd":
                gbs = r["moved"] / (t["ours"] * 1e-3) / 1e9
                cells += [f"{gbs:.0f}", f"{r['copy']:.0f}", f"{gbs / r['copy']:.0%}"]
            else:
                cells += ["", "", ""]
            cells.append(
                f"{faster / t['ours']:.2f}x"
                + ("" if mode == "fwd" else f" (det {faster / t['ours-det']:.2f}x)")
            )
            print("| " + " | ".join(cells) + " |")
    print(
        "\ngoals (issue 7): forward >= 75% of copy bandwidth; forward+backward >= 1.3x the faster torch path"
    )


def sweep() -> None:
    """Forward time over a few block shapes at the benchmark shapes (tuning aid; the defaults are untuned)."""
    import torch

    from kernels import triton_kmer_embedding as tk

    default = dict(tk.GPU_BLOCKS)
    print("\n| tokenizer | d_model | BLOCK_T | tile bytes | warps | fwd ms |\n|---|---|---|---|---|---|")
    for name in TOKENIZERS:
        for d in D_MODELS:
            x, _, w, _ = case(name, d, "cuda", torch.bfloat16)

            def fwd(x=x, w=w, name=name):
                return tk.kmer_embedding(x, w, tokenizer=name)

            for bt in (16, 32, 64, 128):
                for tile in (256, 512, 1024, 2048):
                    for warps in (2, 4, 8):
                        tk.GPU_BLOCKS.update(BLOCK_T=bt, TILE_BYTES=tile, num_warps=warps)
                        ms = time_ms(fwd)
                        print(f"| {name} | {d} | {bt} | {tile} | {warps} | {ms:.4f} |", flush=True)
    tk.GPU_BLOCKS.update(default)


def cpu_sanity() -> int:
    """Interpreter vs reference on a small case: equal ids, outputs, grads. Times are labelled, not figures."""
    import time

    import torch

    from kernels import kmer_embedding_ref
    from kernels import triton_kmer_embedding as tk

    print("CPU SANITY CHECK (Triton interpreter vs torch reference): correctness only; the interpreter is")
    print("hundreds of times slower than compiled code, so these times say nothing about the GPU kernel.\n")
    failed = 0
    for name in TOKENIZERS:
        x, ids, w, dy = case(name, 64, "cpu", torch.float32, tokens=2048, rows=4)
        w.requires_grad_()
        t0 = time.perf_counter()
        ref = kmer_embedding_ref(x, w, tokenizer=name)
        (g_ref,) = torch.autograd.grad(ref, w, dy)
        t1 = time.perf_counter()
        out, got_ids = tk.kmer_embedding(x, w, tokenizer=name)
        (g,) = torch.autograd.grad(out, w, dy)
        t2 = time.perf_counter()
        ok = (
            torch.equal(got_ids.long(), ids) and torch.equal(out, ref) and torch.allclose(g, g_ref, atol=1e-5)
        )
        failed += not ok
        print(f"{name}: 2,048 tokens, d 64, fp32: {'OK' if ok else 'MISMATCH'} | reference {1e3 * (t1 - t0):.1f} ms, "
              f"interpreter {1e3 * (t2 - t1):.0f} ms (CPU, not a benchmark)")  # fmt: skip
    return int(failed > 0)


# ------------------------------------------------------------------------------------- --compile-report

POINTERS = {
    "bases_ptr": "*u8", "nb_ptr": "*i64", "rev_ptr": "*u8", "pre_ptr": "*i64", "suf_ptr": "*i64",
    "rep_ptr": "*i64", "code_ptr": "*i32", "table_ptr": "*i32", "weight_ptr": "*bf16", "out_ptr": "*bf16",
    "ids_ptr": "*i32", "grad_ptr": "*bf16", "dw_ptr": "*bf16", "part_ptr": "*fp32", "perm_ptr": "*i32",
    "piece_row_ptr": "*i32", "piece_start_ptr": "*i32", "row_start_ptr": "*i32", "row_end_ptr": "*i32",
    "num_pieces_ptr": "*i32", "part_start_ptr": "*i32",
}  # fmt: skip
DIVISIBLE = {"stride_w", "stride_g", "D"}  # 16-divisible at d_model 768 / 2048, as a real launch specialises


def compile_variants(blocks: dict, fwd_only: bool = False) -> list[tuple]:
    """(kernel, constexprs, num_warps) of every variant a launch with ``blocks`` can take."""
    from kernels import triton_kmer_embedding as tk

    flags = ("HAS_NB", "HAS_REV", "HAS_PRE", "HAS_SUF", "HAS_REP")
    bd_fwd, bd_f32 = blocks["TILE_BYTES"] // 2, blocks["TILE_BYTES"] // 4  # bf16 rows, fp32 gradients
    w = blocks["num_warps"]
    out = []
    for k, stride, radix in ((6, 6, 6), (6, 1, 5)):  # DNAGPT 6-mers, DNABERT-6
        for on in (False, True):
            consts = dict(
                K=k, STRIDE=stride, RADIX=radix, GATHER=True, BLOCK_T=blocks["BLOCK_T"], BLOCK_D=bd_fwd
            )
            out.append((tk.kmer_fwd, consts | dict.fromkeys(flags, on), w))
    if not fwd_only:
        out.append((tk.kmer_bwd_atomic, dict(BLOCK_T=blocks["BLOCK_T"], BLOCK_D=bd_f32), w))
        out.append(
            (
                tk.kmer_bwd_pieces,
                dict(CHUNK=blocks["CHUNK"], BLOCK_T=blocks["BLOCK_T_DET"], BLOCK_D=bd_f32),
                w,
            )
        )
        out.append((tk.kmer_bwd_rows, dict(BLOCK_V=blocks["BLOCK_V"], BLOCK_D=bd_f32), w))
    return out


def compile_report() -> int:
    """Compile each kernel for sm_90 (no GPU needed), in the variants a launch can take, and print
    registers and spill bytes (cuobjdump's STACK): catches GPU-only compile errors the interpreter lets
    through, and register pressure. First the defaults (GPU_BLOCKS), then other forward tiles."""
    from sm90 import compile_sm90

    from kernels import triton_kmer_embedding as tk

    runs = [(tk.GPU_BLOCKS, False, "yes")]
    for bt, tile, w in ((16, 512, 4), (32, 512, 8), (64, 512, 8), (16, 1024, 8), (8, 512, 4)):
        runs.append((tk.GPU_BLOCKS | dict(BLOCK_T=bt, TILE_BYTES=tile, num_warps=w), True, ""))
    print("| kernel | constexprs | warps | default | registers | spill bytes |\n|---|---|---|---|---|---|")
    for blocks, fwd_only, is_default in runs:
        for kernel, consts, warps in compile_variants(blocks, fwd_only):
            sig, attrs = {}, {}
            for i, name in enumerate(kernel.arg_names):
                sig[name] = "constexpr" if name in consts else POINTERS.get(name, "i32")
                if name.endswith("_ptr") or name in DIVISIBLE:
                    attrs[(i,)] = [["tt.divisibility", 16]]
            if kernel is tk.kmer_bwd_atomic:
                sig["dw_ptr"] = "*fp32"
            _, regs, stack = compile_sm90(kernel, sig, consts, attrs, num_warps=warps)
            shown = {k: v for k, v in consts.items() if not k.startswith("HAS_")}
            if "HAS_NB" in consts:
                shown["layout"] = consts["HAS_NB"]
            shown = " ".join(f"{k}={v}" for k, v in shown.items())
            print(
                f"| {kernel.fn.__name__} | {shown} | {warps} | {is_default} | {regs} | {stack} |", flush=True
            )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sweep", action="store_true", help="also time forward block shapes")
    parser.add_argument("--cpu-sanity", action="store_true", help="no GPU: small interpreter check")
    parser.add_argument(
        "--compile-report", action="store_true", help="compile every kernel for sm_90 (no GPU)"
    )
    args = parser.parse_args()
    if args.compile_report:
        if os.environ.get("TRITON_INTERPRET") == "1":
            print("bench_kmer_embedding: unset TRITON_INTERPRET for --compile-report", file=sys.stderr)
            return 2
        return compile_report()

    import torch

    if not torch.cuda.is_available():
        print(NO_GPU)
        if not args.cpu_sanity:
            return 0
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are defined (imported)
        return cpu_sanity()
    if os.environ.get("TRITON_INTERPRET") == "1":
        print(
            "bench_kmer_embedding: unset TRITON_INTERPRET to benchmark the compiled kernels", file=sys.stderr
        )
        return 2
    print_table(run_table())
    if args.sweep:
        sweep()
    return 0


if __name__ == "__main__":
    sys.exit(main())
