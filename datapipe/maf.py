"""MAF multiple alignments: each aligned row becomes its own sequence, gaps removed.

A block is an ``a`` line followed by ``s`` lines (``s src start size strand srcSize text``) and
optional ``i``/``e``/``q`` lines, ended by a blank line. Each ``s`` row is read as one segment of
its source (``hg19.chr22`` -> assembly ``hg19``, record ``chr22``): gaps ``-`` are removed and the
bases normalised as in FASTA (upper case, IUPAC -> N, optional soft mask). Rows are not joined
across blocks, so no window spans two alignment blocks (consecutive blocks are rarely contiguous
in every species, and a window across a break would be a chimera).

Blocks are independent, so a chunked MAF needs no stitching pass: a chunk owns the blocks whose
``a`` line follows a newline inside it (the file's first line belongs to chunk 0), and reads on
into the next chunk to finish its last block.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from datapipe.common.errors import InputError
from datapipe.fasta import _BAD, _LOWER, _NORM

_GAP_AND_WS = b"-\r"


class MafFormatError(InputError):
    """Malformed MAF. ``line`` is counted from the first byte of ``chunk`` (the driver makes it global)."""

    def __init__(self, path: str, line: int | None, message: str, chunk: int = 0) -> None:
        super().__init__(path, line, message)
        self.args = (path, line, message, chunk)
        self.chunk = chunk


@dataclass(slots=True)
class Row:
    src: str
    start: int  # 0-based, on the row's strand (MAF convention)
    size: int
    strand: str
    bases: bytes  # normalised ACGTN, gaps removed
    mask: bytes | None
    line: int


class MafStream:
    """Blocks of a MAF text fed piece by piece, with the chunk of each piece.

    ``feed(chunk, text)`` yields ``(chunk, rows)`` for each complete block, where ``chunk`` is the
    owner of the block (the chunk holding the newline before its ``a`` line).
    """

    def __init__(self, path: str, *, keep_mask: bool, first_chunk: int, at_file_start: bool) -> None:
        self.path, self.keep_mask = path, keep_mask
        self.first_chunk = first_chunk
        self.skip_head = not at_file_start  # a chunk's first (partial) line belongs to the chunk before
        self.inherited = not at_file_start  # rows of a block opened in an earlier chunk: its task reads them
        self.partial = b""  # a line cut by the end of the previous piece
        self.partial_chunk = first_chunk  # chunk holding the newline before the partial line
        self.line = 1  # 1-based line, counted from the first byte of first_chunk
        self.block: list[Row] | None = None
        self.block_chunk = first_chunk
        self.block_line = 0
        self.width = -1

    def error(self, line: int, message: str) -> MafFormatError:
        return MafFormatError(self.path, line, message, self.first_chunk)

    def feed(self, chunk: int, text: bytes) -> Iterator[tuple[int, list[Row]]]:
        pos = 0
        if self.skip_head:
            nl = text.find(b"\n")
            if nl < 0:
                return
            self.skip_head, pos, self.line = False, nl + 1, 2
            self.partial_chunk = chunk
        while True:
            nl = text.find(b"\n", pos)
            if nl < 0:
                self.partial += text[pos:]
                return
            line = self.partial + text[pos:nl] if self.partial else text[pos:nl]
            owner = self.partial_chunk
            self.partial, self.partial_chunk = b"", chunk  # the newline at nl is in this chunk
            pos = nl + 1
            yield from self._line(line, owner)
            self.line += 1

    def done_through(self, chunk: int) -> bool:
        """No block owned by ``chunk`` or an earlier chunk is still to come."""
        return self.partial_chunk > chunk and (self.block is None or self.block_chunk > chunk)

    def finish(self) -> Iterator[tuple[int, list[Row]]]:
        if self.partial:
            yield from self._line(self.partial, self.partial_chunk)
            self.partial = b""
        yield from self._end_block()

    def _line(self, line: bytes, owner: int) -> Iterator[tuple[int, list[Row]]]:
        kind = line[:1]
        if self.inherited and kind in (b"s", b"i", b"e", b"q"):
            return
        self.inherited = False
        if kind == b"a" and (len(line) == 1 or line[1:2].isspace()):
            yield from self._end_block()
            self.block, self.block_chunk, self.block_line, self.width = [], owner, self.line, -1
        elif kind == b"s" and line[1:2].isspace():
            if self.block is None:
                raise self.error(
                    self.line, "'s' line outside an alignment block; each block starts with an 'a' line"
                )
            self.block.append(self._row(line))
        elif not line.strip():
            yield from self._end_block()
        elif kind in (b"#", b"i", b"e", b"q"):
            pass  # comments, and info/empty/quality lines: they carry no bases
        else:
            raise self.error(
                self.line,
                f"line starts with {line[:12].decode('latin-1')!r}; a MAF line starts with 'a', 's', 'i', "
                "'e', 'q' or '#' (is this really a MAF file?)",
            )

    def _end_block(self) -> Iterator[tuple[int, list[Row]]]:
        if self.block is not None:
            if self.block:
                yield self.block_chunk, self.block
            self.block = None

    def _row(self, line: bytes) -> Row:
        parts = line.split(None, 6)
        if len(parts) != 7:
            raise self.error(
                self.line,
                f"'s' line has {len(parts)} fields, expected 7: s src start size strand srcSize text",
            )
        _, src, start, size, strand, src_size, text = parts
        try:
            start_i, size_i, src_size_i = int(start), int(size), int(src_size)
        except ValueError:
            raise self.error(self.line, "start, size and srcSize of an 's' line must be integers") from None
        if strand not in (b"+", b"-"):
            raise self.error(self.line, f"strand must be '+' or '-', got {strand.decode('latin-1')!r}")
        text = text.rstrip()
        if self.width < 0:
            self.width = len(text)
        elif len(text) != self.width:
            raise self.error(
                self.line, f"alignment row has {len(text)} columns, the block's first row {self.width}"
            )
        stripped = text.translate(None, _GAP_AND_WS)
        norm = stripped.translate(_NORM)
        if _BAD in norm:
            col = int(np.flatnonzero(np.frombuffer(norm, np.uint8) == _BAD)[0])
            raise self.error(
                self.line,
                f"character {chr(stripped[col])!r} in the alignment of {src.decode('latin-1')} is not "
                "a nucleotide or gap code (allowed: ACGTN, IUPAC codes, '-')",
            )
        if len(norm) != size_i or start_i < 0 or start_i + size_i > src_size_i:
            raise self.error(
                self.line,
                f"'s' line says size {size_i} (start {start_i}, srcSize {src_size_i}) but holds {len(norm)} "
                "bases; the row is inconsistent",
            )
        mask = stripped.translate(_LOWER) if self.keep_mask else None
        return Row(src.decode("utf-8", "replace"), start_i, size_i, strand.decode(), norm, mask, self.line)


def split_source(src: str) -> tuple[str, str]:
    """'hg19.chr22' -> ('hg19', 'chr22'); a source without '.' is its own assembly and record."""
    prefix, dot, rest = src.partition(".")
    return (prefix, rest) if dot and rest else (src, src)
