"""FASTA read in independent chunks: scan each chunk in parallel, stitch the scans, cut windows.

A chunk (see ``datapipe.io``) may start anywhere: inside a header line, inside a sequence line, or
at the start of a line. Which one is known only from the chunks before it, so:

1. :func:`scan_chunk` (a Ray task per chunk, in parallel) decompresses and reads one chunk alone.
   The chunk's first line (the *head*, up to and including its first newline) is ambiguous, so it
   is described both as header text and as sequence; everything after it starts at a line start
   and is read exactly: header lines, sequence runs, the first invalid byte. It returns a small
   scan for the driver and the chunk's normalised bases (one ``translate``; kept in Ray's object
   store), so the chunk is decompressed only once.
2. :class:`Stitcher` (driver, cheap, in chunk order) resolves each head and turns the scans into
   the record table and, per chunk, *segments*: which bases of the blob belong to which record at
   which offset. Format errors are raised here with their line in the file.
3. Phase 2 (``units.fasta_chunk_unit``) cuts the windows that start in a chunk from its segments,
   plus the first bases of the next chunks when its last window runs past its end.

:class:`FastaStream` reads a non-splittable file (plain gzip) from its start in one task instead.
The rules are those of :mod:`datapipe.fasta` (same tables, same messages): the tests check records
and errors against ``read_fasta`` on random files cut into tiny chunks.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import numpy as np

# The reader's tables and messages, so both readers accept and reject exactly the same bytes.
from datapipe.fasta import _BAD, _CONTROL, _LOWER, _NORM, _VALID, _WS, FastaFormatError, _bad_byte_message

MAX_NAME = 4096
"""Bytes of a header line kept when it is cut by a chunk boundary; record names are shorter."""


_FIRST_BASE = re.compile(rb"[^ \t\r\n\x0b\x0c]")


class _Lines:
    """Line numbers of positions in ``text``, counted lazily and incrementally (one pass at most)."""

    def __init__(self, text: bytes, line: int) -> None:
        self.text, self.pos, self.line = text, 0, line

    def at(self, pos: int) -> int:
        """Line of ``text[pos]``; positions must not decrease between calls."""
        self.line += self.text.count(b"\n", self.pos, pos)
        self.pos = pos
        return self.line


def _seq_info(
    text: bytes, lo: int, hi: int, lines: _Lines, keep_mask: bool
) -> tuple[dict[str, Any], bytes, bytes]:
    """Bases of ``text[lo:hi]`` (no header inside): info (count, first invalid byte and first base,
    with their lines), the normalised bases, and the soft-mask bytes (0/1) when ``keep_mask``."""
    piece = text[lo:hi]  # a whole-object slice is no copy
    if keep_mask:
        stripped = piece.translate(None, _WS)
        norm, mask = stripped.translate(_NORM), stripped.translate(_LOWER)
    else:
        norm, mask = piece.translate(_NORM, _WS), b""
    info: dict[str, Any] = {"bases": len(norm), "bad": None, "first": None}
    if norm:
        info["first"] = lines.at(lo + _FIRST_BASE.search(piece).start())
    if _BAD in norm:  # rare: find the exact byte with NumPy
        i = int(np.argmin(_VALID[np.frombuffer(piece, dtype=np.uint8)]))
        info["bad"] = (lines.at(lo + i), piece[i])
    return info, norm, mask


def _walk(text: bytes, pos: int, at_line_start: bool) -> Iterator[tuple[str, int, int, bool]]:
    """Header lines and sequence runs of ``text[pos:]``: (kind, lo, hi, complete).

    ``hdr`` spans the header text without '>' and newline (``complete`` False when the text ends
    inside it); ``seq`` spans a run of sequence lines up to the next header. Mirrors
    ``fasta._Parser.feed``: a header is a '>' at the start of a line. '>' is found with a
    one-byte search (memchr, several GB/s): it never occurs in valid sequence.
    """
    n = len(text)
    while pos < n:
        if at_line_start and text[pos] == 0x3E:  # '>'
            nl = text.find(b"\n", pos)
            yield "hdr", pos + 1, n if nl < 0 else nl, nl >= 0
            if nl < 0:
                return
            pos = nl + 1
            continue
        i = text.find(b">", pos + 1)
        while i >= 0 and text[i - 1] != 0x0A:  # a '>' inside a line: invalid sequence, reported later
            i = text.find(b">", i + 1)
        end = n if i < 0 else i
        yield "seq", pos, end, True
        pos, at_line_start = end, True


def scan_chunk(text: bytes, keep_mask: bool = False) -> tuple[dict[str, Any], bytes, bytes]:
    """Phase 1: what one chunk holds, whatever the state at its first byte (see the module doc).

    Returns the scan (small; for the driver), the chunk's normalised bases (the head read as
    sequence, then every sequence run of the body) and their soft-mask bytes (empty unless
    ``keep_mask``). Phase 2 takes its bases from these, so the chunk is decompressed once.
    Lines are counted from 0 at the chunk's first byte.
    """
    n = len(text)
    nl = text.find(b"\n")
    head_end = n if nl < 0 else nl + 1
    head_line = text[: n if nl < 0 else nl]
    ctrl = np.flatnonzero(_CONTROL[np.frombuffer(head_line[:MAX_NAME], dtype=np.uint8)])
    head_info, head_norm, head_mask = _seq_info(text, 0, head_end, _Lines(text, 0), keep_mask)
    bases, masks = [head_norm], [head_mask]
    body: list[dict[str, Any]] = []
    lines = _Lines(text, 0)
    if nl >= 0:
        for kind, lo, hi, complete in _walk(text, head_end, True):
            if kind == "hdr":
                raw = text[lo:hi]
                c = np.flatnonzero(_CONTROL[np.frombuffer(raw[:MAX_NAME], dtype=np.uint8)])
                body.append(
                    {
                        "hdr": raw[:MAX_NAME].decode("latin-1"),
                        "line": lines.at(lo),
                        "complete": complete,
                        "control": int(raw[c[0]]) if c.size else None,
                    }
                )
            else:
                info, norm, mask = _seq_info(text, lo, hi, lines, keep_mask)
                body.append({"seq": info})
                bases.append(norm)
                masks.append(mask)
    scan = {
        "length": n,
        "newlines": lines.at(n),
        "last_byte": text[-1] if n else -1,
        "head": {
            "complete": nl >= 0,
            "starts_gt": n > 0 and text[0] == 0x3E,
            "text": head_line[:MAX_NAME].decode("latin-1"),
            "control": int(head_line[ctrl[0]]) if ctrl.size else None,
            "seq": head_info,
        },
        "body": body,
    }
    return scan, b"".join(bases), b"".join(masks)


def parse_header(path: str, line: int, raw: bytes) -> str:
    """Record name from a header line (without '>'), or the reader's error."""
    control = np.flatnonzero(_CONTROL[np.frombuffer(raw, dtype=np.uint8)])
    if control.size:
        raise FastaFormatError(path, line, _bad_byte_message(raw[control[0]]))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FastaFormatError(path, line, _bad_byte_message(raw[exc.start])) from None
    parts = text.split(None, 1)
    if not parts:
        raise FastaFormatError(
            path, line, "header has an empty name; put the record name right after '>' (e.g. '>chr1')"
        )
    if len(parts) == 1 and len(raw) >= MAX_NAME:
        raise FastaFormatError(path, line, f"record name is longer than {MAX_NAME} bytes; shorten the header")
    return parts[0]


class Stitcher:
    """Walks the scans of one file in chunk order (phase 1, driver side).

    ``add(scan)`` returns the chunk's *segments*: ``[record, offset, pos, n]`` = ``n`` bases of
    ``record`` starting at record ``offset``, at ``pos`` in the chunk's bases blob (phase 2 uses
    them). Raises the first format error with its line in the file.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.records: list[list[Any]] = []  # [name, length, header line]
        self.line = 1  # line of the next chunk's first byte
        self.at_line_start = True
        self.header: bytearray | None = None  # header text being assembled
        self.header_line = 0
        self.header_control: int | None = None
        self.bytes_seen = 0
        self.finished = False

    def error(self, line: int | None, message: str) -> FastaFormatError:
        return FastaFormatError(self.path, line, message)

    def closed(self, record: int) -> bool:
        """No more bases can come for ``record``."""
        return self.finished or record < len(self.records) - 1 or self.header is not None

    def _open_header(self, text: str, line: int, control: int | None) -> None:
        self._close_record()
        self.header, self.header_line, self.header_control = bytearray(text.encode("latin-1")), line, control

    def _finish_header(self) -> None:
        assert self.header is not None
        if self.header_control is not None:
            raise self.error(self.header_line, _bad_byte_message(self.header_control))
        name = parse_header(self.path, self.header_line, bytes(self.header[:MAX_NAME]))
        self.records.append([name, 0, self.header_line])
        self.header = None

    def _close_record(self) -> None:
        if self.records and self.records[-1][1] == 0:
            name, _, line = self.records[-1]
            raise self.error(
                line, f"record {name!r} has no sequence; remove the header or add the sequence below it"
            )

    def _sequence(self, info: dict[str, Any], pos: int, segments: list[list[int]]) -> None:
        if info["bad"] is not None:
            line, byte = info["bad"]
            raise self.error(self.line + line, _bad_byte_message(byte))
        n = info["bases"]
        if n == 0:
            return
        if not self.records:
            raise self.error(
                self.line + info["first"],
                "sequence data before the first '>' header; a FASTA file must start with a '>name' line",
            )
        rec = len(self.records) - 1
        if segments and segments[-1][0] == rec and segments[-1][2] + segments[-1][3] == pos:
            segments[-1][3] += n
        else:
            segments.append([rec, self.records[-1][1], pos, n])
        self.records[-1][1] += n

    def add(self, scan: dict[str, Any]) -> list[list[int]]:
        segments: list[list[int]] = []
        head = scan["head"]
        pos = head["seq"]["bases"]  # the blob starts with the head read as sequence
        if scan["length"]:
            if self.header is not None:  # continuation of a header cut by the chunk boundary
                if head["control"] is not None and self.header_control is None:
                    self.header_control = head["control"]
                self.header += head["text"].encode("latin-1")
                if head["complete"]:
                    self._finish_header()
            elif self.at_line_start and head["starts_gt"]:
                self._open_header(head["text"][1:], self.line, head["control"])
                if head["complete"]:
                    self._finish_header()
            else:
                self._sequence(head["seq"], 0, segments)
        for item in scan["body"]:
            if "hdr" in item:
                self._open_header(item["hdr"], self.line + item["line"], item["control"])
                if item["complete"]:
                    self._finish_header()
            else:
                self._sequence(item["seq"], pos, segments)
                pos += item["seq"]["bases"]
        self.line += scan["newlines"]
        self.bytes_seen += scan["length"]
        if scan["length"]:
            self.at_line_start = scan["last_byte"] == 0x0A
        return segments

    def finish(self) -> list[list[Any]]:
        """End of the file: the record table ``[name, length]``."""
        if self.header is not None:  # a last header without a newline: a record without sequence
            self._finish_header()
        self._close_record()
        self.finished = True
        if not self.records:
            what = "file is empty" if self.bytes_seen == 0 else "file has no FASTA records (only whitespace)"
            raise self.error(
                None, f"{what}; a FASTA file holds '>name' header lines, each followed by sequence"
            )
        return [[name, length] for name, length, _ in self.records]


class FastaStream:
    """Normalised bases per record of a non-splittable file read from its start, piece by piece.

    ``feed`` yields ``("record", index, name)`` when a record starts and ``("bases", seq, mask)``
    with upper-case ``ACGTN`` bytes (and the soft-mask bytes, 0/1, when ``keep_mask``), with every
    check of :mod:`datapipe.fasta` (same messages, same line numbers).
    """

    def __init__(self, path: str, *, keep_mask: bool) -> None:
        self.path, self.keep_mask = path, keep_mask
        self.record, self.name, self.length = -1, "", 0
        self.in_header, self.at_line_start, self.line = False, True, 1
        self.header = bytearray()
        self.header_line = 1
        self.bytes_seen = 0

    def error(self, line: int | None, message: str) -> FastaFormatError:
        return FastaFormatError(self.path, line, message)

    def feed(self, text: bytes) -> Iterator[tuple[Any, ...]]:
        self.bytes_seen += len(text)
        pos = 0
        if self.in_header:  # the rest of a header line cut by the previous piece
            nl = text.find(b"\n")
            self.header += text if nl < 0 else text[:nl]
            if nl < 0:
                return
            yield self._start_record()
            pos, self.line, self.at_line_start = nl + 1, self.line + 1, True
        lines = _Lines(text, self.line)
        lines.pos = pos
        for kind, lo, hi, complete in _walk(text, pos, self.at_line_start):
            if kind == "hdr":
                self._check_not_empty()
                self.header, self.header_line = bytearray(text[lo:hi]), lines.at(lo)
                if not complete:
                    self.in_header, self.line = True, lines.at(len(text))
                    return
                yield self._start_record()
            else:
                bases = self._sequence(text, lo, hi, lines)
                if bases is not None:
                    yield bases
        self.line = lines.at(len(text))
        if text:
            self.at_line_start = text[-1] == 0x0A

    def _start_record(self) -> tuple[Any, ...]:
        self.in_header = False
        self.record += 1
        self.name = parse_header(self.path, self.header_line, bytes(self.header[:MAX_NAME]))
        self.length = 0
        return "record", self.record, self.name

    def _check_not_empty(self) -> None:
        if self.record >= 0 and self.length == 0:
            raise self.error(
                self.header_line,
                f"record {self.name!r} has no sequence; remove the header or add the sequence below it",
            )

    def _sequence(self, text: bytes, lo: int, hi: int, lines: _Lines) -> tuple[Any, ...] | None:
        info, norm, mask = _seq_info(text, lo, hi, lines, self.keep_mask)
        if info["bad"] is not None:
            line, byte = info["bad"]
            raise self.error(line, _bad_byte_message(byte))
        if not norm:
            return None
        if self.record < 0:
            raise self.error(
                info["first"],
                "sequence data before the first '>' header; a FASTA file must start with a '>name' line",
            )
        self.length += len(norm)
        return "bases", norm, mask if self.keep_mask else None

    def finish(self) -> Iterator[tuple[Any, ...]]:
        """End of the file: a last header may still open a (necessarily empty) record."""
        if self.in_header:
            self._check_not_empty()
            yield self._start_record()
        self._check_not_empty()
        if self.record < 0:
            what = "file is empty" if self.bytes_seen == 0 else "file has no FASTA records (only whitespace)"
            raise self.error(
                None, f"{what}; a FASTA file holds '>name' header lines, each followed by sequence"
            )
