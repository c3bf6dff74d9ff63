"""Triton flash attention (kernels/triton_attention.py) against PyTorch's SDPA backends on one GPU.

    python bench/bench_attention.py                   # the issue-6 table (needs a GPU; an H100 for the record)
    python bench/bench_attention.py --check           # GPU correctness comparisons (exit 1 on a failure)
    python bench/bench_attention.py --compile-report  # no GPU needed: compile every config for sm_90

The table: bf16, batch x seq = 16k tokens, heads x head_dim = 2048, head_dim 64 and 128, seq 512 to
4096, causal and not; forward and forward+backward TFLOP/s of ours (autotuned) against
``F.scaled_dot_product_attention`` with the FLASH backend and, where present, cuDNN; plus the same-run
bf16 8192^3 matmul as the ceiling. FLOPs follow the flash-attention convention: 4 * B * H * T^2 * hd
for the forward, halved when causal; forward+backward is 3.5x that (the backward's five matmuls, one
of them recomputing QK^T, are 2.5x the forward's two). Timing: ``triton.testing.do_bench`` (median).
The first call of each shape autotunes ours (compiles, about a minute per head_dim x causal variant;
cached on disk afterwards); that happens before timing.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

TOKENS, MODEL_DIM = 16 * 1024, 2048
SEQS, HEAD_DIMS = (512, 1024, 2048, 4096), (64, 128)
NO_GPU = (
    "bench_attention: no CUDA GPU here. The table needs one (the figures for BENCHMARKS.md come from an "
    "H100; until then they are owed). `--compile-report` works without a GPU."
)


def attention_flops(b: int, h: int, t: int, hd: int, causal: bool, mode: str) -> float:
    fwd = 4.0 * b * h * t * t * hd * (0.5 if causal else 1.0)
    return fwd if mode == "fwd" else 3.5 * fwd


def sdpa_backends():
    """[(name, SDPBackend)] of the fused backends to compare with: flash, and cuDNN where present."""
    from torch.nn.attention import SDPBackend

    found = [("flash", SDPBackend.FLASH_ATTENTION)]
    if hasattr(SDPBackend, "CUDNN_ATTENTION"):
        found.append(("cudnn", SDPBackend.CUDNN_ATTENTION))
    return found


def time_ms(fn, backend=None, grads=()) -> float | None:
    """Median ms of fn under an SDPA backend (None if that backend refuses the inputs)."""
    import torch
    from torch.nn.attention import sdpa_kernel
    from triton.testing import do_bench

    try:
        if backend is None:
            fn()  # ours: autotunes on the first call of a shape, outside the timing
            return do_bench(fn, grad_to_none=list(grads))
        with sdpa_kernel(backend):
            fn()
            return do_bench(fn, grad_to_none=list(grads))
    except RuntimeError as err:  # e.g. "No available kernel" for a backend on this device
        print(f"  ({backend}: {str(err).splitlines()[0][:100]})", file=sys.stderr)
        torch.cuda.synchronize()
        return None


def matmul_ceiling() -> float:
    import torch
    from triton.testing import do_bench

    n = 8192
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    return 2.0 * n**3 / (do_bench(lambda: a @ b) * 1e-3) / 1e12


def measure(fn, q, k, v, do, mode: str, backend=None) -> float | None:
    """Median ms of the forward (mode "fwd") or forward+backward of fn(q, k, v)."""
    grad = mode != "fwd"
    qg, kg, vg = (x.detach().requires_grad_(grad) for x in (q, k, v))

    def step():
        out = fn(qg, kg, vg)
        if grad:
            out.backward(do)

    return time_ms(step, backend, grads=(qg, kg, vg) if grad else ())


def run_table() -> list[dict]:
    import functools

    import torch
    import torch.nn.functional as F

    from kernels import triton_attention as ta

    rows = []
    for hd in HEAD_DIMS:
        for t in SEQS:
            b, h = TOKENS // t, MODEL_DIM // hd
            q, k, v, do = (torch.randn(b, h, t, hd, device="cuda", dtype=torch.bfloat16) for _ in range(4))
            for causal in (False, True):
                print(f"hd {hd} seq {t} causal {causal} ...", file=sys.stderr, flush=True)
                ours = functools.partial(ta.flash_attention, causal=causal)
                sdpa = functools.partial(F.scaled_dot_product_attention, is_causal=causal)
                for mode in ("fwd", "fwd+bwd"):
                    flop = attention_flops(b, h, t, hd, causal, mode)
                    row = dict(hd=hd, seq=t, batch=b, heads=h, causal=causal, mode=mode)
                    row["ours"] = _tflops(flop, measure(ours, q, k, v, do, mode))
                    for name, backend in sdpa_backends():
                        row[name] = _tflops(flop, measure(sdpa, q, k, v, do, mode, backend))
                    rows.append(row)
    return rows


def _tflops(flop: float, ms: float | None) -> float | None:
    return None if ms is None else flop / (ms * 1e-3) / 1e12


def print_table(rows: list[dict], ceiling: float) -> None:
    import torch
    import triton

    names = [n for n, _ in sdpa_backends()]
    print(f"device: {torch.cuda.get_device_name()} | date: {datetime.date.today().isoformat()} | "
          f"torch {torch.__version__} | triton {triton.__version__}")  # fmt: skip
    print(f"bf16 matmul ceiling (8192^3, same run): {ceiling:.0f} TFLOP/s\n")
    head = ["head_dim", "seq", "batch x heads", "causal", "pass", "ours TFLOP/s"]
    for n in names:
        head += [f"{n} TFLOP/s", f"ours / {n}"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    fmt = lambda x: "n/a" if x is None else f"{x:.0f}"  # noqa: E731
    for r in rows:
        cells = [str(r["hd"]), str(r["seq"]), f"{r['batch']} x {r['heads']}", "yes" if r["causal"] else "no"]
        cells += [r["mode"], fmt(r["ours"])]
        for n in names:
            ratio = None if r["ours"] is None or r[n] is None else r["ours"] / r[n]
            cells += [fmt(r[n]), "n/a" if ratio is None else f"{ratio:.2f}x"]
        print("| " + " | ".join(cells) + " |")
    ratios = [(r["ours"] / r["flash"], r) for r in rows if r["ours"] and r["flash"]]
    worst = min(ratios, key=lambda x: x[0]) if ratios else None
    long = [x for x, r in ratios if r["seq"] >= 2048]
    print(
        f"\ngoal (issue 6): >= 1.0x flash everywhere, >= 1.2x at seq >= 2048. "
        f"min ratio {worst[0]:.2f}x (hd {worst[1]['hd']}, seq {worst[1]['seq']}, {worst[1]['mode']}, "
        f"causal {worst[1]['causal']}); min at seq >= 2048: {min(long):.2f}x"
        if worst and long
        else "\ngoal (issue 6): not evaluated (missing measurements)"
    )


# ------------------------------------------------------------------------------------- --check


def check(quick: bool) -> int:
    """Ours vs an fp32 reference with the tests' bound, on GPU: a shape matrix at the default blocks,
    then every config of the search spaces once, at one irregular shape per head_dim."""
    import torch

    from kernels import triton_attention as ta
    from kernels.attention import attention_ref

    os.environ["DNAFM_ATTENTION_AUTOTUNE"] = "0"
    atol = {torch.float16: 1e-3, torch.bfloat16: 8e-3}
    failures = 0

    def one(b, h, t, hd, dtype, causal, masked, label=""):
        nonlocal failures
        g = torch.Generator(device="cuda").manual_seed(t * hd)
        q, k, v, do = (torch.randn(b, h, t, hd, device="cuda", dtype=dtype, generator=g) for _ in range(4))
        keep = None
        if masked:
            keep = torch.rand(b, t, device="cuda", generator=g) > 0.3
            keep[0] = False
        worst = 0.0
        results = [_grads(fn, q, k, v, do, causal, keep) for fn in (ta.flash_attention, attention_ref)]
        gold = _grads(attention_ref, *(x.float() for x in (q, k, v, do)), causal, keep)
        for ours, own, ref in zip(*results, gold, strict=True):
            bound = 2 * (own.float() - ref).abs().max().item() + atol[dtype] * max(
                1.0, ref.abs().max().item()
            )
            worst = max(worst, (ours.float() - ref).abs().max().item() / bound)
        ok = worst <= 1.0 and all(torch.isfinite(x).all() for x in results[0])
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {label}b{b} h{h} t{t} hd{hd} {str(dtype)[6:]} causal={causal} "
              f"masked={masked}: worst error / bound = {worst:.2f}")  # fmt: skip

    seqs = (1, 17, 129, 300, 1000) if quick else (1, 17, 129, 300, 1000, 2048, 4097)
    for hd in ta.HEAD_DIMS:
        for t in seqs:
            for dtype in (torch.bfloat16, torch.float16):
                for causal in (False, True):
                    for masked in (False, True):
                        one(2, 2, t, hd, dtype, causal, masked)
    for hd in ta.HEAD_DIMS:
        for kind, space in ta.SEARCH_SPACES.items():
            for cfg in ta._configs(space):
                if not ta.config_fits(kind, cfg, hd):
                    continue
                ta.FORCED_CONFIGS[kind] = cfg
                label = f"[{kind} {cfg.kwargs['BLOCK_M']}x{cfg.kwargs['BLOCK_N']} w{cfg.num_warps} s{cfg.num_stages}] "
                for causal in (False, True):
                    one(1, 2, 333, hd, torch.bfloat16, causal, True, label)
                ta.FORCED_CONFIGS.clear()
    print(f"\n{failures} failure(s)")
    return 1 if failures else 0


def _grads(fn, q, k, v, do, causal, keep):
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = fn(q, k, v, causal=causal, key_padding_mask=keep)
    out.backward(do)
    return out.detach(), q.grad, k.grad, v.grad


# ------------------------------------------------------------------------------------- --compile-report


def compile_report(head_dims: list[int]) -> int:
    """Compile every kernel config for sm_90 (no GPU needed) and print shared memory, registers and
    spill bytes (cuobjdump's STACK): the evidence behind the search spaces' limits. Uses Triton's
    ahead-of-time compile API with the specialisation a real launch gets (16-divisible pointers,
    strides and seq_len), as with the benchmark's shapes."""
    from sm90 import compile_sm90

    from kernels import triton_attention as ta

    print(
        "| kernel | head_dim | BLOCK_M x BLOCK_N | warps | stages | default | shared KB | registers | spill bytes |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for hd in head_dims:
        for kind, kernel in ta.KERNELS.items():
            default = ta.default_config(kind, hd)
            configs = [c for c in ta._configs(ta.SEARCH_SPACES[kind]) if ta.config_fits(kind, c, hd)]
            if not any(_same(c, default) for c in configs):
                configs.append(default)
            for cfg in configs:
                consts = dict(HEAD_DIM=hd, CAUSAL=True, HAS_MASK=False, UPCAST=False, **cfg.kwargs)
                sig, attrs = {}, {}
                for i, name in enumerate(kernel.arg_names):
                    if name in consts:
                        sig[name] = "constexpr"
                    elif name == "sm_scale":
                        sig[name] = "fp32"
                    else:
                        sig[name] = POINTER_ARGS.get(name, "i32")
                        if name != "H":  # pointers, strides and seq_len: 16-divisible, as at our shapes
                            attrs[(i,)] = [["tt.divisibility", 16]]
                compiled, regs, stack = compile_sm90(
                    kernel, sig, consts, attrs, num_warps=cfg.num_warps, num_stages=cfg.num_stages
                )
                bm, bn = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]
                print(f"| {kind} | {hd} | {bm} x {bn} | {cfg.num_warps} | {cfg.num_stages} | "
                      f"{'yes' if _same(cfg, default) else ''} | {compiled.metadata.shared / 1024:.0f} | {regs} | {stack} |",
                      flush=True)  # fmt: skip
    return 0


POINTER_ARGS = {"LSE": "*fp32", "Delta": "*fp32", "KEEP": "*u8"} | {
    name: "*bf16" for name in ("Q", "K", "V", "Out", "DO", "DQ", "DK", "DV")
}


def _same(a, b) -> bool:
    return a.kwargs == b.kwargs and (a.num_warps, a.num_stages) == (b.num_warps, b.num_stages)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="GPU correctness comparisons instead of timing")
    mode.add_argument("--compile-report", action="store_true", help="compile every config for sm_90 (no GPU)")
    parser.add_argument("--quick", action="store_true", help="--check: fewer sequence lengths")
    parser.add_argument("--head-dims", type=int, nargs="+", default=[32, 64, 128], help="--compile-report")
    args = parser.parse_args(argv)

    if os.environ.get("TRITON_INTERPRET") == "1":
        print(
            "bench_attention: unset TRITON_INTERPRET; this measures and compiles real GPU kernels",
            file=sys.stderr,
        )
        return 2
    if args.compile_report:
        return compile_report(args.head_dims)
    import torch

    if not torch.cuda.is_available():
        print(NO_GPU, file=sys.stderr)
        return 2
    if args.check:
        return check(args.quick)
    ceiling = matmul_ceiling()
    rows = run_table()
    print_table(rows, ceiling)
    return 0


if __name__ == "__main__":
    sys.exit(main())
