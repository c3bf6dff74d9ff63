"""Where ``dnafm prepare`` reads and writes: fsspec locations, atomic writes, and input text as chunks.

Every path goes through fsspec, because the workers of a multi-node Ray cluster share no local disk:
a local path, ``file://``, or ``s3://`` / ``gs://`` when the matching fsspec backend is installed.

An input is read as *chunks* of text, the work units of ``prepare``. A chunk is defined by the file
alone, never by the number of workers, so unit names and shard bytes are the same on any cluster:

- plain text: byte ranges of ``chunk_bytes``;
- bgzip (BGZF): the blocks whose first byte lies in a range of ``chunk_bytes`` compressed bytes. A
  worker seeks to the range start and re-synchronises on the next block header, so no index of the
  file is needed and any worker can read any chunk (random access into a compressed genome);
- plain gzip: one deflate stream cannot be entered in the middle, so a single task reads the file
  from the start and cuts its text every ``chunk_bytes`` decompressed bytes (``splittable=False``).

Readers yield *pieces* (a BGZF block, a 1 MiB read, or a slice of decompressed stream) tagged with
their chunk index, so a task can read its chunk and then, lazily, just enough of the next chunks to
finish the windows that start in its own chunk.
"""

from __future__ import annotations

import json
import os
import struct
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

import fsspec
from fsspec.implementations.local import LocalFileSystem

from datapipe.common.errors import InputError, MissingError, StorageFullError
from datapipe.common.files import ENOSPC, write_atomic

try:  # optional: libdeflate inflates whole BGZF blocks ~2.9x faster than zlib (bench/bench_datapipe.py)
    import deflate as _libdeflate
except ImportError:  # pragma: no cover - depends on the environment
    _libdeflate = None

_GZIP = b"\x1f\x8b"
_BGZF_HEAD = b"\x1f\x8b\x08\x04"
_MAX_BGZF_BLOCK = 1 << 16  # BSIZE is a uint16 + 1
_OTHER_COMPRESSION = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
_PLAIN_PIECE = 1 << 20  # bytes per read of an uncompressed input
_GZIP_READ = 1 << 18  # compressed bytes per read of a plain gzip stream
COMPRESSION_RATIO = 4
FULL_HINT = "free space (or choose another --out) and re-run the same command: completed work units are kept"
"""DNA text gzips ~3.5-4.3x; compressed inputs are cut every region_bp / 4 compressed bytes."""


# ---------------------------------------------------------------------------------------------
# Output folders


class Storage:
    """A folder on any fsspec filesystem, with the few operations prepare needs.

    Writes are atomic: data goes to ``NAME.tmp-<random>`` and is renamed when complete (a rename on
    a local or shared POSIX file system; copy-then-delete on object stores, where an object only
    becomes visible once fully written anyway). ``*.tmp-*`` leftovers of killed writers are removed
    by :meth:`remove_temporaries`.
    """

    def __init__(self, url: str | os.PathLike[str]) -> None:
        self.url = os.fspath(url)
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.local = isinstance(self.fs, LocalFileSystem)

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *(p for p in parts if p)])

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def makedirs(self, *parts: str) -> None:
        self.fs.makedirs(self.path(*parts), exist_ok=True)

    def read_bytes(self, *parts: str) -> bytes:
        return self.fs.cat_file(self.path(*parts))

    def read_json(self, *parts: str) -> Any:
        return json.loads(self.read_bytes(*parts))

    def size(self, *parts: str) -> int:
        return int(self.fs.size(self.path(*parts)))

    def listdir(self, *parts: str) -> list[str]:
        """Names (not paths) in a folder; [] when it does not exist."""
        path = self.path(*parts)
        if not self.fs.exists(path):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(path, detail=False))

    def write_bytes(self, data: bytes | list[bytes], *parts: str, fsync: bool = False) -> None:
        """Write atomically. ``data`` may be a list of pieces (written without joining them)."""
        final = self.path(*parts)
        pieces = data if isinstance(data, list) else [data]
        if self.local:  # fsync: the unit marker that follows must never be on disk before its shards
            write_atomic(final, pieces, fsync=fsync, full_hint=FULL_HINT)
            return
        tmp = f"{final}.tmp-{uuid.uuid4().hex[:12]}"
        try:
            with self.fs.open(tmp, "wb") as f:
                for piece in pieces:
                    f.write(piece)
            self.fs.mv(tmp, final)
        except BaseException as err:
            try:
                self.fs.rm_file(tmp)
            except OSError:
                pass
            if isinstance(err, OSError) and err.errno == ENOSPC:
                raise StorageFullError(final, FULL_HINT) from err
            raise

    def write_json(self, data: Any, *parts: str) -> None:
        self.write_bytes((json.dumps(data, indent=2, sort_keys=True) + "\n").encode(), *parts)

    def remove(self, *parts: str) -> None:
        path = self.path(*parts)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def remove_temporaries(self, *folders: str) -> int:
        """Delete ``*.tmp-*`` files left by killed writers in the given sub-folders (and the root)."""
        removed = 0
        for folder in ("", *folders):
            for name in self.listdir(folder) if folder else self.listdir():
                if ".tmp-" in name:
                    self.fs.rm_file(self.path(folder, name) if folder else self.path(name))
                    removed += 1
        return removed


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True, kw_only=True)
class InputFile:
    url: str
    size: int
    """Bytes on storage (compressed size for gzip-family files)."""
    compression: Literal["plain", "gzip", "bgzf"]
    fmt: Literal["fasta", "maf"]

    @property
    def splittable(self) -> bool:
        return self.compression != "gzip"


def open_binary(url: str) -> BinaryIO:
    return fsspec.open(url, "rb").open()


def sniff(url: str) -> InputFile:
    """Detect compression from the magic bytes (not the name) and the format from the first text."""
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path) or fs.isdir(path):
        raise MissingError(f"input {url} does not exist or is not a file")
    size = int(fs.size(path))
    if size == 0:
        raise InputError(url, None, "file is empty; give a FASTA or MAF file with sequence")
    with open_binary(url) as fh:
        head = fh.read(_MAX_BGZF_BLOCK)
    for magic, kind in _OTHER_COMPRESSION.items():
        if head.startswith(magic):
            raise InputError(
                url, None, f"file is {kind}-compressed; decompress it, or re-compress it with bgzip"
            )
    if head[:2] == _GZIP:
        compression: Literal["plain", "gzip", "bgzf"] = "bgzf" if _bgzf_block_size(head, 0) else "gzip"
        try:
            text = zlib.decompressobj(wbits=31).decompress(head, 1 << 16)
        except zlib.error as err:
            raise InputError(
                url, None, f"gzip data is corrupt ({err}); re-download or re-compress it"
            ) from err
    else:
        compression, text = "plain", head
    first = text.lstrip()[:5]
    fmt: Literal["fasta", "maf"] = (
        "maf" if first.startswith(b"##maf") or _looks_like_maf_name(url) else "fasta"
    )
    return InputFile(url=url, size=size, compression=compression, fmt=fmt)


def _looks_like_maf_name(url: str) -> bool:
    name = url.rsplit("/", 1)[-1].lower()
    return any(name.endswith(ext) for ext in (".maf", ".maf.gz", ".maf.bgz"))


def _bgzf_block_size(buf: bytes, pos: int) -> int:
    """Total size of the BGZF block whose header starts at ``pos`` of ``buf``, or 0 if it is none.

    A BGZF block is a gzip member with FEXTRA holding the 'BC' subfield (block size - 1). bgzip
    writes exactly one 6-byte extra field; others may add more, so the subfields are walked.
    """
    if buf[pos : pos + 4] != _BGZF_HEAD or len(buf) < pos + 12:
        return 0
    xlen = struct.unpack_from("<H", buf, pos + 10)[0]
    extra_end = pos + 12 + xlen
    if len(buf) < extra_end:
        return 0
    p = pos + 12
    while p + 4 <= extra_end:
        si1, si2, slen = buf[p], buf[p + 1], struct.unpack_from("<H", buf, p + 2)[0]
        if si1 == 66 and si2 == 67 and slen == 2 and p + 6 <= extra_end:  # 'B' 'C'
            bsize = struct.unpack_from("<H", buf, p + 4)[0] + 1
            return bsize if bsize >= 12 + xlen + 8 else 0  # header, extra field and trailer must fit
        p += 4 + slen
    return 0


class ChunkReader:
    """Pieces of decompressed text of one input, tagged with the chunk they belong to."""

    def __init__(self, file: InputFile, chunk_bytes: int) -> None:
        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be >= 1, got {chunk_bytes}")
        self.file, self.chunk_bytes = file, chunk_bytes

    def num_chunks(self) -> int | None:
        """Chunks of a splittable file (some may be empty); None for a plain gzip stream."""
        if not self.file.splittable:
            return None
        return max(1, -(-self.file.size // self.chunk_bytes))

    def pieces(self, first_chunk: int = 0) -> Iterator[tuple[int, bytes]]:
        """(chunk, text) from the start of ``first_chunk`` to the end of the file, lazily."""
        if self.file.compression == "plain":
            return self._plain(first_chunk)
        if self.file.compression == "bgzf":
            return self._bgzf(first_chunk)
        if first_chunk != 0:
            raise ValueError(f"{self.file.url}: a plain gzip stream can only be read from its start")
        return self._gzip()

    def _plain(self, first: int) -> Iterator[tuple[int, bytes]]:
        with open_binary(self.file.url) as fh:
            pos = first * self.chunk_bytes
            fh.seek(pos)
            while pos < self.file.size:
                chunk = pos // self.chunk_bytes
                want = min(_PLAIN_PIECE, (chunk + 1) * self.chunk_bytes - pos)
                data = fh.read(want)
                if not data:
                    return
                yield chunk, data
                pos += len(data)

    def _bgzf(self, first: int) -> Iterator[tuple[int, bytes]]:
        url = self.file.url
        with open_binary(url) as fh:
            pos = self._resync(fh, first * self.chunk_bytes)
            while pos < self.file.size:
                fh.seek(pos)
                head = fh.read(18 + 256)
                bsize = _bgzf_block_size(head, 0)
                if not bsize:
                    raise InputError(url, None, f"byte {pos}: not a BGZF block header; the file is corrupt")
                block = head + fh.read(bsize - len(head)) if bsize > len(head) else head[:bsize]
                if len(block) < bsize:
                    raise InputError(
                        url, None, f"byte {pos}: BGZF block truncated; re-download or re-compress it"
                    )
                yield pos // self.chunk_bytes, _inflate_bgzf(block, url, pos)
                pos += bsize

    def _resync(self, fh: BinaryIO, offset: int) -> int:
        """First BGZF block start at or after ``offset`` (the file size if none).

        A candidate must parse as a BGZF header and be followed by another one (or the end of the
        file), so compressed bytes that merely look like a header are skipped.
        """
        if offset <= 0:
            return 0
        size = self.file.size
        while offset < size:
            fh.seek(offset)
            buf = fh.read(4 * _MAX_BGZF_BLOCK)
            i = buf.find(_BGZF_HEAD)
            while i >= 0:
                bsize = _bgzf_block_size(buf, i)
                if bsize and (offset + i + bsize == size or self._is_block(fh, offset + i + bsize)):
                    return offset + i
                i = buf.find(_BGZF_HEAD, i + 1)
            if offset + len(buf) >= size:
                return size
            offset += len(buf) - 32  # overlap: a header cut by this read is found by the next one
        return size

    def _is_block(self, fh: BinaryIO, pos: int) -> bool:
        fh.seek(pos)
        return bool(_bgzf_block_size(fh.read(64), 0))

    def _gzip(self) -> Iterator[tuple[int, bytes]]:
        url, size = self.file.url, self.chunk_bytes
        emitted = 0  # decompressed bytes handed out so far: chunk boundaries are text offsets here
        with open_binary(url) as fh:
            dec, fed, pending = zlib.decompressobj(wbits=31), False, b""
            while True:
                data, pending = pending or fh.read(_GZIP_READ), b""
                if not data:
                    break
                while data:
                    try:  # at most 4 MiB out per call: memory stays bounded even for odd inputs
                        out = dec.decompress(data, 1 << 22)
                    except zlib.error as err:
                        raise InputError(
                            url, None, f"gzip data is corrupt ({err}); re-download or re-compress it"
                        ) from err
                    fed, data = True, dec.unconsumed_tail
                    for piece in _split_at(out, emitted, size):
                        yield emitted // size, piece
                        emitted += len(piece)
                    if dec.eof:  # multi-member gzip (bgzip, concatenated files): next member
                        pending, data = dec.unused_data, b""
                        dec, fed = zlib.decompressobj(wbits=31), False
                if pending and pending[:2] != _GZIP:
                    break  # trailing garbage after the last member is ignored, as gzip(1) does
            if fed and not dec.eof:
                raise InputError(url, None, "compressed data is truncated; re-download or re-compress it")


def _split_at(data: bytes, offset: int, size: int) -> Iterator[bytes]:
    """Split ``data`` (starting at text ``offset``) at multiples of ``size``."""
    pos = 0
    while pos < len(data):
        end = min(len(data), pos + size - (offset + pos) % size)
        yield data if pos == 0 and end == len(data) else data[pos:end]
        pos = end


def _inflate_bgzf(block: bytes, url: str, pos: int) -> bytes:
    """The text of one BGZF block, checked against its CRC32 and size (decompression is ~60% of
    reading a bgzip genome; with the optional ``deflate`` package it runs through libdeflate)."""
    xlen = struct.unpack_from("<H", block, 10)[0]
    crc, isize = struct.unpack_from("<II", block, len(block) - 8)
    if isize > _MAX_BGZF_BLOCK:  # BGZF blocks hold at most 64 KiB: a larger claim would size a 4 GB buffer
        raise InputError(
            url, None, f"byte {pos}: BGZF block claims {isize} bytes of text (max 65536); corrupt"
        )
    data = block[12 + xlen : -8]
    try:
        if _libdeflate is not None and isize:
            text = _libdeflate.deflate_decompress(data, isize)
        else:
            text = zlib.decompress(data, -15)
    except Exception as err:  # zlib.error or deflate.DeflateError
        raise InputError(url, None, f"byte {pos}: BGZF block is corrupt ({err}); re-download it") from err
    if len(text) != isize or zlib.crc32(text) != crc:
        raise InputError(url, None, f"byte {pos}: BGZF block fails its CRC/size check; re-download it")
    return text


def bgzf_compress(data: bytes, block: int = 0xFF00, level: int = 6) -> bytes:
    """BGZF-compress ``data`` (blocks of ``block`` bytes, then the 28-byte EOF block), as bgzip does.

    Used by tests and the benchmark to make splittable inputs; ``bgzip`` from htslib writes the same
    format.
    """
    out = []
    for lo in range(0, len(data), block):
        piece = data[lo : lo + block]
        comp = zlib.compressobj(level, zlib.DEFLATED, -15)
        body = comp.compress(piece) + comp.flush()
        bsize = 18 + len(body) + 8
        head = _BGZF_HEAD + b"\x00\x00\x00\x00\x00\xff\x06\x00BC\x02\x00" + struct.pack("<H", bsize - 1)
        out.append(head + body + struct.pack("<II", zlib.crc32(piece), len(piece)))
    out.append(bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000"))
    return b"".join(out)
