"""Streaming FASTA reader: plain, gzip and bgzip files into upper-case ``uint8`` NumPy arrays.

Genomes are read in large binary blocks (``BLOCK_SIZE``) and cleaned with ``bytes.translate``, which runs
in C, so there is no per-base Python loop: a block without a header costs a few C passes over its bytes
(strip whitespace and normalise case/IUPAC in one, look for the "bad byte" sentinel in another) plus one
``count(b"\\n")`` for line numbers. A record's sequence is appended to one ``bytearray`` and handed out
through ``np.frombuffer`` without a copy, so peak memory is one chromosome (plus up to ~12% ``bytearray``
over-allocation, and one mask byte per base with ``soft_mask="mask"``) plus a few blocks.

Errors are part of the interface: malformed input raises exactly one :class:`FastaFormatError` naming the
file, the 1-based line, what is wrong and what to do. Finding the exact byte of an error re-scans one block
with NumPy; that only happens on the error path.
"""

from __future__ import annotations

import gzip
import logging
import os
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Literal

import numpy as np

from datapipe.common.errors import InputError

logger = logging.getLogger(__name__)

BLOCK_SIZE = 8 << 20
"""Bytes of (decompressed) text parsed per step. Big enough that per-block Python overhead is negligible,
small enough that the block and its temporary translations (~3 copies) stay far below a chromosome."""

_MAX_HEADER = 1 << 20  # a "header" longer than this is almost surely a binary file that starts with '>'

_WS = b" \t\r\n\v\f"  # deleted anywhere in sequence lines: wrapping, CRLF, trailing spaces/tabs, blank lines
_BAD = 0  # translate() maps every byte that is not a sequence code to this sentinel


def _tables() -> tuple[bytes, bytes, np.ndarray]:
    norm = bytearray(256)  # all _BAD unless allowed
    for c in b"ACGTN":
        norm[c] = norm[c | 0x20] = c
    for c in b"RYKMSWBDHV":  # IUPAC ambiguity codes carry no usable base: N
        norm[c] = norm[c | 0x20] = ord("N")
    norm[ord("U")] = norm[ord("u")] = ord("T")  # RNA
    lower = bytes(1 if ord("a") <= i <= ord("z") else 0 for i in range(256))  # bytes 0/1 == np.bool_
    valid = np.array([norm[i] != _BAD or i in _WS for i in range(256)])
    return bytes(norm), lower, valid


_NORM, _LOWER, _VALID = _tables()
# Lookup tables for the error path only: whitespace, and bytes that never occur in text (NUL, C0 controls
# other than whitespace, DEL, non-ASCII).
_SPACE = np.array([i in _WS for i in range(256)])
_CONTROL = np.array([(i < 0x20 and i not in _WS) or i == 0x7F for i in range(256)])
_BINARY = _CONTROL | (np.arange(256) >= 0x80)
_Done = tuple[str, str, int, int, bytearray, bytearray]  # name, description, line, length, seq, mask
_MAGIC_OTHER = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
COMPRESSION_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)
"""What reading a truncated or corrupt gzip stream raises (a cut stream, a bad CRC, damaged deflate data):
every text reader on top of :func:`open_maybe_compressed` turns these into its InputError."""


class FastaFormatError(InputError):
    """Malformed FASTA. ``str(err)`` is ``"{path}:{line}: {what is wrong}; {what to do}"``.

    ``line`` is 1-based, or None when the problem is the file as a whole (empty, wrong compression).
    """


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)  # eq=False: == on arrays is not a bool
class FastaRecord:
    name: str
    """First word of the header, without '>'."""
    description: str
    """Rest of the header line, stripped; may be ""."""
    seq: np.ndarray
    """(L,) uint8 ASCII, upper case, only b"ACGTN" (IUPAC ambiguity codes -> N, U -> T)."""
    mask: np.ndarray | None
    """(L,) bool, True where the input base was lower case (soft-masked); None unless soft_mask="mask"."""
    path: str
    """Source file."""
    line: int
    """1-based line number of the header."""


def open_maybe_compressed(path: str | os.PathLike[str]) -> BinaryIO:
    """Open ``path`` for binary reading, decompressing gzip/bgzip (multi-member gzip) transparently.

    Detection is by the magic bytes 1f 8b, not the extension, because ``.fa`` files that are really gzip
    (and ``.gz`` files that are not) are common. bzip2/xz/zstd are refused with a clear error rather than
    parsed as binary garbage. The stream supports ``read1``, which the parser relies on.
    """
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic[:2] == b"\x1f\x8b":
        return gzip.open(path, "rb")  # type: ignore[return-value]  # GzipFile is a BinaryIO in practice
    for prefix, kind in _MAGIC_OTHER.items():
        if magic.startswith(prefix):
            raise FastaFormatError(
                path, None, f"file is {kind}-compressed; decompress it, or re-compress it with bgzip or gzip"
            )
    return open(path, "rb")


def _bad_byte_message(c: int) -> str:
    if _BINARY[c]:
        return (
            f"byte 0x{c:02x} is not text: this looks like a binary file, not FASTA; check the path "
            "(BAM, 2bit and archives are not FASTA) or re-download the file"
        )
    ch = chr(c)
    if ch == ">":
        return "'>' in the middle of a line; a header must start at the beginning of its own line"
    if ch in "-.":
        return f"character {ch!r} is an alignment gap, not sequence; remove the gaps or export unaligned sequences"
    if ch.isdigit():
        return f"character {ch!r} is not sequence (numbered GenBank/EMBL lines?); convert the file to plain FASTA"
    return (
        f"character {ch!r} is not a nucleotide code (allowed: ACGTN, IUPAC RYKMSWBDHV, U, either case); "
        "is this a protein FASTA? fix or remove the line"
    )


class _Parser:
    """Incremental state machine fed with blocks of any size; yields finished records as tuples.

    Invariant: ``self.line`` is the 1-based line of the next byte to be parsed, so an error at offset ``i``
    of a segment is on line ``self.line + segment.count(b"\\n", 0, i)``.
    """

    def __init__(self, path: str, keep_seq: bool, keep_mask: bool) -> None:
        self.path, self.keep_seq, self.keep_mask = path, keep_seq, keep_mask
        self.line = 1
        self.at_line_start = True
        self.header: bytearray | None = None  # a header line split across blocks, without '>'
        self.header_line = 0
        self.name: str | None = None  # current record; None before the first header
        self.description = ""
        self.record_line = 0
        self.seq = bytearray()
        self.mask = bytearray()
        self.length = 0
        self.n_bytes = 0
        self.n_records = 0

    def error(self, line: int | None, message: str) -> FastaFormatError:
        return FastaFormatError(self.path, line, message)

    @property
    def last_line(self) -> int:
        """Line of the last byte parsed (``self.line`` is one past it right after a newline)."""
        return self.line - 1 if self.at_line_start and self.line > 1 else self.line

    def feed(self, buf: bytes) -> Iterator[_Done]:
        self.n_bytes += len(buf)
        pos, n = 0, len(buf)
        if self.header is not None:  # finish a header carried over from the previous block
            nl = buf.find(b"\n")
            self.header += buf if nl < 0 else buf[:nl]
            if nl < 0:
                if len(self.header) > _MAX_HEADER:
                    raise self.error(
                        self.header_line,
                        "header line is over 1 MiB long; this looks like a binary file, not FASTA",
                    )
                return
            yield from self.start_record(bytes(self.header))
            pos = nl + 1
        while pos < n:
            if not (self.at_line_start and buf[pos] == 0x3E):  # sequence up to the next "\n>" or block end
                i = buf.find(b"\n>", pos)
                end = n if i < 0 else i + 1
                self.sequence(buf[pos:end])  # a whole-block slice of bytes is the same object: no copy
                self.at_line_start = buf[end - 1] == 0x0A
                pos = end
                continue
            nl = buf.find(b"\n", pos)
            self.header_line = self.line
            if nl < 0:  # header continues in the next block
                self.header, self.at_line_start = bytearray(buf[pos + 1 :]), False
                return
            yield from self.start_record(buf[pos + 1 : nl])
            pos = nl + 1

    def start_record(self, raw: bytes) -> Iterator[_Done]:
        """Close the current record (yielding it) and open the one whose header text is ``raw``."""
        yield from self.finish_record()
        self.header, self.at_line_start = None, True
        control = np.flatnonzero(_CONTROL[np.frombuffer(raw, dtype=np.uint8)])
        if control.size:  # NUL and other control bytes; non-ASCII is fine if it is valid UTF-8
            raise self.error(self.header_line, _bad_byte_message(raw[control[0]]))
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.error(self.header_line, _bad_byte_message(raw[exc.start])) from None
        # Lenient like Biopython: '> chr1 x' names the record 'chr1'.
        parts = text.split(None, 1)
        if not parts:
            raise self.error(
                self.header_line,
                "header has an empty name; put the record name right after '>' (e.g. '>chr1')",
            )
        self.name, self.description = parts[0], parts[1].strip() if len(parts) > 1 else ""
        self.record_line, self.length = self.header_line, 0
        self.seq, self.mask = bytearray(), bytearray()  # fresh buffers: the old ones are now owned by arrays
        self.line += 1

    def sequence(self, seg: bytes) -> None:
        """Validate, normalise and append one run of sequence lines (no header inside ``seg``)."""
        if self.name is None:
            if seg.translate(None, _WS):  # blank lines before the first header are tolerated
                self.before_header_error(seg)
        else:
            if self.keep_mask:
                stripped = seg.translate(None, _WS)
                norm = stripped.translate(_NORM)
                self.mask += stripped.translate(_LOWER)
            else:
                norm = seg.translate(_NORM, _WS)  # one C pass: delete whitespace, map case/IUPAC/bad bytes
            if _BAD in norm:  # memchr; only the rare error path below re-scans the segment
                i = int(np.argmin(_VALID[np.frombuffer(seg, dtype=np.uint8)]))  # first invalid byte
                raise self.error(self.line + seg.count(b"\n", 0, i), _bad_byte_message(seg[i]))
            if self.keep_seq:
                self.seq += norm
            self.length += len(norm)
        self.line += seg.count(b"\n")

    def before_header_error(self, seg: bytes) -> None:
        arr = np.frombuffer(seg, dtype=np.uint8)
        i = int(np.argmin(_SPACE[arr]))  # first non-whitespace byte
        line = self.line + seg.count(b"\n", 0, i)
        binary = np.flatnonzero(_BINARY[arr])
        if binary.size:  # e.g. a BAM, 2bit or archive: say so rather than "data before the header"
            raise self.error(line, _bad_byte_message(int(arr[binary[0]])))
        raise self.error(
            line, "sequence data before the first '>' header; a FASTA file must start with a '>name' line"
        )

    def finish_record(self) -> Iterator[_Done]:
        if self.name is None:
            return
        if self.length == 0:
            raise self.error(
                self.record_line,
                f"record {self.name!r} has no sequence; remove the header or add the sequence below it",
            )
        self.n_records += 1
        yield self.name, self.description, self.record_line, self.length, self.seq, self.mask
        self.name = None

    def finish(self) -> Iterator[_Done]:
        """End of input: a pending header (no final newline) opens a last, necessarily empty, record."""
        if self.header is not None:
            yield from self.start_record(bytes(self.header))
        yield from self.finish_record()
        if self.n_records == 0:
            what = "file is empty" if self.n_bytes == 0 else "file has no FASTA records (only whitespace)"
            raise self.error(
                None, f"{what}; a FASTA file holds '>name' header lines, each followed by sequence"
            )


def _parse(path: str | os.PathLike[str], block_size: int, keep_seq: bool, keep_mask: bool) -> Iterator[_Done]:
    path = os.fspath(path)
    parser = _Parser(path, keep_seq, keep_mask)
    t0 = time.perf_counter()
    with open_maybe_compressed(path) as fh:
        # read1 hands back what was decompressed so far, so on a truncated/corrupt gzip everything before
        # the damage is parsed and the error names the last line really read. Small read1 pieces (~tens of
        # KiB from gzip) are joined into a block; b"".join of one piece returns it without a copy.
        read1 = getattr(fh, "read1", fh.read)
        parts: list[bytes] = []
        size = 0
        while True:
            try:
                piece = read1(block_size - size)
            except COMPRESSION_ERRORS as exc:
                yield from parser.feed(b"".join(parts))
                raise parser.error(
                    parser.last_line,
                    f"compressed data is truncated or corrupt ({exc}); re-download the file or re-compress it",
                ) from exc
            if piece:
                parts.append(piece)
                size += len(piece)
            if parts and (size >= block_size or not piece):
                yield from parser.feed(b"".join(parts))
                parts, size = [], 0
            if not piece:
                break
    yield from parser.finish()
    seconds = time.perf_counter() - t0
    logger.debug(
        "read %s: %d records, %d bytes of text in %.2f s (%.0f MB/s)",
        path,
        parser.n_records,
        parser.n_bytes,
        seconds,
        parser.n_bytes / max(seconds, 1e-9) / 1e6,
    )


def read_fasta(
    path: str | os.PathLike[str],
    *,
    soft_mask: Literal["upper", "mask"] = "upper",
    block_size: int = BLOCK_SIZE,
) -> Iterator[FastaRecord]:
    """Yield the records of a plain/gzip/bgzip FASTA file one at a time, each as soon as it is complete.

    soft_mask="upper" drops case information (cheapest: one translate per block); "mask" also returns a
    bool array marking lower-case (soft-masked repeat) bases, at one byte per base and two more passes.
    Arguments are validated here, eagerly, not on the first ``next()``. On malformed input a
    :class:`FastaFormatError` is raised after the records before it have been yielded.
    """
    if soft_mask not in ("upper", "mask"):
        raise ValueError(f"soft_mask must be 'upper' or 'mask', got {soft_mask!r}")
    _check_block_size(block_size)
    return _records(path, soft_mask == "mask", block_size)


def _records(path: str | os.PathLike[str], keep_mask: bool, block_size: int) -> Iterator[FastaRecord]:
    for name, description, line, _, seq, mask in _parse(path, block_size, True, keep_mask):
        yield FastaRecord(
            name=name,
            description=description,
            seq=np.frombuffer(seq, dtype=np.uint8),  # shares the bytearray: no copy of the chromosome
            mask=np.frombuffer(mask, dtype=np.bool_) if keep_mask else None,
            path=os.fspath(path),
            line=line,
        )


def fasta_summary(path: str | os.PathLike[str], *, block_size: int = BLOCK_SIZE) -> list[tuple[str, int]]:
    """(name, length in bp) for each record, in file order.

    Streams with the full validation of :func:`read_fasta` but keeps no sequence, so memory is a few
    blocks whatever the genome size; time is the same as reading (dominated by decompression).
    """
    _check_block_size(block_size)
    return [(name, length) for name, _, _, length, _, _ in _parse(path, block_size, False, False)]


def _check_block_size(block_size: int) -> None:
    if block_size < 1:
        raise ValueError(f"block_size must be a positive number of bytes, got {block_size}")
