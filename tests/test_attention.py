"""Triton flash attention (kernels/triton_attention.py) against the torch reference, and its dispatch.

Without a GPU the kernels run through Triton's CPU interpreter on CPU tensors (conftest sets
TRITON_INTERPRET=1); with one the same cases run compiled on CUDA tensors, plus the GPU-only ones.
As in flash-attention's tests, the error of ours against a high-precision reference may be at most
twice PyTorch's own error in the same dtype, plus a small dtype-dependent atol. The reference is
fp32 for fp16/bf16 and fp64 for fp32 (an fp32 reference cannot see fp32 error).
The numeric tests call the kernel directly, so a dispatch bug cannot turn them into ref-vs-ref.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from kernels.attention import attention_lse_ref, attention_ref, fused_attention
from tests.conftest import REPO
from tests.helpers import kernel_log

HAS_GPU = torch.cuda.is_available()
DEVICE = "cuda" if HAS_GPU else "cpu"

if not HAS_GPU and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip(
        "no GPU and TRITON_INTERPRET is not 1: the kernels cannot run (conftest sets it unless told otherwise)",
        allow_module_level=True,
    )

from kernels import triton_attention as ta  # noqa: E402  (after the interpreter check above)

# fp32 is an interpreter-only case: on a GPU the dispatcher sends fp32 to SDPA (tl.dot would use tf32).
DTYPES = [torch.float16, torch.bfloat16] + ([] if HAS_GPU else [torch.float32])


@pytest.fixture(autouse=True)
def _fixed_gpu_blocks(monkeypatch):
    # Autotuning compiles every config of every (head_dim, causal, mask, dtype) variant: minutes per
    # test run. The tests check correctness at the default blocks; bench/ tunes.
    monkeypatch.setenv("DNAFM_ATTENTION_AUTOTUNE", "0")


# Slack per unit of magnitude: one ulp for fp16/bf16, where twice PyTorch's error dominates anyway;
# eight for fp32, where PyTorch's error is a few ulps and another summation order (the kernel's delta vs
# dP) leaves rounding noise where PyTorch gets an exact 0 (e.g. dq at seq 1, where P = 1).
ATOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def atol_for(reference: torch.Tensor, dtype: torch.dtype) -> float:
    """ATOL at the reference's largest magnitude (at least 1): errors scale with the values."""
    return ATOL[dtype] * max(1.0, reference.abs().max().item())


def inputs(b, h, t, hd, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v, do = (torch.randn(b, h, t, hd, generator=g).to(DEVICE, dtype) for _ in range(4))
    return q, k, v, do


def run(fn, q, k, v, do, **kw):
    """Output and (dq, dk, dv) of fn on fresh leaves."""
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = fn(q, k, v, **kw)
    out.backward(do)
    return out.detach(), q.grad, k.grad, v.grad


def check_against_reference(q, k, v, do, **kw):
    """ours, pytorch-in-dtype and the high-precision reference; assert the 2x + atol bound on each."""
    dtype = q.dtype
    gold_dtype = torch.float64 if dtype == torch.float32 else torch.float32
    gold = run(attention_ref, *(x.to(gold_dtype) for x in (q, k, v, do)), **kw)
    torch_own = run(attention_ref, q, k, v, do, **kw)
    ours = run(ta.flash_attention, q, k, v, do, **kw)
    for name, o, p, g in zip(("out", "dq", "dk", "dv"), ours, torch_own, gold, strict=True):
        assert o.dtype == dtype and o.shape == g.shape
        assert torch.isfinite(o).all(), f"{name}: non-finite values"
        err = (o.double() - g.double()).abs().max().item()
        torch_err = (p.double() - g.double()).abs().max().item()
        atol = atol_for(g, dtype)
        assert err <= 2 * torch_err + atol, (
            f"{name}: max error {err:.3g} > 2 x PyTorch's {torch_err:.3g} + {atol:.3g}"
        )
    return ours


# (batch, heads, seq, head_dim): one token; a single partial block; several full blocks + a partial
# one; many blocks. Batch x heads stays small: the interpreter runs every program in Python.
SHAPES = [(2, 3, 1, 32), (2, 2, 17, 64), (1, 2, 129, 128), (1, 1, 300, 32)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_and_grads_match_reference(shape, causal, dtype):
    check_against_reference(*inputs(*shape, dtype), causal=causal)


def padding_mask(b, t, seed=0):
    """(b, t) True = keep. Row 0: every key padded; row 1: right padding (BERT batches); row 2: left
    padding and holes, so that causal rows before the first real key see nothing."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.ones(b, t, dtype=torch.bool)
    keep[0] = False
    if b > 1:
        keep[1, (2 * t) // 3 :] = False
    if b > 2:
        keep[2] = torch.rand(t, generator=g) > 0.3
        keep[2, : t // 4] = False
    return keep.to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("shape", [(3, 2, 17, 32), (3, 1, 129, 64)], ids=lambda s: "x".join(map(str, s)))
def test_padding_mask_incl_fully_padded_rows(shape, causal, dtype):
    b, h, t, hd = shape
    q, k, v, do = inputs(*shape, dtype, seed=1)
    keep = padding_mask(b, t)
    out, dq, dk, dv = check_against_reference(q, k, v, do, causal=causal, key_padding_mask=keep)

    visible = keep[:, None, None, :].expand(b, 1, t, t)
    if causal:
        visible = visible & torch.ones(t, t, dtype=torch.bool, device=DEVICE).tril()
    empty_rows = ~visible.any(-1)  # (b, 1, t): query rows with no key to attend to
    assert empty_rows[0].all() and (not causal or empty_rows[2, 0, : t // 4].all())
    assert (out.masked_select(empty_rows[..., None]) == 0).all()  # zeros, not NaN
    assert (dq.masked_select(empty_rows[..., None]) == 0).all()
    padded = ~keep[:, None, :, None]  # padded keys get no gradient at all
    assert (dk.masked_select(padded) == 0).all() and (dv.masked_select(padded) == 0).all()

    _, lse = ta.flash_attention_with_lse(q, k, v, causal=causal, key_padding_mask=keep)
    lse_ref = attention_lse_ref(q, k, causal=causal, key_padding_mask=keep)
    assert lse.dtype == torch.float32 and lse.shape == (b, h, t)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(lse_ref)) and not lse.isnan().any()
    finite = torch.isfinite(lse_ref)
    torch.testing.assert_close(lse[finite], lse_ref[finite], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(HAS_GPU, reason="interpreter block sizes; on a GPU the tuned configs run instead")
@pytest.mark.parametrize(
    "blocks",
    [  # key blocks wider than query blocks (the forward's diagonal then starts left of the block),
        # and the extreme ratios the GPU search spaces allow
        {"fwd": (32, 64), "dkdv": (16, 64), "dq": (64, 16), "pre": 16},
        {"fwd": (16, 16), "dkdv": (16, 16), "dq": (16, 16), "pre": 128},
    ],
    ids=["wide-keys", "square16"],
)
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_other_block_shapes(blocks, causal, monkeypatch):
    monkeypatch.setattr(ta, "INTERPRETER_BLOCKS", blocks)
    q, k, v, do = inputs(2, 1, 83, 32, torch.float32, seed=9)
    check_against_reference(q, k, v, do, causal=causal, key_padding_mask=padding_mask(2, 83))


def test_lse_without_mask_matches_logsumexp():
    q, k, _, _ = inputs(2, 2, 70, 64, torch.float16, seed=2)
    for causal in (False, True):
        _, lse = ta.flash_attention_with_lse(q, k, k, causal=causal, sm_scale=0.2)
        lse_ref = attention_lse_ref(q, k, causal=causal, sm_scale=0.2)
        torch.testing.assert_close(lse, lse_ref, rtol=1e-5, atol=1e-5)


def test_model_layout_strides_and_custom_scale():
    """The models pass (B, T, H, hd).transpose(1, 2) views; dO arrives in any layout."""
    b, t, h, hd = 2, 40, 3, 64
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(b, t, 3 * h * hd, generator=g).to(DEVICE, torch.float16)
    q, k, v = (z.view(b, t, h, hd).transpose(1, 2) for z in qkv.split(h * hd, dim=2))
    do = torch.randn(b, t, h, hd, generator=g).to(DEVICE, torch.float16).transpose(1, 2)
    assert not q.is_contiguous() and not do.is_contiguous()
    keep = padding_mask(b, t)
    keep[0, :5] = True  # some real keys in row 0 too
    ours = check_against_reference(q, k, v, do, causal=True, key_padding_mask=keep, sm_scale=0.3)
    assert ours[0].shape == (b, h, t, hd)


def test_unsupported_inputs_are_clear_errors():
    q = torch.randn(1, 2, 8, 48, device=DEVICE, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"head_dim 48 is not supported \(32, 64 or 128\)"):
        ta.flash_attention(q, q, q, causal=False)
    q = torch.randn(1, 2, 8, 32, device=DEVICE, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"key_padding_mask must be \(batch, seq\) = \(1, 8\)"):
        ta.flash_attention(q, q, q, causal=False, key_padding_mask=torch.ones(1, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="one shape"):
        ta.flash_attention(q, q[:, :, :5], q[:, :, :5], causal=False)


# ---------------------------------------------------------------- dispatch


@pytest.mark.skipif(HAS_GPU, reason="the kernels are compiled for the GPU in this process, not interpreted")
def test_cpu_tensors_run_the_kernel_in_the_interpreter_when_asked(caplog):
    q, k, v, _ = inputs(1, 2, 21, 32, torch.float32, seed=4)
    keep = torch.rand(1, 21, generator=torch.Generator().manual_seed(0)) > 0.2
    out = {}
    log = kernel_log(
        caplog, lambda: out.update(y=fused_attention(q, k, v, causal=True, key_padding_mask=keep))
    )
    assert "kernels.attention -> Triton flash-attention (interpreter) (cpu tensors, torch.float32)" in log
    assert torch.equal(out["y"], ta.flash_attention(q, k, v, causal=True, key_padding_mask=keep))


def test_cpu_without_interpreter_uses_torch(caplog, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v, _ = inputs(1, 2, 9, 32, torch.float32)
    q, k, v = q.cpu(), k.cpu(), v.cpu()
    out = {}
    log = kernel_log(caplog, lambda: out.update(y=fused_attention(q, k, v, causal=True)))
    assert "-> torch SDPA (cpu tensors and TRITON_INTERPRET is not set)" in log
    torch.testing.assert_close(out["y"], attention_ref(q, k, v, causal=True))


def test_head_dim_the_kernel_lacks_falls_back_to_torch_and_says_why(caplog):
    q = torch.randn(2, 2, 9, 8, device=DEVICE)  # the tiny test models' head_dim
    keep = torch.ones(2, 9, dtype=torch.bool, device=DEVICE)
    keep[1, 6:] = False
    log = kernel_log(caplog, lambda: fused_attention(q, q, q, causal=True))
    assert "-> torch SDPA (Triton kernel: head_dim 8 is not supported (32, 64 or 128)" in log
    log = kernel_log(caplog, lambda: fused_attention(q, q, q, causal=False, key_padding_mask=keep))
    assert "-> torch reference (masked) (Triton kernel: head_dim 8" in log


def test_importing_kernels_needs_no_gpu_and_defers_triton():
    """A plain process (no TRITON_INTERPRET, no visible GPU): importing kernels and running the op on
    CPU never defines a Triton kernel; defining them for the GPU later needs no driver; setting the
    interpreter flag after that is refused with a reason instead of failing at launch."""
    code = """
import logging, os, sys
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
import torch, kernels
q = torch.randn(1, 2, 9, 32)
kernels.fused_attention(q, q, q, causal=True)
assert not {"kernels.triton_attention", "kernels.triton_attention_kernels"} & set(sys.modules)
import kernels.triton_attention as ta
assert not ta.INTERPRETED
os.environ["TRITON_INTERPRET"] = "1"
kernels.fused_attention(q, q, q, causal=False, key_padding_mask=torch.ones(1, 9, dtype=torch.bool))
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "-> torch SDPA (cpu tensors and TRITON_INTERPRET is not set)" in proc.stdout
    assert "-> torch reference (masked) (TRITON_INTERPRET=1 was set after the Triton kernels" in proc.stdout


@pytest.mark.skipif(HAS_GPU, reason="CPU interpreter case; on a GPU the model runs on CPU through torch")
def test_dnagpt_runs_through_the_kernel(caplog, monkeypatch):
    """DNAGPT (head_dim 32) forward and backward through the interpreted kernel == the torch path."""
    from trainer.models.gpt import DNAGPT, GPTConfig

    torch.manual_seed(0)
    model = DNAGPT(GPTConfig(vocab_size=64, max_seq_len=32, n_layer=2, n_head=2, d_model=64))
    ids = torch.randint(0, 64, (2, 21))

    def loss_and_grads():
        model.zero_grad()
        h = model(ids)
        h.pow(2).mean().backward()
        return h.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    out = {}
    log = kernel_log(caplog, lambda: out.update(kernel=loss_and_grads()))
    assert "Triton flash-attention (interpreter)" in log
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    h_ref, grads_ref = loss_and_grads()
    h, grads = out["kernel"]
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)
    assert grads.keys() == grads_ref.keys() and "blocks.0.attn.qkv.weight" in grads
    for name, g in grads.items():
        torch.testing.assert_close(g, grads_ref[name], rtol=1e-4, atol=1e-6, msg=name)


# ---------------------------------------------------------------- GPU only


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("shape", [(2, 4, 1000, 64), (2, 4, 2048, 128), (3, 2, 777, 32)], ids=str)
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "padded"])
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
def test_gpu_long_sequences(shape, causal, dtype, masked):
    q, k, v, do = inputs(*shape, dtype, seed=5)
    keep = padding_mask(shape[0], shape[2]) if masked else None
    check_against_reference(q, k, v, do, causal=causal, key_padding_mask=keep)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
def test_gpu_dispatch(caplog):
    q = torch.randn(1, 2, 64, 64, device="cuda", dtype=torch.bfloat16)
    log = kernel_log(caplog, lambda: fused_attention(q, q, q, causal=True))
    assert "-> Triton flash-attention (GPU) (cuda tensors, torch.bfloat16)" in log
    log = kernel_log(caplog, lambda: fused_attention(q.float(), q.float(), q.float(), causal=True))
    assert "-> torch SDPA (Triton kernel: dtype torch.float32 is not supported" in log


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
def test_gpu_memory_is_linear_in_seq_len():
    """At T = 16k one T x T fp32 matrix is 1 GiB; fwd + bwd must stay within a few MiB of O(T) tensors."""
    q, k, v, do = inputs(1, 1, 16384, 64, torch.bfloat16, seed=6)
    q.requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    ta.flash_attention(q, k, v, causal=False).backward(do)
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base < 64 * 2**20


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
def test_gpu_benchmark_shape_sanity():
    """At a benchmark shape (bf16, T=4096, hd=128): correct against SDPA-flash's own error, and not
    pathologically slow (>= 0.5x the flash backend; bench/bench_attention.py measures properly)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from triton.testing import do_bench

    q, k, v, _ = inputs(1, 4, 4096, 128, torch.bfloat16, seed=7)
    gold = attention_ref(q.float(), k.float(), v.float(), causal=True)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        flash = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    ours = ta.flash_attention(q, k, v, causal=True)
    flash_err = (flash.float() - gold).abs().max().item()
    assert (ours.float() - gold).abs().max().item() <= 2 * flash_err + atol_for(gold, torch.bfloat16)

    q, k, v, _ = inputs(4, 16, 4096, 128, torch.bfloat16, seed=8)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        t_flash = do_bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True))
    t_ours = do_bench(lambda: ta.flash_attention(q, k, v, causal=True))
    assert t_ours <= 2 * t_flash, f"ours {t_ours:.3f} ms vs flash {t_flash:.3f} ms"
