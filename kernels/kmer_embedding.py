"""Fused k-mer embedding: raw sequence bytes in, token embeddings out (issue 7).

``kmer_embedding(bases, weight, tokenizer=...)`` equals ``weight[ids]`` where ``ids`` is what
``datapipe.tokenizers.get_tokenizer(tokenizer).encode`` gives for each row of ``bases``; the ids are
computed inside the op, so a loader can ship 1 byte per base instead of token ids. ``kmer_ids`` gives
the ids alone (same logic, same kernel), for labels and tests.

How the ids are computed (kernel and reference alike). Two tables are built on the host from the
tokenizer's vocabulary, once per (tokenizer, device), and cached (``kmer_tables``):

- ``byte_code`` (256,): byte -> digit, the alphabet's letters in either case -> 0..A-1, any other
  byte -> A, the "invalid" digit (A = 5 for DNAGPT's NAGCT, 4 for DNABERT's ACGT).
- ``window_ids``: a window of w bytes has the index sum(code_c * R**(w-1-c)) in radix R = A + 1;
  the tables of every w = 1..k are concatenated (w's starts at (R**w - R) / (R - 1)) and hold the
  token id of each index: the vocabulary's id of the k-mer text (so DNABERT's file order and
  DNAGPT's 34 reserved ids are honoured exactly), or the unknown id when a digit is invalid or the
  text is not in the vocabulary (the 1-5 base tail of ``dnagpt-6mer``). At most 56k int32 entries.

Cutting: DNAGPT takes non-overlapping 6-mers from the left of each row, the last one w = 1..5
bases when the row's length is not a multiple of 6; DNABERT takes the L - k + 1 overlapping k-mers.

Sample layout: the reserved tokens of a sample travel beside the bases. For row i, with
``n_i`` k-mers in the first ``num_bases[i]`` bytes (all L when ``num_bases`` is None)::

    position  0 .. P-1          P .. P+n_i-1            P+n_i .. P+n_i+S-1    ... T_out-1
    token     prefix_ids[i]     the row's k-mers        suffix_ids[i]         pad id
                                (last first if reverse[i])

    T_out = P + T + S,  T = ceil(L / 6) (DNAGPT) or max(L - k + 1, 0) (DNABERT)

The suffix follows each row's own last k-mer and padding fills the rest, which is exactly the
padded batch of ``trainer.samples.GptSampleBuilder`` (``<sp>`` prefix; ``<=> <0>|<1> <M>`` suffix;
``reverse`` = the order task's reversed rows; ``<P>`` padding) and of the DNABERT builder
(``[CLS]`` / ``[SEP]``, ``[PAD]``) when L is the batch's longest row. ``replace_ids`` (B, T_out),
where >= 0, overrides the id at that position after all of the above: DNABERT's ``[MASK]`` / random
k-mer replacement. Every position's id (reserved, k-mer, pad or replaced) is embedded and gets its
gradient, as with ``F.embedding`` on the builder's ``input_ids``. Why this layout: T_out depends on
shapes only, so the op never synchronises with the GPU to learn lengths; the per-row arithmetic is a
few integer ops per token; and the builders' batches are reproduced exactly, so a model sees the same
inputs through either path.

Which implementation runs (like ``fused_attention``): CUDA tensors -> the Triton kernels in
``kernels.triton_kmer_embedding``; CPU tensors with ``TRITON_INTERPRET=1`` -> the same kernels through
Triton's interpreter (tests); otherwise the vectorised torch reference here (``kmer_ids_ref``: unfold
and index, then ``F.embedding``), which is also the benchmark's "all-torch from bytes" baseline.
The choice is logged once per path (``kernels.dispatch.announce``).

Checks: shapes, dtypes and devices always raise ``ValueError`` naming the argument. Values
(``num_bases`` in [0, L], reserved ids in [0, V)) raise ``ValueError`` on CPU; on CUDA a host check
would synchronise with the GPU, so they are asynchronous device asserts (``torch._assert_async``: like
``F.embedding``'s own assert, a failure poisons the CUDA context), and the kernel also clamps
``num_bases`` to [0, L] so a bad value never reads outside its row.

Layering: kernels/ otherwise imports nothing of ours; the vocabulary is the tokenizer's by definition
of this op, so ``datapipe.tokenizers`` is imported on first use of a tokenizer's tables (not at import).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F

from kernels.dispatch import announce, triton_refusal

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # weight dtypes the Triton kernels take


# ----------------------------------------------------------------------------------------- tables


@dataclass(frozen=True, eq=False)
class KmerTables:
    """What the kernels need to know about a tokenizer; built by ``kmer_tables``."""

    name: str
    k: int  # bases per full k-mer
    stride: int  # k (DNAGPT: non-overlapping) or 1 (DNABERT: overlapping)
    radix: int  # alphabet size + 1; digit radix - 1 = a byte outside the alphabet
    pad_id: int
    vocab_size: int
    byte_code: torch.Tensor  # (256,) int32
    window_ids: torch.Tensor  # (sum of radix**w, w = 1..k) int32

    def num_kmers(self, length: int) -> int:
        """k-mer tokens of a row of ``length`` bases: ceil(L / k) (DNAGPT) or max(L - k + 1, 0) (DNABERT)."""
        if self.stride == self.k:
            return -(-length // self.k)
        return max(length - self.k + 1, 0)


@functools.cache
def _host_tables(name: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(byte_code, window_ids, scalars) of a tokenizer, from its vocabulary (~60 ms for 6-mers, once)."""
    # The one thing of ours kernels/ imports: the vocabulary is the tokenizer's, by definition of the op.
    # Imported here, on first use, so that importing kernels stays free of datapipe.
    from datapipe.tokenizers import DnaGptTokenizer, get_tokenizer

    tok = get_tokenizer(name)
    alphabet = DnaGptTokenizer.ALPHABET if tok.family == "dnagpt" else "ACGT"  # either case, as encode
    radix = len(alphabet) + 1
    byte_code = np.full(256, len(alphabet), np.int32)
    for code, letter in enumerate(alphabet):
        byte_code[ord(letter)] = byte_code[ord(letter.lower())] = code
    vocab = {token: i for i, token in enumerate(tok.vocab)}
    parts = []
    for w in range(1, tok.k + 1):
        # id of each valid w-mer in base-A order, then spread over the radix-R index (invalid -> unknown)
        by_base_a = np.array(
            [vocab.get("".join(p), tok.unk_id) for p in itertools.product(alphabet, repeat=w)], np.int32
        )
        digits = np.indices((radix,) * w).reshape(w, -1)  # (w, R**w), most significant first
        base_a = (np.minimum(digits, radix - 2) * (radix - 1) ** np.arange(w - 1, -1, -1)[:, None]).sum(0)
        parts.append(np.where((digits < radix - 1).all(0), by_base_a[base_a], tok.unk_id).astype(np.int32))
    window_ids = np.concatenate(parts)
    stride = tok.k if tok.family == "dnagpt" else 1
    scalars = dict(k=tok.k, stride=stride, radix=radix, pad_id=tok.pad_id, vocab_size=tok.vocab_size)
    return byte_code, window_ids, scalars


@functools.cache
def _tables_on(name: str, device: str) -> KmerTables:
    byte_code, window_ids, scalars = _host_tables(name)
    return KmerTables(
        name=name,
        byte_code=torch.from_numpy(byte_code).to(device),
        window_ids=torch.from_numpy(window_ids).to(device),
        **scalars,
    )


def kmer_tables(tokenizer: str, device: torch.device | str) -> KmerTables:
    """The lookup tables of ``tokenizer`` on ``device``: built once per (tokenizer, device), then shared."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _tables_on(tokenizer, str(device))


# ----------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True, eq=False)
class SampleLayout:
    """The optional per-row inputs of the sample layout (module docstring), checked."""

    num_bases: torch.Tensor | None = None  # (B,) int
    reverse: torch.Tensor | None = None  # (B,) bool
    prefix_ids: torch.Tensor | None = None  # (B, P) int
    suffix_ids: torch.Tensor | None = None  # (B, S) int
    replace_ids: torch.Tensor | None = None  # (B, T_out) int, < 0 = keep

    @property
    def num_prefix(self) -> int:
        return 0 if self.prefix_ids is None else self.prefix_ids.shape[1]

    @property
    def num_suffix(self) -> int:
        return 0 if self.suffix_ids is None else self.suffix_ids.shape[1]


def _check_int(name: str, x: torch.Tensor | None, shape: tuple[int, ...], device) -> torch.Tensor | None:
    if x is None:
        return None
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"kmer_embedding: {name} must be a torch tensor, got {type(x).__name__}")
    want_bool = name == "reverse"
    is_int = not (x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool)
    if (x.dtype == torch.bool) != want_bool or (not want_bool and not is_int):
        raise ValueError(
            f"kmer_embedding: {name} must be {'a bool' if want_bool else 'an integer'} tensor, got {x.dtype}"
        )
    if tuple(x.shape) != shape:
        raise ValueError(f"kmer_embedding: {name} must have shape {shape}, got {tuple(x.shape)}")
    if x.device != device:
        raise ValueError(f"kmer_embedding: {name} is on {x.device} but bases are on {device}")
    return x


def prepare(
    bases: torch.Tensor,
    tokenizer: str,
    *,
    num_bases=None,
    reverse=None,
    prefix_ids=None,
    suffix_ids=None,
    replace_ids=None,
    vocab_rows: int | None = None,
) -> tuple[KmerTables, SampleLayout, int]:
    """Check the inputs; return the tables, the layout and T_out. ``vocab_rows``: rows of the weight."""
    if not isinstance(bases, torch.Tensor) or bases.dtype != torch.uint8 or bases.dim() != 2:
        what = f"{bases.dim()}-D {bases.dtype}" if isinstance(bases, torch.Tensor) else type(bases).__name__
        raise ValueError(
            f"kmer_embedding: bases must be a 2-D uint8 tensor (batch, length) of ASCII bytes, got {what}"
        )
    try:
        tables = kmer_tables(tokenizer, bases.device)
    except ValueError as err:
        raise ValueError(f"kmer_embedding: {err}") from None
    b, length = bases.shape
    dev = bases.device
    for name, p in (("prefix_ids", prefix_ids), ("suffix_ids", suffix_ids)):
        if isinstance(p, torch.Tensor) and (p.dim() != 2 or p.shape[0] != b):
            raise ValueError(f"kmer_embedding: {name} must be (batch={b}, n), got shape {tuple(p.shape)}")
    n_pre = 0 if prefix_ids is None else prefix_ids.shape[1]
    n_suf = 0 if suffix_ids is None else suffix_ids.shape[1]
    t_out = n_pre + tables.num_kmers(length) + n_suf
    layout = SampleLayout(
        num_bases=_check_int("num_bases", num_bases, (b,), dev),
        reverse=_check_int("reverse", reverse, (b,), dev),
        prefix_ids=_check_int("prefix_ids", prefix_ids, (b, n_pre), dev),
        suffix_ids=_check_int("suffix_ids", suffix_ids, (b, n_suf), dev),
        replace_ids=_check_int("replace_ids", replace_ids, (b, t_out), dev),
    )
    rows = tables.vocab_size if vocab_rows is None else vocab_rows
    if rows < tables.vocab_size:
        raise ValueError(
            f"kmer_embedding: weight has {rows} rows but {tokenizer} has {tables.vocab_size} tokens; "
            "the embedding table needs at least one row per token id"
        )
    _check_values(layout, length, rows)
    return tables, layout, t_out


def _check_values(layout: SampleLayout, length: int, rows: int) -> None:
    """Value ranges: a clear error on CPU; on CUDA an asynchronous device assert (no host sync)."""
    checks = []
    if layout.num_bases is not None:
        nb = layout.num_bases
        checks.append(((nb >= 0) & (nb <= length), f"num_bases must lie in [0, L={length}]"))
    for name in ("prefix_ids", "suffix_ids", "replace_ids"):
        x = getattr(layout, name)
        if x is not None and x.numel():
            low = -1 if name == "replace_ids" else 0  # replace_ids < 0 means "keep"
            checks.append(((x < rows) & ((x >= 0) | (low < 0)), f"{name} must lie in [{low}, {rows})"))
    for ok, message in checks:
        if ok.device.type == "cuda":
            torch._assert_async(ok.all(), f"kmer_embedding: {message}")
        elif not bool(ok.all()):
            raise ValueError(f"kmer_embedding: {message}")


# ----------------------------------------------------------------------------------------- torch reference


def _kmer_window_ids(bases: torch.Tensor, nb: torch.Tensor, tables: KmerTables) -> torch.Tensor:
    """(B, L) uint8, (B, 1) bases per row -> (B, T) ids of each row's k-mers (garbage past n_i)."""
    b, length = bases.shape
    k, radix = tables.k, tables.radix
    n = tables.num_kmers(length)
    codes = tables.byte_code[bases.long()].long()  # (B, L) digits
    if tables.stride == k:  # DNAGPT: (B, T, 6) non-overlapping windows; w = bases of each (6 but the tail)
        codes = F.pad(codes, (0, n * k - length))
        win = codes.view(b, n, k)
        w = (nb - k * torch.arange(n, device=bases.device)).clamp(0, k)  # (B, T)
    else:  # DNABERT: (B, T, k) overlapping windows
        win = codes.unfold(1, k, 1) if n else codes.new_zeros(b, 0, k)
        w = torch.full((b, n), k, device=bases.device)
    index = torch.zeros_like(w)
    power = torch.ones_like(w)
    for c in range(k):  # Horner over the first w digits of each window
        take = c < w
        index = torch.where(take, index * radix + win[..., c], index)
        power = torch.where(take, power * radix, power)
    start = (power - radix) // (radix - 1)  # where the w-mer table begins
    return tables.window_ids[(start + index).clamp(min=0)].long()


def ids_from_layout(kmers: torch.Tensor, n: torch.Tensor, layout: SampleLayout, t_out: int, pad_id: int):
    """(B, T) k-mer ids and (B, 1) k-mers per row -> (B, T_out) ids in the sample layout."""
    b, t = kmers.shape
    pos = torch.arange(t_out, device=kmers.device)[None, :] - layout.num_prefix  # (1, T_out)
    ids = torch.full((b, t_out), pad_id, dtype=torch.long, device=kmers.device)
    if t:
        j = pos.expand(b, t_out)
        if layout.reverse is not None:
            j = torch.where(layout.reverse[:, None], n - 1 - pos, pos)
        ids = torch.where((pos >= 0) & (pos < n), kmers.gather(1, j.clamp(0, t - 1)), ids)
    if layout.num_prefix:
        ids[:, : layout.num_prefix] = layout.prefix_ids
    if layout.num_suffix:
        s = (pos - n).expand(b, t_out)  # suffix slot of each position
        suffix = layout.suffix_ids.long().gather(1, s.clamp(0, layout.num_suffix - 1))
        ids = torch.where((s >= 0) & (s < layout.num_suffix), suffix, ids)
    if layout.replace_ids is not None:
        ids = torch.where(layout.replace_ids >= 0, layout.replace_ids.long(), ids)
    return ids


def _ids_ref(bases: torch.Tensor, tables: KmerTables, layout: SampleLayout, t_out: int) -> torch.Tensor:
    b, length = bases.shape
    nb = layout.num_bases
    nb = torch.full((b, 1), length, device=bases.device) if nb is None else nb[:, None].long()  # (B, 1)
    kmers = _kmer_window_ids(bases, nb, tables)  # (B, T)
    if tables.stride == tables.k:
        n = (nb + tables.k - 1) // tables.k
    else:
        n = (nb - tables.k + 1).clamp(min=0)
    return ids_from_layout(kmers, n, layout, t_out, tables.pad_id)


def kmer_ids_ref(bases: torch.Tensor, *, tokenizer: str, **layout) -> torch.Tensor:
    """The torch reference of ``kmer_ids``: (B, L) uint8 -> (B, T_out) int64, vectorised (no per-row loop).

    Temporaries are a few int64 (B, T, k) tensors, ~50-100 bytes per base: a reference, not a fast path.
    """
    tables, lay, t_out = prepare(bases, tokenizer, **layout)
    return _ids_ref(bases, tables, lay, t_out)


def kmer_embedding_ref(
    bases: torch.Tensor, weight: torch.Tensor, *, tokenizer: str, **layout
) -> torch.Tensor:
    """The torch reference of ``kmer_embedding``: ``F.embedding(kmer_ids_ref(...), weight)``.

    Also the benchmark's "all-torch from bytes" baseline; its backward is ``F.embedding``'s.
    """
    tables, lay, t_out = prepare(bases, tokenizer, vocab_rows=weight.shape[0], **layout)
    return F.embedding(_ids_ref(bases, tables, lay, t_out), weight)


# ----------------------------------------------------------------------------------------- dispatch


def _triton_module() -> ModuleType | None:
    """kernels.triton_kmer_embedding, imported on first use; None when Triton is not installed."""
    try:
        from kernels import triton_kmer_embedding
    except ImportError:
        return None
    return triton_kmer_embedding


def _triton_refusal(bases: torch.Tensor, weight: torch.Tensor | None = None) -> str | None:
    """None if the Triton kernels should run on these tensors, else why not (for the log)."""
    refusal = triton_refusal(bases.device.type, _triton_module)
    if refusal is not None:
        return refusal
    if weight is not None and weight.dtype not in KERNEL_DTYPES:
        return f"Triton kernel: weight dtype {weight.dtype} is not supported (float32, float16, bfloat16)"
    return None


def _choose(op: str, bases: torch.Tensor, weight: torch.Tensor | None, impl: str) -> ModuleType | None:
    """The Triton module when the kernels run, None for the torch reference; logs the choice."""
    if impl not in ("auto", "torch", "triton"):
        raise ValueError(f"{op} impl must be 'auto', 'torch' or 'triton', got {impl!r}")
    why = _triton_refusal(bases, weight) if impl != "torch" else f"{op} impl 'torch' requested"
    if impl == "triton" and why is not None:
        raise RuntimeError(f"{op} impl 'triton' requested but the kernel cannot run: {why}")
    if why is None:
        ops = _triton_module()
        where = "interpreter" if ops.INTERPRETED else "GPU"
        detail = "" if weight is None else f", {weight.dtype}"
        announce(op, f"Triton k-mer kernel ({where})", f"{bases.device.type} tensors{detail}")
        return ops
    announce(op, "torch reference (unfold + index)", why)
    return None


def kmer_ids(
    bases: torch.Tensor,
    *,
    tokenizer: str,
    num_bases: torch.Tensor | None = None,
    reverse: torch.Tensor | None = None,
    prefix_ids: torch.Tensor | None = None,
    suffix_ids: torch.Tensor | None = None,
    replace_ids: torch.Tensor | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """(B, L) uint8 bases -> (B, T_out) int64 token ids in the sample layout (module docstring).

    Without the layout arguments, row i equals ``get_tokenizer(tokenizer).encode(bases[i])``.
    """
    layout = dict(
        num_bases=num_bases,
        reverse=reverse,
        prefix_ids=prefix_ids,
        suffix_ids=suffix_ids,
        replace_ids=replace_ids,
    )
    if not isinstance(bases, torch.Tensor):
        raise ValueError(f"kmer_ids: bases must be a 2-D uint8 tensor, got {type(bases).__name__}")
    ops = _choose("kmer_ids", bases, None, impl)
    if ops is None:
        return kmer_ids_ref(bases, tokenizer=tokenizer, **layout)
    return ops.kmer_ids(bases, tokenizer=tokenizer, **layout)


def kmer_embedding(
    bases: torch.Tensor,
    weight: torch.Tensor,
    *,
    tokenizer: str,
    num_bases: torch.Tensor | None = None,
    reverse: torch.Tensor | None = None,
    prefix_ids: torch.Tensor | None = None,
    suffix_ids: torch.Tensor | None = None,
    replace_ids: torch.Tensor | None = None,
    deterministic: bool = False,
    return_ids: bool = False,
    impl: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """(B, L) uint8 bases, (V, D) weight -> (B, T_out, D) embeddings, differentiable in ``weight``.

    Equals ``F.embedding(kmer_ids(bases, ...), weight)`` (module docstring for the layout arguments).
    ``deterministic``: the backward sums each row's gradient in a fixed order (sort-based, two passes)
    instead of with atomic adds, so ``weight.grad`` is bitwise reproducible; the torch path is
    ``F.embedding``'s backward either way. ``return_ids``: also return the (B, T_out) int64 ids that were
    embedded (e.g. for next-token targets), at no extra pass on the Triton path. ``impl``: "auto"
    chooses per device, "torch" forces the reference, "triton" requires the kernels and raises if they
    cannot run.
    """
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError("kmer_embedding: weight must be a 2-D (vocab, d_model) tensor")
    if not isinstance(bases, torch.Tensor):
        raise ValueError(f"kmer_embedding: bases must be a 2-D uint8 tensor, got {type(bases).__name__}")
    if weight.device != bases.device:
        raise ValueError(f"kmer_embedding: weight is on {weight.device} but bases are on {bases.device}")
    layout = dict(
        num_bases=num_bases,
        reverse=reverse,
        prefix_ids=prefix_ids,
        suffix_ids=suffix_ids,
        replace_ids=replace_ids,
    )
    ops = _choose("kmer_embedding", bases, weight, impl)
    if ops is None:
        tables, lay, t_out = prepare(bases, tokenizer, vocab_rows=weight.shape[0], **layout)
        ids = _ids_ref(bases, tables, lay, t_out)
        out = F.embedding(ids, weight)
        return (out, ids) if return_ids else out
    out, ids = ops.kmer_embedding(bases, weight, tokenizer=tokenizer, deterministic=deterministic, **layout)
    return (out, ids.long()) if return_ids else out
