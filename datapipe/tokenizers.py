"""DNA tokenizers: DNAGPT non-overlapping k-mers and DNABERT overlapping k-mers, behind one registry.

Both families are fixed, published vocabularies, so a tokenizer is identified by its name alone
(``get_tokenizer("dnabert-6")``); ``Tokenizer.save`` writes the vocabulary next to a checkpoint so
that a run can be checked against the ids it was trained with (``load_tokenizer``).

- DNAGPT (``dnagpt-6mer``, ``dnagpt-1to6mer``): ids identical to the released DNAGPT tokenizer: 34
  reserved tokens (``<0>``..``<9>``, operators, ``<M> <B> <P>``, species letters), then k-mers over
  ``NAGCT`` in ``itertools.product`` order, shorter k first. Bases are cut into non-overlapping 6-mers
  from the left. As in the release, an unknown piece (a byte outside NAGCT, or a 1-5 base tail in
  the 6-mer-only vocabulary) becomes id 0, the same id as ``<0>``: decode therefore turns it into
  ``<0>``, and encode -> decode is the identity only for upper-case NAGCT input.
- DNABERT (``dnabert-3`` .. ``dnabert-6``): ``[PAD] [UNK] [CLS] [SEP] [MASK]`` then the 4^k k-mers in
  the order of the shipped ``vocab/vocab_kmer{k}.txt`` (DNABERT's files, which fix the checkpoint ids);
  overlapping k-mers with stride 1, any k-mer with a byte outside ACGT is ``[UNK]``.

Speed: the data pipeline encodes whole chromosomes, so the hot path has no per-base Python loop.
``bytes.translate`` maps bytes to digit codes (a 256-entry table run in C, ~1.5 GB/s; NumPy fancy
indexing of uint8 is ~4x slower). Shifted multiply-adds in uint16 then build a window index in radix
(alphabet size + 1), where "byte outside the alphabet" is a digit of its own, and one gather through
a table of radix**k entries (<= 6**6 = 46,656) maps the index to the token id or to unknown, so
validity costs no extra pass. Work goes in chunks of 256 KiB of bases: temporaries (~20 B per base)
stay in cache and memory stays O(chunk) for a whole chromosome. One core: ~250-350 MB/s of bases for
DNABERT (one id per base), ~500-650 MB/s for DNAGPT (one per 6 bases); see bench/bench_tokenizers.py.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from datapipe.common.errors import MissingError, UnknownNameError, UsageError
from datapipe.common.files import write_atomic

logger = logging.getLogger(__name__)

DNAGPT_NAMES: tuple[str, ...] = ("dnagpt-6mer", "dnagpt-1to6mer")
DNABERT_NAMES: tuple[str, ...] = ("dnabert-3", "dnabert-4", "dnabert-5", "dnabert-6")
TOKENIZER_NAMES: tuple[str, ...] = DNAGPT_NAMES + DNABERT_NAMES
FORMAT_VERSION = 1
VOCAB_FILE = "vocab.txt"
CONFIG_FILE = "tokenizer.json"
VOCAB_DIR = Path(__file__).parent / "vocab"

SeqLike = str | bytes | bytearray | memoryview | np.ndarray
DNABERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4
_CHUNK_BYTES = 1 << 18  # bases per encode chunk; 2**15..2**20 measure within noise of each other


def _code_table(alphabet: str) -> bytes:
    """256-byte table for ``bytes.translate``: letter i of ``alphabet`` (either case) -> i, else len."""
    table = bytearray([len(alphabet)]) * 256
    for code, letter in enumerate(alphabet):
        table[ord(letter)] = table[ord(letter.lower())] = code
    return bytes(table)


def _as_bases(seq: SeqLike) -> memoryview:
    """A flat byte view of raw bases; str is ASCII-encoded with one byte per character ('?' if not ASCII)."""
    if isinstance(seq, str):
        return memoryview(seq.encode("ascii", errors="replace"))
    if isinstance(seq, np.ndarray):
        if seq.dtype != np.uint8 or seq.ndim != 1:
            raise TypeError(f"expected a 1-D uint8 array of bases, got {seq.ndim}-D {seq.dtype}")
        return memoryview(np.ascontiguousarray(seq))
    if isinstance(seq, bytes | bytearray | memoryview):
        return memoryview(seq).cast("B")
    raise TypeError(f"expected str, bytes or a uint8 array of bases, got {type(seq).__name__}")


def _window_ids(
    buf: memoryview, out: np.ndarray, *, k: int, stride: int, codes: bytes, radix: int, table: np.ndarray
) -> None:
    """Write into ``out`` (shape (n,)) the ids of windows ``buf[i*stride : i*stride+k]``, i < n.

    ``stride == k``: non-overlapping windows; ``stride == 1``: overlapping ones. The window index is
    base-``radix`` with the codes of ``codes`` as digits; ``table[index]`` is the token id.
    """
    n = out.shape[0]
    per_chunk = max(1, _CHUNK_BYTES // stride)
    index_p = np.empty(min(n, per_chunk), np.intp)  # take() converts indices to intp anyway: reuse one
    for start in range(0, n, per_chunk):
        m = min(per_chunk, n - start)
        lo = start * stride
        code = np.frombuffer(bytes(buf[lo : lo + (m - 1) * stride + k]).translate(codes), np.uint8)
        if stride == k:
            index = _disjoint_index(code.reshape(m, k), radix)
        else:
            index = _overlapping_index(code, k, radix)
        np.copyto(index_p[:m], index)
        # mode="clip" skips the bounds check (index < radix**k by construction): ~2x faster gather
        np.take(table, index_p[:m], out=out[start : start + m], mode="clip")


def _disjoint_index(win: np.ndarray, radix: int) -> np.ndarray:
    """(m, k) uint8 digits -> (m,) uint16 index: Horner over the k strided columns (k-1 multiply-adds)."""
    index = win[:, 0].astype(np.uint16)  # radix**k <= 6**6 = 46,656 fits uint16
    for j in range(1, win.shape[1]):
        index *= radix
        index += win[:, j]
    return index


def _overlapping_index(code: np.ndarray, k: int, radix: int) -> np.ndarray:
    """(L,) uint8 digits -> (L-k+1,) uint16 index of every length-k window, by doubling.

    index of length a+b at i = index_a[i] * radix**b + index_b[i+a]: 3 steps of 2 ops for k = 6
    (Horner needs 11 passes over L), each a cache-resident pass over the chunk.
    """
    built = {1: code.astype(np.uint16)}
    width = 1
    while width < k:
        step = max(s for s in built if s <= min(width, k - width))
        n = code.shape[0] - (width + step) + 1
        index = built[width][:n] * np.uint16(radix**step)
        index += built[step][width : width + n]
        width += step
        built[width] = index
    return built[k]


def _as_ids(ids, vocab_size: int, name: str) -> np.ndarray:
    """ids (array, list, CPU torch tensor) -> 1-D int64 array, checked against the vocabulary."""
    arr = np.asarray(ids)
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name}: decode takes a 1-D sequence of integer ids, got {arr.ndim}-D {arr.dtype}")
    bad = arr[(arr < 0) | (arr >= vocab_size)]
    if bad.size:
        raise ValueError(f"{name}: token id {int(bad[0])} is outside the vocabulary [0, {vocab_size})")
    return arr.astype(np.int64, copy=False)


def _pack_rows(rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """1-D uint8 rows -> (B, L_max) uint8, zero bytes after each row's end, and (B,) int64 lengths."""
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    out = np.zeros((len(rows), int(lengths.max(initial=0))), dtype=np.uint8)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out, lengths


class Tokenizer:
    """Base class: a fixed vocabulary (``vocab[id]`` is the token text) and encode/decode."""

    family: str = ""

    def __init__(self, *, name: str, k: int, vocab: list[str], pad_id: int, unk_id: int) -> None:
        self.name = name
        self.k = k
        self.vocab = vocab  # shared by every user of the cached instance: do not mutate
        self.pad_id = pad_id
        self.unk_id = unk_id
        self._ids = {token: i for i, token in enumerate(vocab)}
        if len(self._ids) != len(vocab):
            raise ValueError(f"{name}: vocabulary has duplicate tokens")

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size})"

    def encode(self, seq: SeqLike) -> np.ndarray:
        """Token ids (int32, 1-D) of one sequence; ``bytes`` / uint8 arrays of raw bases are the fast path."""
        raise NotImplementedError

    def encode_batch(self, seqs: Sequence[SeqLike]) -> list[np.ndarray]:
        """``[encode(s) for s in seqs]``: a few microseconds of Python overhead per sequence."""
        return [self.encode(s) for s in seqs]

    def decode(self, ids) -> str:
        """Text of a 1-D id sequence (NumPy array, list, or CPU torch tensor); out-of-range ids raise."""
        raise NotImplementedError

    def to_bases(self, ids) -> np.ndarray:
        """(n,) k-mer ids of one sample -> uint8 bases whose ``encode`` gives ``ids`` back exactly.

        What a loader ships to the fused k-mer embedding (``kernels.kmer_embedding``) when shards hold
        ids. Bases hidden behind the unknown id are lost (the id path loses them too): they come back as
        bytes the tokenizer maps to unknown again. Reserved ids other than unknown raise ValueError.
        """
        raise NotImplementedError

    def to_bases_batch(self, rows: Sequence) -> tuple[np.ndarray, np.ndarray]:
        """Several samples' ids -> (B, L_max) uint8 bases, left-aligned, zero bytes after each row's end,
        and (B,) int64 base counts; row i equals ``to_bases(rows[i])``."""
        return _pack_rows([self.to_bases(r) for r in rows])

    def token_to_id(self, token: str) -> int:
        try:
            return self._ids[token]
        except KeyError:
            hint = "reserved tokens are written '<R>', '<=>'" if self.family == "dnagpt" else "e.g. '[CLS]'"
            raise UnknownNameError(
                f"{token!r} is not in the {self.name} vocabulary ({self.vocab_size} tokens; "
                f"k-mers are upper case, length {self.k}; {hint})"
            ) from None

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``vocab.txt`` (one token per line) and ``tokenizer.json``, each to a temp name then renamed."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / VOCAB_FILE, "\n".join(self.vocab) + "\n")
        config = {"name": self.name, "family": self.family, "k": self.k, "vocab_size": self.vocab_size}
        write_atomic(
            out / CONFIG_FILE, json.dumps({**config, "format_version": FORMAT_VERSION}, indent=2) + "\n"
        )


class DnaGptTokenizer(Tokenizer):
    """DNAGPT: non-overlapping 6-mers over NAGCT cut from the left; ``<x>`` markup for reserved tokens.

    ``min_k=6``: 6-mers only (a 1-5 base tail is unknown, id 0); ``min_k=1``: the tail becomes a
    shorter k-mer. Unknown pieces are id 0 (== ``<0>``), as in the released DNAGPT tokenizer.
    """

    family = "dnagpt"
    ALPHABET = "NAGCT"
    RESERVED_SYMBOLS: tuple[str, ...] = (*"0123456789", *"+-*/=&|!", "M", "B", "P", *"RIKLOQSUV", *"WYXZ")
    EQ_ID = 14  # <=>: "answer follows" in task prompts
    M_ID = 18  # <M>: number slot (value enters/leaves through the number MLPs)
    B_ID = 19  # <B>: classification slot
    P_ID = 20  # <P>: padding
    _MARKUP = re.compile(r"<([^<>]*)>")
    _BRACKET = re.compile(r"[<>]")

    def __init__(self, *, name: str, min_k: int) -> None:
        if min_k not in (1, 6):
            raise ValueError(f"min_k must be 1 (1- to 6-mers) or 6 (6-mers only) as released, got {min_k}")
        k = 6
        reserved = [f"<{s}>" for s in self.RESERVED_SYMBOLS]
        kmers = ["".join(p) for w in range(min_k, k + 1) for p in itertools.product(self.ALPHABET, repeat=w)]
        super().__init__(name=name, k=k, vocab=reserved + kmers, pad_id=self.P_ID, unk_id=0)
        self.min_k = min_k
        self._reserved = {s: i for i, s in enumerate(self.RESERVED_SYMBOLS)}
        self._codes = _code_table(self.ALPHABET)
        # id tables over radix-6 window indices (digit 5 = invalid byte), one per k-mer length
        self._tables: dict[int, np.ndarray] = {}
        offset = len(reserved)
        for w in range(min_k, k + 1):
            digits = np.indices((6,) * w).reshape(w, -1)  # (w, 6**w), most significant digit first
            base5 = (digits * 5 ** np.arange(w - 1, -1, -1)[:, None]).sum(0)
            table = np.where((digits < 5).all(0), offset + base5, self.unk_id).astype(np.int32)
            table.flags.writeable = False
            self._tables[w] = table
            offset += 5**w

    def reserved_id(self, symbol: str) -> int:
        """Id of a reserved token given as ``"R"`` or ``"<R>"``."""
        bare = symbol[1:-1] if len(symbol) > 2 and symbol[0] == "<" and symbol[-1] == ">" else symbol
        if bare not in self._reserved:
            raise UnknownNameError(
                f"{symbol!r} is not a DNAGPT reserved token; valid: {''.join(self.RESERVED_SYMBOLS)}"
            )
        return self._reserved[bare]

    def encode(self, seq: SeqLike) -> np.ndarray:
        """str may carry ``<x>`` markup; bytes / uint8 arrays are raw bases (the fast path)."""
        if isinstance(seq, str) and ("<" in seq or ">" in seq):
            return self._encode_markup(seq)
        return self._encode_bases(_as_bases(seq))

    def _encode_bases(self, buf: memoryview) -> np.ndarray:
        n, tail = divmod(len(buf), self.k)
        out = np.empty(n + (tail > 0), np.int32)
        table = self._tables[self.k]
        _window_ids(
            buf[: n * self.k], out[:n], k=self.k, stride=self.k, codes=self._codes, radix=6, table=table
        )
        if tail:
            table = self._tables.get(tail)
            index = 0
            for code in bytes(buf[n * self.k :]).translate(self._codes):  # <= 5 bases
                index = index * 6 + code
            out[n] = self.unk_id if table is None else table[index]
        return out

    def _encode_markup(self, text: str) -> np.ndarray:
        """Reserved tokens -> their ids; each stretch of bases between them is cut from its own left end."""
        parts: list[np.ndarray] = []
        pos = 0
        for match in itertools.chain(self._MARKUP.finditer(text), [None]):
            end = len(text) if match is None else match.start()
            stretch = text[pos:end]
            bad = self._BRACKET.search(stretch)
            if bad is not None:
                what = "unclosed '<'" if bad.group() == "<" else "'>' without '<'"
                raise UsageError(f"{self.name}: {what} at position {pos + bad.start()} of the input")
            if stretch:
                parts.append(self._encode_bases(_as_bases(stretch)))
            if match is None:
                break
            symbol = match.group(1)
            if symbol not in self._reserved:
                raise UsageError(
                    f"{self.name}: unknown reserved token '<{symbol}>' at position {match.start()} of the "
                    f"input; valid symbols: {' '.join(self.RESERVED_SYMBOLS)}"
                )
            parts.append(np.array([self._reserved[symbol]], np.int32))
            pos = match.end()
        return np.concatenate(parts) if parts else np.zeros(0, np.int32)

    def decode(self, ids) -> str:
        """Reserved ids -> ``<x>``, k-mer ids -> bases, concatenated (unknown id 0 -> ``<0>``)."""
        return "".join(self.vocab[i] for i in _as_ids(ids, self.vocab_size, self.name).tolist())

    def to_bases(self, ids) -> np.ndarray:
        """Each k-mer id -> its bases; the unknown id -> k bytes ``?`` (outside NAGCT, so unknown again)."""
        arr = _as_ids(ids, self.vocab_size, self.name)
        bases, lengths = self._id_bases()
        bad = (arr < len(self.RESERVED_SYMBOLS)) & (arr != self.unk_id)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{self.name}: id {arr[i]} ({self.vocab[arr[i]]}) at {i} is not a k-mer")
        rows, n = bases[arr], lengths[arr]  # (m, 6), (m,)
        if (n == self.k).all():  # every k-mer full: the usual case, one reshape
            return rows.reshape(-1)
        return rows[np.arange(self.k)[None, :] < n[:, None]]  # row-major: each k-mer's first n bytes

    def to_bases_batch(self, rows: Sequence) -> tuple[np.ndarray, np.ndarray]:
        """One gather for the whole batch when every k-mer is a full 6-mer (always for ``dnagpt-6mer``,
        whose unknown id decodes to 6 bytes; all but a row's last token for ``dnagpt-1to6mer``): the ids
        padded with an extra empty row of the table, then (B, T, 6) -> (B, 6T). Otherwise, row by row."""
        arrs = [_as_ids(r, self.vocab_size, self.name) for r in rows]
        bases, lengths = self._id_bases()
        padded = np.full((len(arrs), max((len(a) for a in arrs), default=0)), self.vocab_size, np.int64)
        for i, a in enumerate(arrs):
            padded[i, : len(a)] = a
        n = lengths[padded]  # (B, T); the padding id has length 0
        if (
            not ((n == self.k) | (padded == self.vocab_size)).all()
            or ((padded < len(self.RESERVED_SYMBOLS)) & (padded != self.unk_id)).any()
        ):
            return super().to_bases_batch(arrs)  # a short tail or a reserved id: the checked per-row path
        # each id's 6 bytes as one 'V6' item: one take of whole items, ~5x faster than indexing (V, 6) rows
        items = bases.view(f"V{self.k}").ravel()
        return items.take(padded).view(np.uint8).reshape(len(arrs), -1), n.sum(axis=1)

    @functools.cache  # noqa: B019 - tokenizers are cached singletons; the table lives as long
    def _id_bases(self) -> tuple[np.ndarray, np.ndarray]:
        """(V + 1, 6) uint8 bytes of every id (left-aligned) and (V + 1,) their count; reserved ids -> 6 x
        '?'; row V (not an id) is empty: the padding of ``to_bases_batch``."""
        bases = np.full((self.vocab_size + 1, self.k), ord("?"), np.uint8)
        lengths = np.full(self.vocab_size + 1, self.k, np.int64)
        for i in range(len(self.RESERVED_SYMBOLS), self.vocab_size):
            text = self.vocab[i].encode()
            bases[i, : len(text)] = np.frombuffer(text, np.uint8)
            lengths[i] = len(text)
        bases[self.vocab_size], lengths[self.vocab_size] = 0, 0
        return bases, lengths


def _read_dnabert_vocab(path: Path, k: int) -> list[str]:
    """Read and check a DNABERT vocab file: the 5 specials, then each of the 4^k k-mers exactly once."""
    try:
        lines = path.read_text(encoding="ascii").splitlines()  # k = 3..5 files lack a final newline
    except FileNotFoundError:
        raise MissingError(f"{path}: DNABERT vocabulary for k={k} is missing") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{path}: cannot read DNABERT vocabulary for k={k} ({err})") from err
    n_special, kmers = len(DNABERT_SPECIALS), {"".join(p) for p in itertools.product("ACGT", repeat=k)}
    if (
        tuple(lines[:n_special]) != DNABERT_SPECIALS
        or len(lines) != n_special + 4**k
        or set(lines[n_special:]) != kmers
    ):
        raise UsageError(
            f"{path}: not a DNABERT k={k} vocabulary (expected {' '.join(DNABERT_SPECIALS)} then each of "
            f"the {4**k} {k}-mers once, {n_special + 4**k} lines; found {len(lines)} lines)"
        )
    return lines


class DnaBertTokenizer(Tokenizer):
    """DNABERT: overlapping k-mers (stride 1), ids from DNABERT's vocab file; ``[UNK]`` for non-ACGT k-mers.

    ``encode`` returns k-mer ids only (L - k + 1 of them, none if L < k); the caller adds ``[CLS]`` /
    ``[SEP]``.
    """

    family = "dnabert"

    def __init__(self, *, k: int, vocab_path: str | os.PathLike | None = None) -> None:
        if k not in (3, 4, 5, 6):  # also keeps the radix-5 window index (5**k) inside uint16
            raise ValueError(f"DNABERT k must be 3, 4, 5 or 6, got {k}")
        path = Path(vocab_path) if vocab_path is not None else VOCAB_DIR / f"vocab_kmer{k}.txt"
        vocab = _read_dnabert_vocab(path, k)
        super().__init__(name=f"dnabert-{k}", k=k, vocab=vocab, pad_id=0, unk_id=1)
        self.cls_id, self.sep_id, self.mask_id = 2, 3, 4
        n_special = len(DNABERT_SPECIALS)
        self.kmer_ids = np.arange(n_special, len(vocab), dtype=np.int32)  # for random-token replacement
        self.kmer_ids.flags.writeable = False
        self._codes = _code_table("ACGT")
        # radix-5 window index (digit 4 = invalid byte) -> id through the file's order
        digits = np.indices((5,) * k).reshape(k, -1)  # (k, 5**k)
        base4 = (np.minimum(digits, 3) * 4 ** np.arange(k - 1, -1, -1)[:, None]).sum(0)
        by_base4 = np.array([self._ids["".join(p)] for p in itertools.product("ACGT", repeat=k)], np.int32)
        self._table = np.where((digits < 4).all(0), by_base4[base4], self.unk_id).astype(np.int32)
        self._table.flags.writeable = False
        # (vocab_size, k) uint8 bases of each id, 'N' for the special tokens: used by decode
        self._bases = np.full((len(vocab), k), ord("N"), np.uint8)
        self._bases[n_special:] = np.frombuffer("".join(vocab[n_special:]).encode(), np.uint8).reshape(-1, k)

    def encode(self, seq: SeqLike) -> np.ndarray:
        buf = _as_bases(seq)
        out = np.empty(max(0, len(buf) - self.k + 1), np.int32)
        _window_ids(buf, out, k=self.k, stride=1, codes=self._codes, radix=5, table=self._table)
        return out

    def decode(self, ids) -> str:
        """Bases back from overlapping k-mers: the first k-mer, then the last base of each next one.

        A base is taken from the earliest k-mer covering it that is not ``[UNK]`` (``N`` if all are),
        so an isolated ``N`` in the input comes back as ``N`` with its neighbours. Other special tokens
        are written in bracket form, with nothing between them and the bases, and split the k-mers into
        runs decoded independently: ``[CLS] ACG CGT [SEP]`` -> ``"[CLS]ACGT[SEP]"``.
        """
        arr = _as_ids(ids, self.vocab_size, self.name)
        parts: list[str] = []
        start = 0
        for pos in np.flatnonzero((arr < len(DNABERT_SPECIALS)) & (arr != self.unk_id)).tolist():
            parts += [self._decode_run(arr[start:pos]), self.vocab[arr[pos]]]
            start = pos + 1
        parts.append(self._decode_run(arr[start:]))
        return "".join(parts)

    def _decode_run(self, run: np.ndarray) -> str:
        return self._run_bases(run).tobytes().decode("ascii")

    def _run_bases(self, run: np.ndarray) -> np.ndarray:
        """(m,) k-mer / [UNK] ids -> (m + k - 1,) uint8 bases ('N' where only [UNK] k-mers cover a base)."""
        m = run.shape[0]
        if m == 0:
            return np.zeros(0, np.uint8)
        bases = self._bases[run]  # (m, k)
        known = run != self.unk_id  # (m,)
        out = np.full(m + self.k - 1, ord("N"), np.uint8)
        for j in range(self.k):  # later j = earlier window: the earliest known k-mer writes last and wins
            out[j : j + m][known] = bases[known, j]
        return out

    def to_bases(self, ids) -> np.ndarray:
        """Exact: an [UNK] k-mer held a non-ACGT base, which every k-mer covering it shares, so no known
        k-mer writes that base and it comes back as 'N' (-> [UNK] again); known k-mers agree where they
        overlap. Zero ids give zero bases (a piece shorter than k has no k-mers to recover it from)."""
        arr = _as_ids(ids, self.vocab_size, self.name)
        bad = (arr < len(DNABERT_SPECIALS)) & (arr != self.unk_id)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{self.name}: id {arr[i]} ({self.vocab[arr[i]]}) at {i} is not a k-mer")
        if len(arr) and not (arr == self.unk_id).any():  # usual case: the first k-mer + each next last base
            return np.concatenate([self._bases[arr[0]], self._bases[arr[1:], -1]])
        return self._run_bases(arr)


@functools.cache  # == lru_cache(maxsize=None)
def get_tokenizer(name: str) -> Tokenizer:
    """The tokenizer called ``name`` (one of ``TOKENIZER_NAMES``); built once (~50 ms), then shared."""
    if name == "dnagpt-6mer":
        tok: Tokenizer = DnaGptTokenizer(name=name, min_k=6)
    elif name == "dnagpt-1to6mer":
        tok = DnaGptTokenizer(name=name, min_k=1)
    elif name in DNABERT_NAMES:
        tok = DnaBertTokenizer(k=int(name.removeprefix("dnabert-")))
    else:
        raise UsageError(f"unknown tokenizer {name!r}; valid names: {', '.join(TOKENIZER_NAMES)}")
    logger.debug("built tokenizer %s (vocab %d)", name, tok.vocab_size)
    return tok


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """The tokenizer that ``Tokenizer.save`` wrote to ``directory``, checked against the registry.

    The vocabularies are fixed, so loading means: read the name, and verify that the saved vocabulary
    is the one this code would use (a mismatch means the checkpoint's ids are not ours).
    """
    config_path, vocab_path = Path(directory) / CONFIG_FILE, Path(directory) / VOCAB_FILE
    hint = "expected the files written by Tokenizer.save"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MissingError(f"{config_path}: missing; {hint}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"{config_path}: not a readable tokenizer config ({err}); {hint}") from err
    if not isinstance(config, dict) or config.get("format_version") != FORMAT_VERSION:
        raise UsageError(f"{config_path}: format_version must be {FORMAT_VERSION}; {hint}")
    if config.get("name") not in TOKENIZER_NAMES:
        raise UsageError(
            f"{config_path}: name {config.get('name')!r} is not one of {', '.join(TOKENIZER_NAMES)}"
        )
    tok = get_tokenizer(config["name"])
    for field in ("family", "k", "vocab_size"):
        if config.get(field) != getattr(tok, field):
            raise UsageError(
                f"{config_path}: {field} is {config.get(field)!r} but {tok.name} has {getattr(tok, field)!r}"
            )
    try:
        saved = vocab_path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise MissingError(f"{vocab_path}: missing; {hint}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{vocab_path}: unreadable ({err})") from err
    if saved != tok.vocab:
        line = next((i for i, (a, b) in enumerate(zip(saved, tok.vocab, strict=False)) if a != b), None)
        where = f"{len(saved)} lines, expected {tok.vocab_size}"
        if line is not None:
            where = f"line {line + 1} is {saved[line]!r}, expected {tok.vocab[line]!r}"
        raise UsageError(f"{vocab_path}: vocabulary differs from {tok.name} ({where})")
    return tok
