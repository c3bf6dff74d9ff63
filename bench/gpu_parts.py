"""The kernel parts of `./dev gpu` (bench/gpu.py): attention and k-mer embedding benchmarks, the matmul
ceiling, and the GPU-marked tests. Each part yields table rows (dicts, see ``row``) as it measures them.

On a GPU the shapes are the issue-6/7 benchmark shapes (bf16; ``triton.testing.do_bench`` medians). In a dry
run (CPU, TRITON_INTERPRET=1) the same code runs at tiny shapes in fp32 (the interpreter's bf16 ``tl.dot``
is wrong, triton-lang/triton#11584), timed by a few wall-clock repeats: figures that only show the code runs.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
DTYPE = torch.bfloat16 if GPU else torch.float32

ATTN_GPU = dict(head_dims=(64, 128), seqs=(512, 1024, 2048, 4096), tokens=16 * 1024, model_dim=2048)
ATTN_DRY = dict(head_dims=(64, 128), seqs=(64, 128), tokens=64, model_dim=128)
KMER_GPU = dict(d_models=(768, 2048), tokens=64 * 1024, rows=128)
KMER_DRY = dict(d_models=(64,), tokens=256, rows=2)


def row(part: str, case: str, ours: float | None, unit: str, **kw) -> dict:
    """One table row. ``baseline`` is in ``unit`` too and ``ratio`` = ours / baseline (higher is better for
    ours, whatever the unit); ``status`` is ok, skipped (out of time), mismatch (wrong output) or failed."""
    out = dict(part=part, case=case, ours=ours, unit=unit, baseline=None, baseline_name="", goal="", note="")
    out |= kw
    if out.get("ratio") is None and ours is not None and out["baseline"]:
        out["ratio"] = ours / out["baseline"]
    out.setdefault("status", "ok" if ours is not None else "failed")
    return out


def bench_ms(fn: Callable[[], object], grads=()) -> float:
    """Median milliseconds of fn(): do_bench on a GPU (after a first call that compiles / autotunes). On
    CPU (dry run) one call's wall time: the interpreter compiles nothing, and each call of a Triton kernel
    is seconds long there."""
    if GPU:
        from triton.testing import do_bench

        fn()
        return do_bench(fn, grad_to_none=list(grads))
    for g in grads:
        g.grad = None
    t0 = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - t0)


def out_of_time(deadline: float) -> bool:
    return time.time() > deadline


def failed(part: str, case: str, err: BaseException) -> dict:
    """The row of a case that raised; its traceback goes to the part's log."""
    traceback.print_exception(err, file=sys.stderr)
    first = (str(err).strip().splitlines() or [""])[0][:200]
    return row(part, case, None, "", status="failed", note=f"{type(err).__name__}: {first}")


def guarded(part: str, case: str, measure: Callable[[], dict]) -> dict:
    """measure(), or the failed row: one broken case must not cost the other cases of a short GPU loan."""
    try:
        return measure()
    except Exception as err:  # noqa: BLE001 (reported in the table and the log)
        if GPU:
            torch.cuda.synchronize()
        return failed(part, case, err)


# ------------------------------------------------------------------------------------------- ceiling


def ceiling_rows(deadline: float) -> Iterator[dict]:
    """The same-run ceilings: a dense matmul in the benchmark dtype (the attention's TFLOP/s ceiling)."""
    n = 8192 if GPU else 256
    a, b = (torch.randn(n, n, device=DEVICE, dtype=DTYPE) for _ in range(2))
    tflops = 2.0 * n**3 / (bench_ms(lambda: a @ b) * 1e-3) / 1e12
    yield row(
        "ceiling", f"{str(DTYPE)[6:]} matmul {n}^3", tflops, "TFLOP/s", note="the same-run compute ceiling"
    )


# ------------------------------------------------------------------------------------------ attention


def attention_rows(deadline: float) -> Iterator[dict]:
    """Ours (Triton) against SDPA, causal (DNAGPT) and padded bidirectional (DNABERT), forward and
    forward+backward. The baseline is SDPA's flash backend; flash takes no mask on a GPU, so padded rows
    compare with the fastest backend that does (memory-efficient, or cuDNN where present)."""
    import functools

    import torch.nn.functional as F
    from bench_attention import attention_flops, sdpa_backends
    from torch.nn.attention import SDPBackend

    from kernels import triton_attention as ta

    shapes = ATTN_GPU if GPU else ATTN_DRY
    backends = dict(sdpa_backends()) | {"efficient": SDPBackend.EFFICIENT_ATTENTION}
    goal = ">= 1.0x (>= 1.2x at seq >= 2048)"
    for hd in shapes["head_dims"]:
        for t in shapes["seqs"]:
            b, h = max(shapes["tokens"] // t, 1), shapes["model_dim"] // hd
            g = torch.Generator().manual_seed(t + hd)
            q, k, v, do = (torch.randn(b, h, t, hd, generator=g).to(DEVICE, DTYPE) for _ in range(4))
            lengths = torch.randint(t // 2, t + 1, (b,), generator=g)
            keep = (torch.arange(t)[None, :] < lengths[:, None]).to(DEVICE)  # (B, T): DNABERT-style tails
            for variant in ("causal", "padded"):
                causal = variant == "causal"
                mask = None if causal else keep
                case = f"hd {hd}, seq {t}, {variant}, batch {b} x {h} heads"
                ours = functools.partial(ta.flash_attention, causal=causal, key_padding_mask=mask)
                sdpa = functools.partial(
                    F.scaled_dot_product_attention,
                    is_causal=causal,
                    attn_mask=None if causal else keep[:, None, None, :],
                )
                for mode in ("fwd", "fwd+bwd"):
                    if out_of_time(deadline):
                        yield row(f"attention {mode}", case, None, "TFLOP/s", status="skipped", goal=goal)
                        continue
                    flop = attention_flops(b, h, t, hd, causal, mode)
                    measure = functools.partial(
                        _attention_row, mode, case, goal, (q, k, v, do), ours, sdpa, backends, flop
                    )
                    yield guarded(f"attention {mode}", case, measure)


def _attention_row(mode, case, goal, tensors, ours, sdpa, backends, flop) -> dict:
    """One row: ours, SDPA flash, cuDNN and (padded rows only) memory-efficient, with ours' forward output
    checked against the baseline's."""
    tflops = {"ours": _attention_tflops(ours, tensors, mode, None, flop)}
    for name, backend in backends.items():
        if name != "efficient" or "padded" in case:
            tflops[name] = _attention_tflops(sdpa, tensors, mode, backend, flop)
    base = "flash"
    if tflops["flash"] is None:  # it takes no mask (on a GPU): the fastest backend that does
        base = max((n for n in tflops if n != "ours"), key=lambda n: tflops[n] or 0.0)
    others = [f"{n} {_fmt(x)}" for n, x in tflops.items() if n not in ("ours", base) and x is not None]
    note = ", ".join(others) + (" TFLOP/s" if others else "")
    status = "ok"
    if mode == "fwd" and tflops[base] is not None:  # ours against the baseline's output: a cheap check
        q, k, v, _ = tensors
        err = (ours(q, k, v).float() - _under(backends[base], sdpa, q, k, v).float()).abs().max().item()
        bound = 5e-2 if q.dtype == torch.bfloat16 else 1e-4
        note += f"{'; ' if note else ''}largest difference from {base}: {err:.1e}"
        status = "ok" if err <= bound else "mismatch"
    return row(f"attention {mode}", case, tflops["ours"], "TFLOP/s", baseline=tflops[base],
               baseline_name=f"SDPA {base}", goal=goal, note=note, status=status)  # fmt: skip


def _under(backend, fn, *args):
    from torch.nn.attention import sdpa_kernel

    if backend is None:
        return fn(*args)
    with sdpa_kernel(backend):
        return fn(*args)


def _attention_tflops(fn, tensors, mode: str, backend, flop: float) -> float | None:
    """TFLOP/s of fn's forward or forward+backward; None when an SDPA backend refuses the inputs."""
    q, k, v, do = tensors
    grad = mode != "fwd"
    qg, kg, vg = (x.detach().requires_grad_(grad) for x in (q, k, v))

    def step():
        out = _under(backend, fn, qg, kg, vg)
        if grad:
            out.backward(do)

    try:
        ms = bench_ms(step, grads=(qg, kg, vg) if grad else ())
    except RuntimeError as err:  # "No available kernel": this backend does not take these inputs
        if backend is None:
            raise
        if GPU:
            torch.cuda.synchronize()
        print(f"  (SDPA {backend}: {str(err).splitlines()[0][:120]})", file=sys.stderr)
        return None
    return flop / (ms * 1e-3) / 1e12


# ------------------------------------------------------------------------------------ k-mer embedding


def kmer_rows(deadline: float) -> Iterator[dict]:
    """Forward: ours' effective bandwidth against a same-run copy of the output. Forward+backward: ours'
    tokens/s against the faster torch path (ids + F.embedding, or the all-torch path from the bytes)."""
    import bench_kmer_embedding as bk

    sizes = KMER_GPU if GPU else KMER_DRY
    for name in bk.TOKENIZERS:
        for d in sizes["d_models"]:
            case = f"{name}, d_model {d}, {sizes['tokens']:,} tokens"
            if out_of_time(deadline):
                for mode in ("fwd", "fwd+bwd"):
                    yield row(f"k-mer embedding {mode}", case, None, "", status="skipped")
                continue
            try:
                r = bk.measure_case(name, d, device=DEVICE, dtype=DTYPE, tokens=sizes["tokens"],
                                    rows=sizes["rows"], timer=bench_ms)  # fmt: skip
            except Exception as err:  # noqa: BLE001 (reported in the table; the other cases still run)
                for mode in ("fwd", "fwd+bwd"):
                    yield failed(f"k-mer embedding {mode}", case, err)
                continue
            ms = {label: r.get(("fwd", label)) for label in bk.paths(name)}
            gbs = r["moved"] / (ms["ours"] * 1e-3) / 1e9
            note = f"ms: ours {ms['ours']:.3g}, ids+F.embedding {ms['ids+F.embedding']:.3g}, "
            note += f"torch-from-bytes {ms['torch-from-bytes']:.3g}"
            yield row("k-mer embedding fwd", case, gbs, "GB/s", baseline=r["copy"], baseline_name="copy_ of the output",
                      goal=">= 0.75x copy", note=note)  # fmt: skip
            ms = {label: r[("fwd+bwd", label)] for label in bk.paths(name)}
            faster = min(("ids+F.embedding", "torch-from-bytes"), key=ms.get)
            mtok = sizes["tokens"] / 1e6 * 1e3
            note = f"ms: ours {ms['ours']:.3g}, deterministic bwd {ms['ours-det']:.3g} "
            note += f"({ms[faster] / ms['ours-det']:.2f}x), ids+F.embedding {ms['ids+F.embedding']:.3g}, "
            note += f"torch-from-bytes {ms['torch-from-bytes']:.3g}"
            yield row("k-mer embedding fwd+bwd", case, mtok / ms["ours"], "M tokens/s",
                      baseline=mtok / ms[faster], baseline_name=faster, goal=">= 1.3x", note=note)  # fmt: skip
            if GPU:
                torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------- tests


def gpu_test_files() -> list[str]:
    """Test files holding GPU-marked tests (found by their marker, so new ones join by themselves)."""
    return sorted(
        str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py") if "mark.gpu" in p.read_text()
    )


class _Outcomes:
    """A pytest plugin counting outcomes; after every test it calls ``progress(row)`` so that a run cut
    short by the time limit still reports what ran."""

    def __init__(self, case: str, progress: Callable[[dict], None], deadline: float) -> None:
        self.case, self.progress, self.deadline = case, progress, deadline
        self.counts = {"passed": 0, "failed": 0, "skipped": 0}
        self.failed: list[str] = []
        self.session = None
        self.stopped = False

    def pytest_sessionstart(self, session) -> None:
        self.session = session

    def pytest_runtest_logreport(self, report) -> None:
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            self.counts[report.outcome] += 1
        if report.outcome == "failed" and report.nodeid not in self.failed:
            self.failed.append(report.nodeid)
        self.progress(self.row("timeout"))
        if out_of_time(self.deadline) and self.session is not None:  # stop after this test, with a summary
            self.session.shouldstop = "the time budget of ./dev gpu ran out"
            self.stopped = True

    def row(self, status: str) -> dict:
        c = self.counts
        note = f"{c['failed']} failed, {c['skipped']} skipped"
        if self.failed:
            note += ": " + ", ".join(n.split("::")[-1] for n in self.failed[:8])
        return row("GPU tests", self.case, c["passed"], "passed", goal="all pass", note=note, status=status)


def test_rows(deadline: float, progress: Callable[[dict], None]) -> Iterator[dict]:
    """pytest -m gpu over the files that hold GPU tests, in this process (after the import guard)."""
    import os

    import pytest

    files = gpu_test_files()
    plugin = _Outcomes(" ".join(files) + " -m gpu", progress, deadline)
    os.chdir(REPO)
    code = pytest.main([*files, "-m", "gpu", "-q", "-p", "no:cacheprovider"], plugins=[plugin])
    ok = code in (0, 5) and not plugin.failed  # 5: nothing selected
    done = plugin.row("ok" if ok else "failed")
    if not ok:
        done["note"] += f"; pytest exit code {int(code)}"
    if plugin.stopped:
        done["status"] = "timeout" if not plugin.failed else "failed"
        done["note"] = "stopped when the time ran out; " + done["note"]
    yield done


def _fmt(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"
