"""Fused k-mer embedding (kernels/kmer_embedding.py, kernels/triton_kmer_embedding.py) against the tokenizer.

The ground truth is ``get_tokenizer(name).encode`` on each row, assembled into the sample layout in
plain Python; both the Triton kernels and the torch reference are checked against it. Without a GPU the
kernels run through Triton's CPU interpreter (conftest sets TRITON_INTERPRET=1), so shapes stay small;
with one the same cases run on CUDA tensors, plus the GPU-only ones. The numeric tests call the kernel
module directly, so a dispatch bug cannot turn them into reference-vs-reference.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from datapipe.shards.format import Sample
from datapipe.tokenizers import TOKENIZER_NAMES, get_tokenizer
from kernels import kmer_embedding, kmer_embedding_ref, kmer_ids, kmer_ids_ref
from kernels.kmer_embedding import kmer_tables
from tests.conftest import REPO
from tests.helpers import kernel_log
from trainer.masking import MaskingConfig

HAS_GPU = torch.cuda.is_available()
DEVICE = "cuda" if HAS_GPU else "cpu"

if not HAS_GPU and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip(
        "no GPU and TRITON_INTERPRET is not 1: the kernels cannot run (conftest sets it unless told otherwise)",
        allow_module_level=True,
    )

from kernels import triton_kmer_embedding as tk  # noqa: E402  (after the interpreter check above)

GPT_NAMES = [n for n in TOKENIZER_NAMES if n.startswith("dnagpt")]
BASES = np.frombuffer(b"ACGTNacgtn", np.uint8)


def random_bases(b: int, length: int, seed: int) -> np.ndarray:
    """(b, length) uint8 rows that cover what the tokenizer distinguishes: row 0 upper-case ACGT;
    row 1 mixed case with N runs; row 2 one-in-three garbage bytes (any of 0..255); row 3+ mixed."""
    rng = np.random.default_rng(seed)
    x = rng.choice(BASES, size=(b, length)).astype(np.uint8)
    x[0] = rng.choice(np.frombuffer(b"ACGT", np.uint8), size=length)
    if b > 1 and length > 4:
        x[1, 1 : 1 + length // 3] = ord("N")
        x[1, -3:] = ord("n")
    if b > 2:
        garbage = rng.random(length) < 1 / 3
        x[2, garbage] = rng.integers(0, 256, size=int(garbage.sum()))
    return x


def layout_truth(name, bases, *, num_bases=None, reverse=None, prefix=None, suffix=None, replace=None):
    """(B, T_out) int64 ids in the sample layout, from ``encode`` on each row: the specification."""
    tok = get_tokenizer(name)
    b, length = bases.shape
    n_max = -(-length // tok.k) if name in GPT_NAMES else max(length - tok.k + 1, 0)
    p = 0 if prefix is None else prefix.shape[1]
    s = 0 if suffix is None else suffix.shape[1]
    out = np.full((b, p + n_max + s), tok.pad_id, np.int64)
    for i in range(b):
        nb = length if num_bases is None else int(num_bases[i])
        kmers = tok.encode(bases[i, :nb].copy())
        if reverse is not None and reverse[i]:
            kmers = kmers[::-1]
        row = np.concatenate(
            [[] if prefix is None else prefix[i], kmers, [] if suffix is None else suffix[i]]
        )
        out[i, : len(row)] = row
    if replace is not None:
        out = np.where(replace >= 0, replace, out)
    return torch.from_numpy(out)


def on_device(*xs):
    return [None if x is None else torch.as_tensor(x).to(DEVICE) for x in xs]


# ---------------------------------------------------------------- ids


@pytest.mark.parametrize("name", TOKENIZER_NAMES)
def test_ids_equal_the_tokenizer(name):
    """Odd lengths (shorter than k, one k-mer, tails of 1..5 bases), lower case, N runs, garbage bytes."""
    for length in (1, 3, 5, 6, 7, 13, 38, 61):
        bases = random_bases(4, length, seed=length)
        truth = layout_truth(name, bases)
        (x,) = on_device(bases)
        assert torch.equal(tk.kmer_ids(x, tokenizer=name).cpu(), truth), f"kernel, length {length}"
        assert torch.equal(kmer_ids_ref(x, tokenizer=name).cpu(), truth), f"reference, length {length}"


@pytest.mark.parametrize("name", ["dnagpt-6mer", "dnagpt-1to6mer", "dnabert-4", "dnabert-6"])
def test_every_byte_value_at_every_window_offset(name):
    """Each of the 256 byte values once at each offset inside a 6-base window, among valid bases: only
    NAGCT / ACGT in either case may give a k-mer id, everything else must be unknown where encode says so."""
    rows = np.frombuffer(b"ACGTACGTACGTA", np.uint8)[None].repeat(256 * 6, 0).copy()  # (1536, 13)
    rows[np.arange(rows.shape[0]), 1 + np.arange(rows.shape[0]) % 6] = np.arange(256).repeat(6)
    truth = layout_truth(name, rows)
    (x,) = on_device(rows)
    assert torch.equal(tk.kmer_ids(x, tokenizer=name).cpu(), truth)
    assert torch.equal(kmer_ids_ref(x, tokenizer=name).cpu(), truth)


def test_dnabert_ids_follow_the_vocab_file_not_product_order():
    """The vocab file's order is not itertools.product('ACGT'): the table must come from the file."""
    tok = get_tokenizer("dnabert-3")
    kmers = ["AAA", "AAC", "TTT", "GCA"]
    assert [tok.token_to_id(k) for k in kmers] != [
        5 + int(k.translate(str.maketrans("ACGT", "0123")), 4) for k in kmers
    ]
    (x,) = on_device(np.frombuffer("".join(kmers).encode(), np.uint8)[None].copy())
    ids = tk.kmer_ids(x, tokenizer="dnabert-3")[0, ::3].tolist()
    assert ids == [tok.token_to_id(k) for k in kmers]


@pytest.mark.parametrize("name", TOKENIZER_NAMES)
def test_sample_layout_equals_the_template(name):
    """Per-row num_bases (each row's own DNAGPT tail), reversed rows, prefix/suffix reserved ids, and
    replace_ids; rows with no k-mer at all (num_bases 0, or < k for DNABERT)."""
    tok = get_tokenizer(name)
    bases = random_bases(5, 29, seed=1)
    num_bases = np.array([29, 0, 13, 4, 23])
    reverse = np.array([False, True, True, False, True])
    if name in GPT_NAMES:
        prefix = np.array([[21], [22], [23], [33], [21]])  # species
        suffix = np.array([[14, 0, 18]] * 4 + [[14, 1, 18]])  # <=> <0>|<1> <M>
    else:
        prefix, suffix = np.full((5, 1), tok.cls_id), np.full((5, 1), tok.sep_id)
    rng = np.random.default_rng(2)
    t_out = 1 + (-(-29 // 6) if name in GPT_NAMES else 29 - tok.k + 1) + suffix.shape[1]
    replace = np.where(rng.random((5, t_out)) < 0.2, rng.integers(0, tok.vocab_size, (5, t_out)), -1)
    for kw in (
        dict(num_bases=num_bases),
        dict(num_bases=num_bases, reverse=reverse, prefix=prefix, suffix=suffix),
        dict(num_bases=num_bases, reverse=reverse, prefix=prefix, suffix=suffix, replace=replace),
    ):
        truth = layout_truth(name, bases, **kw)
        args = dict(zip(("num_bases", "reverse", "prefix_ids", "suffix_ids", "replace_ids"), on_device(
            *(kw.get(k) for k in ("num_bases", "reverse", "prefix", "suffix", "replace"))
        ), strict=True))  # fmt: skip
        args = {k: v for k, v in args.items() if v is not None}
        (x,) = on_device(bases)
        assert torch.equal(tk.kmer_ids(x, tokenizer=name, **args).cpu(), truth), sorted(kw)
        assert torch.equal(kmer_ids_ref(x, tokenizer=name, **args).cpu(), truth), sorted(kw)


def test_layout_reproduces_the_dnagpt_sample_builder():
    """prefix = species, suffix = <=> answer <M>, reverse = the order task's flag: the builder's input_ids."""
    from trainer.samples import GptSampleBuilder

    tok = get_tokenizer("dnagpt-1to6mer")
    bases = random_bases(4, 47, seed=3)
    num_bases = np.array([47, 30, 11, 45])
    samples = [
        Sample(
            key=f"s{i}", ids=tok.encode(bases[i, :nb].copy()).astype(np.uint16), meta={"token": sp, "gc": 0.4}
        )
        for i, (nb, sp) in enumerate(zip(num_bases, "RIKR", strict=True))
    ]
    builder = GptSampleBuilder(tokenizer=tok, max_seq_len=64)
    batch = builder(samples, np.random.default_rng(7))
    reverse = np.random.default_rng(7).random(4) < builder.reverse_prob  # the builder's draw
    assert reverse.any() and not reverse.all()
    species = np.array([[tok.reserved_id(s.meta["token"])] for s in samples])
    suffix = np.array([[tok.EQ_ID, tok.reserved_id(str(int(r))), tok.M_ID] for r in reverse])
    x, nb, rev, pre, suf = on_device(bases, num_bases, reverse, species, suffix)
    ids = tk.kmer_ids(x, tokenizer=tok.name, num_bases=nb, reverse=rev, prefix_ids=pre, suffix_ids=suf)
    assert torch.equal(ids.cpu(), batch["input_ids"])


def test_replace_ids_carry_dnabert_masking():
    """The DNABERT builder's masked batch = [CLS]/[SEP] around the bases' k-mers, with replace_ids set to
    the builder's input at its masked positions (and -1 elsewhere)."""
    from trainer.bert_samples import IGNORE, BertSampleBuilder

    tok = get_tokenizer("dnabert-6")
    bases = random_bases(3, 40, seed=4)
    num_bases = np.array([40, 25, 31])
    samples = [
        Sample(key=f"s{i}", ids=tok.encode(bases[i, :nb].copy()).astype(np.uint16), meta={})
        for i, nb in enumerate(num_bases)
    ]
    builder = BertSampleBuilder(tokenizer=tok, max_seq_len=64, masking=MaskingConfig(mask_rate=0.3))
    batch = builder(samples, np.random.default_rng(5))
    masked = batch["mlm_labels"] != IGNORE
    assert masked.any()
    replace = torch.where(masked, batch["input_ids"], -1)
    x, nb, pre, suf, rep = on_device(
        bases, num_bases, np.full((3, 1), tok.cls_id), np.full((3, 1), tok.sep_id), replace
    )
    ids = tk.kmer_ids(x, tokenizer=tok.name, num_bases=nb, prefix_ids=pre, suffix_ids=suf, replace_ids=rep)
    assert torch.equal(ids.cpu(), batch["input_ids"])
    plain = tk.kmer_ids(x, tokenizer=tok.name, num_bases=nb, prefix_ids=pre, suffix_ids=suf)
    assert torch.equal(plain.cpu()[masked], batch["mlm_labels"][masked])  # labels: the ids without replace


# ---------------------------------------------------------------- values and gradients


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", ["dnagpt-1to6mer", "dnabert-5"])
def test_forward_is_the_exact_row_gather(name, dtype):
    """A gather copies rows: equal bit for bit, in every dtype; D = 72 spans several partial column blocks."""
    tok = get_tokenizer(name)
    bases = random_bases(3, 31, seed=6)
    num_bases = np.array([31, 17, 2])
    prefix = np.array([[21], [25], [30]]) if name in GPT_NAMES else np.full((3, 1), tok.cls_id)
    truth = layout_truth(name, bases, num_bases=num_bases, prefix=prefix)
    weight = torch.randn(tok.vocab_size, 72, generator=torch.Generator().manual_seed(0)).to(DEVICE, dtype)
    x, nb, pre = on_device(bases, num_bases, prefix)
    out, ids = tk.kmer_embedding(x, weight, tokenizer=name, num_bases=nb, prefix_ids=pre)
    assert out.dtype == dtype and out.shape == (*truth.shape, 72)
    assert torch.equal(ids.long().cpu(), truth)
    assert torch.equal(out, weight[truth.to(DEVICE)])


def grad_case(name: str, seed: int = 8):
    """Bases with many repeated ids: poly-A rows and short rows (padding), so that the pad id and the
    poly-A k-mer occur more often than one deterministic-backward piece holds."""
    tok = get_tokenizer(name)
    bases = random_bases(6, 53, seed=seed)
    bases[3] = ord("A")
    bases[4, ::2] = ord("a")
    num_bases = np.array([53, 7, 0, 53, 40, 19])
    prefix = np.array([[21]] * 6) if name in GPT_NAMES else np.full((6, 1), tok.cls_id)
    truth = layout_truth(name, bases, num_bases=num_bases, prefix=prefix)
    if tk.INTERPRETED:  # a multi-piece id exists (on a GPU, CHUNK is 256: test_gpu_large_batches has them)
        assert torch.bincount(truth.flatten()).max() > tk.blocks()["CHUNK"]
    return bases, num_bases, prefix, truth


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("name", ["dnagpt-6mer", "dnabert-3", "dnabert-6"])
def test_grads_equal_F_embedding(name, deterministic):
    """fp32 weight.grad against F.embedding's backward on the tokenizer's ids; extra weight rows (a
    vocabulary padded to a multiple of 8) must get zero gradient."""
    tok = get_tokenizer(name)
    bases, num_bases, prefix, truth = grad_case(name)
    v = tok.vocab_size + 5
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(v, 40, generator=g).to(DEVICE).requires_grad_()
    dy = torch.randn(*truth.shape, 40, generator=g).to(DEVICE)
    x, nb, pre = on_device(bases, num_bases, prefix)
    out, _ = tk.kmer_embedding(
        x, weight, tokenizer=name, num_bases=nb, prefix_ids=pre, deterministic=deterministic
    )
    (ours,) = torch.autograd.grad(out, weight, dy)
    (theirs,) = torch.autograd.grad(F.embedding(truth.to(DEVICE), weight), weight, dy)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs)
    assert not ours[tok.vocab_size :].any()
    if deterministic:
        out, _ = tk.kmer_embedding(
            x, weight, tokenizer=name, num_bases=nb, prefix_ids=pre, deterministic=True
        )
        (again,) = torch.autograd.grad(out, weight, dy)
        assert torch.equal(again, ours)


def test_deterministic_sums_in_a_fixed_order_close_to_fp64():
    """Against an fp64 sum the deterministic backward's error is fp32 rounding of the sum, no more."""
    bases, num_bases, prefix, truth = grad_case("dnabert-4", seed=9)
    tok = get_tokenizer("dnabert-4")
    g = torch.Generator().manual_seed(2)
    weight = torch.randn(tok.vocab_size, 24, generator=g).to(DEVICE).requires_grad_()
    dy = torch.randn(*truth.shape, 24, generator=g).to(DEVICE)
    x, nb, pre = on_device(bases, num_bases, prefix)
    out, _ = tk.kmer_embedding(
        x, weight, tokenizer="dnabert-4", num_bases=nb, prefix_ids=pre, deterministic=True
    )
    (ours,) = torch.autograd.grad(out, weight, dy)
    gold = torch.zeros(tok.vocab_size, 24, dtype=torch.float64).index_add_(
        0, truth.flatten(), dy.cpu().double().reshape(-1, 24)
    )
    torch.testing.assert_close(ours.cpu().double(), gold, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- dispatch, public op, errors


@pytest.mark.skipif(HAS_GPU, reason="the kernels are compiled for the GPU in this process, not interpreted")
def test_public_op_runs_the_interpreter_and_matches_the_torch_path(caplog, monkeypatch):
    bases, num_bases, prefix, truth = grad_case("dnagpt-1to6mer")
    x, nb, pre = (torch.as_tensor(a) for a in (bases, num_bases, prefix))
    weight = torch.randn(get_tokenizer("dnagpt-1to6mer").vocab_size, 16, requires_grad=True)
    kw = dict(tokenizer="dnagpt-1to6mer", num_bases=nb, prefix_ids=pre)
    res = {}

    def run():
        res["out"], res["ids"] = kmer_embedding(x, weight, return_ids=True, **kw)
        res["ids_only"] = kmer_ids(x, **kw)

    log = kernel_log(caplog, run)
    assert "kernels.kmer_embedding -> Triton k-mer kernel (interpreter) (cpu tensors, torch.float32)" in log
    assert "kernels.kmer_ids -> Triton k-mer kernel (interpreter) (cpu tensors)" in log
    (grad,) = torch.autograd.grad(res["out"].sum(), weight)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    log = kernel_log(caplog, lambda: res.update(ref=kmer_embedding(x, weight, return_ids=True, **kw)))
    assert (
        "kernels.kmer_embedding -> torch reference (unfold + index) (cpu tensors and TRITON_INTERPRET is not set)"
        in log
    )
    ref_out, ref_ids = res["ref"]
    assert (
        torch.equal(res["ids"], truth) and torch.equal(ref_ids, truth) and torch.equal(res["ids_only"], truth)
    )
    assert torch.equal(res["out"], ref_out)
    (ref_grad,) = torch.autograd.grad(ref_out.sum(), weight)
    torch.testing.assert_close(grad, ref_grad)
    torch.testing.assert_close(kmer_embedding_ref(x, weight, **kw), ref_out)
    with pytest.raises(RuntimeError, match="impl 'triton' requested but the kernel cannot run: cpu tensors"):
        kmer_embedding(x, weight, impl="triton", **kw)


def test_weight_dtype_the_kernel_lacks_falls_back_to_torch(caplog):
    bases = torch.from_numpy(random_bases(2, 12, seed=0)).to(DEVICE)
    weight = torch.randn(69, 8, dtype=torch.float64, device=DEVICE)
    res = {}
    log = kernel_log(caplog, lambda: res.update(out=kmer_embedding(bases, weight, tokenizer="dnabert-3")))
    assert (
        "-> torch reference (unfold + index) (Triton kernel: weight dtype torch.float64 is not supported"
        in log
    )
    assert torch.equal(res["out"], weight[layout_truth("dnabert-3", bases.cpu().numpy()).to(DEVICE)])


def test_tables_are_built_once_per_tokenizer_and_device():
    a, b = kmer_tables("dnabert-6", DEVICE), kmer_tables("dnabert-6", DEVICE)
    assert a is b and a.window_ids.device.type == DEVICE
    assert kmer_tables("dnagpt-6mer", "cpu").window_ids.numel() == sum(6**w for w in range(1, 7))


@pytest.mark.parametrize(
    ("change", "message", "value_check"),
    [
        (dict(bases=torch.zeros(2, 12, dtype=torch.int64)), "bases must be a 2-D uint8 tensor", False),
        (dict(tokenizer="dnabert-7"), "unknown tokenizer 'dnabert-7'", False),
        (dict(weight=torch.zeros(68, 4)), "weight has 68 rows but dnabert-3 has 69 tokens", False),
        (dict(num_bases=torch.tensor([12, 13])), r"num_bases must lie in \[0, L=12\]", True),
        (dict(num_bases=torch.tensor([1.0, 2.0])), "num_bases must be an integer tensor", False),
        (dict(reverse=torch.tensor([0, 1])), "reverse must be a bool tensor", False),
        (dict(prefix_ids=torch.tensor([[2], [69]])), r"prefix_ids must lie in \[0, 69\)", True),
        (dict(suffix_ids=torch.tensor([3, 3])), r"suffix_ids must be \(batch=2, n\)", False),
        (dict(replace_ids=torch.full((2, 9), -1)), r"replace_ids must have shape \(2, 10\)", False),
    ],
    ids=["bases-dtype", "tokenizer", "weight-rows", "num-bases-range", "num-bases-dtype", "reverse-dtype",
         "prefix-range", "suffix-shape", "replace-shape"],
)  # fmt: skip
def test_bad_inputs_say_what_to_change(change, message, value_check):
    """Both paths raise one ValueError naming the argument; on CUDA value ranges are device asserts instead
    (a host check would synchronise), so those cases run on CPU tensors only."""
    args = dict(bases=torch.zeros(2, 12, dtype=torch.uint8), weight=torch.zeros(69, 4), tokenizer="dnabert-3")
    args.update(change)
    if HAS_GPU and not value_check:
        args = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    bases, weight = args.pop("bases"), args.pop("weight")
    for impl in ("torch",) if HAS_GPU and value_check else ("torch", "triton"):
        with pytest.raises(ValueError, match=message):
            kmer_embedding(bases, weight, impl=impl, **args)


def test_importing_kernels_defers_triton_and_datapipe():
    """A plain process on CPU: importing kernels imports neither the Triton module nor datapipe, and the op
    takes the torch reference and says so."""
    code = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
import torch, kernels
assert not {"kernels.triton_kmer_embedding", "datapipe.tokenizers"} & set(sys.modules)
x = torch.frombuffer(bytearray(b"ACGTNACGTA"), dtype=torch.uint8)[None]
print(kernels.kmer_ids(x, tokenizer="dnagpt-6mer").tolist())
assert "kernels.triton_kmer_embedding" not in sys.modules
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        "kmer_ids -> torch reference (unfold + index) (cpu tensors and TRITON_INTERPRET is not set)"
        in proc.stdout
    )
    assert str(get_tokenizer("dnagpt-6mer").encode(b"ACGTNACGTA").tolist()) in proc.stdout


# ---------------------------------------------------------------- GPU only


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("name", ["dnagpt-6mer", "dnagpt-1to6mer", "dnabert-6"])
def test_gpu_large_batches(name, dtype):
    """Benchmark-sized rows (B 16, 3,073 bases, d_model 768): forward exact, both backwards against
    F.embedding's in the same dtype (each may differ by the rounding of one fp32 sum cast to dtype)."""
    tok = get_tokenizer(name)
    bases = random_bases(16, 3073, seed=10)
    num_bases = np.random.default_rng(0).integers(0, 3074, 16)
    truth = layout_truth(name, bases, num_bases=num_bases).cuda()
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(tok.vocab_size, 768, generator=g).to("cuda", dtype).requires_grad_()
    dy = torch.randn(*truth.shape, 768, generator=g).to("cuda", dtype)
    x, nb = (torch.as_tensor(a).cuda() for a in (bases, num_bases))
    (theirs,) = torch.autograd.grad(F.embedding(truth, weight), weight, dy)
    for det in (False, True):
        out, ids = tk.kmer_embedding(x, weight, tokenizer=name, num_bases=nb, deterministic=det)
        assert torch.equal(ids.long(), truth) and torch.equal(out, weight[truth])
        (ours,) = torch.autograd.grad(out, weight, dy)
        tol = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
        torch.testing.assert_close(
            ours.float(), theirs.float(), rtol=tol, atol=tol * theirs.abs().max().item()
        )


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
def test_gpu_dispatch_and_determinism(caplog):
    bases, num_bases, prefix, truth = grad_case("dnabert-6")
    x, nb, pre = (torch.as_tensor(a).cuda() for a in (bases, num_bases, prefix))
    weight = torch.randn(4101, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    res = {}
    kw = dict(tokenizer="dnabert-6", num_bases=nb, prefix_ids=pre)
    log = kernel_log(caplog, lambda: res.update(out=kmer_embedding(x, weight, deterministic=True, **kw)))
    assert "-> Triton k-mer kernel (GPU) (cuda tensors, torch.bfloat16)" in log
    dy = torch.randn_like(res["out"])
    torch.use_deterministic_algorithms(True)  # every op of the deterministic backward must be allowed
    try:
        grads = [
            torch.autograd.grad(kmer_embedding(x, weight, deterministic=True, **kw), weight, dy)[0]
            for _ in range(3)
        ]
    finally:
        torch.use_deterministic_algorithms(False)
    assert all(torch.equal(grads[0], g) for g in grads[1:])
