"""WebDataset tar shards, their per-shard index, and the manifest.

A sample is two or three tar members sharing a key ``f<input>-u<unit>-<index>``:

- ``ids.npy``   uint16 token ids of the window (numpy .npy format; read without pickle)
- ``meta.json`` species, token, assembly, record, start/end (0-based, end exclusive, in the
                record's coordinates as read; for a MAF row on '-', on the reverse strand as MAF
                counts them), strand ('-': reverse strand; a reverse-complement copy flips it),
                gc (G+C over A/C/G/T bases of the window), n_frac
- ``mask.npy``  only with ``soft_mask=mask``: packed bits, 1 = soft-masked base, in strand order

Any WebDataset or tar reader reads the shards (``iter_shard`` does, through webdataset). They are
plain ustar archives written here directly rather than through ``tarfile``: a 512-byte header is a
cached template plus name, size and checksum (~1 us), where ``tarfile``/``wds.TarWriter`` spend
~20 us per member, which at ~330 windows per Mb was most of the preparation time. Every header has
mtime 0, uid/gid 0 and owner ``dnafm``, so the same samples always give the same bytes.

Each shard ``S.tar`` has a sidecar ``S.idx.npy``: uint64 byte offsets of its samples' first
headers, then of the end-of-archive blocks (n + 1 values). The training loader reads a sample with
one ``pread`` of ``[offset[i], offset[i+1])``, so a data-parallel rank reads only its own samples.
The index is written with the shard rather than rebuilt by scanning tar headers when training
starts: scanning costs one read per member (~2,000 per shard), which at 10^5 shards on a network
file system is minutes of start-up on every rank; the index is one small read per shard.

Both files are written under a temporary name and renamed when complete; the manifest lists each
shard with its sample and token counts and the sha256 of the tar and of its index.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from datapipe.windows import Rows

if TYPE_CHECKING:
    from datapipe.io import Storage

MANIFEST = "manifest.json"
FORMAT_VERSION = 2
SHARDS = "shards"
# Member names we write and accept; anything else in a shard is rejected (no path tricks).
_KEY = r"f\d{4}-u\d{6}-\d{6}"
_MEMBER = re.compile(rf"^({_KEY})\.(ids\.npy|meta\.json|mask\.npy)$")
_BLOCK = 512
_NPY = re.compile(rb"^\{'descr': '(<u2|\|u1)', 'fortran_order': False, 'shape': \((\d+),\), \} *\n$")


class ShardError(RuntimeError):
    """A shard is missing, unreadable or does not match the manifest."""


@dataclass(kw_only=True, slots=True)
class Sample:
    key: str
    ids: np.ndarray  # (num_tokens,) uint16
    meta: dict[str, Any]
    mask: np.ndarray | None = None  # packed bits of the soft mask


# ---------------------------------------------------------------------------------------------
# Writing


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


_HEAD_MID = _octal(0o644, 8) + _octal(0, 8) + _octal(0, 8)  # mode, uid, gid (bytes 100..124)
_HEAD_MTIME = _octal(0, 12)  # bytes 136..148
_HEAD_TAIL = (  # typeflag '0', linkname, ustar magic+version, uname, gname, devmajor/minor, prefix
    b"0"
    + b"\0" * 100
    + b"ustar\x0000"
    + b"dnafm".ljust(32, b"\0")
    + b"dnafm".ljust(32, b"\0")
    + _octal(0, 8)
    + _octal(0, 8)
    + b"\0" * 155
    + b"\0" * 12
)
_HEAD_SUM = sum(_HEAD_MID) + sum(_HEAD_MTIME) + 8 * 32 + sum(_HEAD_TAIL)  # chksum field counts as spaces
assert 100 + len(_HEAD_MID) + 12 + len(_HEAD_MTIME) + 8 + len(_HEAD_TAIL) == _BLOCK


def tar_header(name: bytes, size: int) -> bytes:
    """A ustar header block for a regular file (``tarfile`` reads it back; see tests)."""
    if len(name) > 100:
        raise ValueError(f"tar member name longer than 100 bytes: {name!r}")
    size_field = _octal(size, 12)
    chksum = _HEAD_SUM + sum(name) + sum(size_field)
    return b"".join(
        (name.ljust(100, b"\0"), _HEAD_MID, size_field, _HEAD_MTIME, b"%06o\0 " % chksum, _HEAD_TAIL)
    )


@functools.cache
def npy_header(descr: str, n: int) -> bytes:
    """The .npy header of a 1-D array of ``n`` items (what ``np.save`` writes before the data)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": (n,)})
    return buf.getvalue()


_PAD = b"\0" * _BLOCK
_FINITE = float("inf")


class _JsonFloat(float):
    """A float whose %r is JSON's (NaN, Infinity): float's own repr ('nan', 'inf') is not JSON."""

    def __repr__(self) -> str:
        return json.dumps(float(self))


_SIZE_FIELDS: dict[int, tuple[bytes, int]] = {}


def _size_field(size: int) -> tuple[bytes, int]:
    """The header's size field and its byte sum (cached: most members have one of a few sizes)."""
    hit = _SIZE_FIELDS.get(size)
    if hit is None:
        field = _octal(size, 12)
        hit = _SIZE_FIELDS[size] = (field, sum(field))
    return hit


class ShardWriter:
    """Writes one work unit's samples into shards ``<unit>-<part>.tar`` of at most ``max_samples``.

    A full shard is written as soon as it is complete, so memory is one shard whatever the unit.
    The per-sample loop is the hot path of ``prepare`` (~330 windows per Mb): headers are spliced
    from cached pieces and the JSON from a per-record template, ~3-4 us per sample.
    """

    def __init__(
        self, storage: Storage, unit: str, *, max_samples: int, fsync: bool, folder: str = SHARDS
    ) -> None:
        self.storage, self.unit, self.max_samples, self.fsync = storage, unit, max_samples, fsync
        self.folder = folder
        self.entries: list[dict[str, Any]] = []
        self.count = 0  # samples of the unit so far (the index in the sample key)
        self._parts: list[bytes | memoryview] = []
        self._offsets: list[int] = []
        self._pos = 0
        self._tokens = 0
        self._pool: Any = None
        self._pending: Any = None

    def add_rows(
        self, rows: Rows, contexts: list[tuple[str, str, str, str]], keys: list[str] | None = None
    ) -> None:
        """Append samples; ``contexts`` are (species, token, assembly, record), indexed by
        ``rows.ctx`` (all rows use ``contexts[0]`` when it is None); ``keys`` override sample keys."""
        templates = [self._meta_template(*c) for c in contexts]
        prefix = self.unit.encode() + b"-"
        ids_sum, meta_sum, mask_sum = (sum(prefix + s) for s in (b".ids.npy", b".meta.json", b".mask.npy"))
        masks, ctx = rows.masks, rows.ctx
        parts, offsets = self._parts, self._offsets
        for j in range(len(rows.starts)):
            if keys is not None:
                name = keys[j].encode()
                digits_sum = sum(name) - sum(prefix)
            else:
                digits = b"%06d" % self.count
                name = prefix + digits
                digits_sum = sum(digits)
            offsets.append(self._pos)
            ids = rows.ids[j]
            n_tok = rows.n_tokens[j]
            hdr = npy_header("<u2", n_tok)
            size = len(hdr) + len(ids)
            field, field_sum = _size_field(size)
            parts += (
                (name + b".ids.npy").ljust(100, b"\0"),
                _HEAD_MID,
                field,
                _HEAD_MTIME,
                b"%06o\0 " % (_HEAD_SUM + ids_sum + digits_sum + field_sum),
                _HEAD_TAIL,
                hdr,
                ids,
            )
            pad = -size % _BLOCK
            if pad:
                parts.append(_PAD[:pad])
            pos = self._pos + _BLOCK + size + pad
            template = templates[ctx[j] if ctx is not None else 0]
            gc, n_frac = rows.gc[j], rows.n_frac[j]
            if not (_FINITE > gc > -_FINITE and _FINITE > n_frac > -_FINITE):  # NaN/inf: JSON's spelling
                gc, n_frac = _JsonFloat(gc), _JsonFloat(n_frac)
            meta = template % (rows.ends[j], gc, n_frac, rows.starts[j], rows.strands[j].encode())
            field, field_sum = _size_field(len(meta))
            parts += (
                (name + b".meta.json").ljust(100, b"\0"),
                _HEAD_MID,
                field,
                _HEAD_MTIME,
                b"%06o\0 " % (_HEAD_SUM + meta_sum + digits_sum + field_sum),
                _HEAD_TAIL,
                meta,
            )
            pad = -len(meta) % _BLOCK
            if pad:
                parts.append(_PAD[:pad])
            pos += _BLOCK + len(meta) + pad
            if masks is not None:
                mask = masks[j]
                mhdr = npy_header("|u1", len(mask))
                size = len(mhdr) + len(mask)
                field, field_sum = _size_field(size)
                parts += (
                    (name + b".mask.npy").ljust(100, b"\0"),
                    _HEAD_MID,
                    field,
                    _HEAD_MTIME,
                    b"%06o\0 " % (_HEAD_SUM + mask_sum + digits_sum + field_sum),
                    _HEAD_TAIL,
                    mhdr,
                    mask,
                )
                pad = -size % _BLOCK
                if pad:
                    parts.append(_PAD[:pad])
                pos += _BLOCK + size + pad
            self._pos = pos
            self.count += 1
            self._tokens += n_tok
            if len(offsets) == self.max_samples:
                self.flush()
                parts, offsets = self._parts, self._offsets

    @staticmethod
    @functools.cache
    def _meta_template(species: str, token: str, assembly: str, record: str) -> bytes:
        """The meta JSON around the per-window numbers, keys sorted as json.dumps(sort_keys=True) writes them."""

        def lit(value: str) -> bytes:
            return json.dumps(value).encode().replace(b"%", b"%%")

        return (
            b'{"assembly": '
            + lit(assembly)
            + b', "end": %d, "gc": %r, "n_frac": %r, "record": '
            + lit(record)
            + b', "species": '
            + lit(species)
            + b', "start": %d, "strand": "%s", "token": '
            + lit(token)
            + b"}"
        )

    def flush(self, name: str | None = None) -> None:
        """Write the samples collected so far as the next shard (nothing when there are none).

        Hashing, writing and fsync run on a background thread (they release the GIL), overlapping
        the next shard's tokenization; :meth:`wait` must be called before the unit is marked done.
        """
        if not self._offsets:
            return
        name = name or f"{self.unit}-{len(self.entries):03d}"
        self._offsets.append(self._pos)
        self._parts.append(b"\0" * (2 * _BLOCK))  # end-of-archive
        blob = b"".join(self._parts)
        index = npy_header("<u8", len(self._offsets)) + np.asarray(self._offsets, "<u8").tobytes()
        entry = {
            "name": f"{name}.tar",
            "samples": len(self._offsets) - 1,
            "tokens": self._tokens,
            "bytes": len(blob),
            "index": f"{name}.idx.npy",
        }
        self.entries.append(entry)
        self._parts, self._offsets, self._pos, self._tokens = [], [], 0, 0
        if self._pending is not None:
            self._pending.result()  # at most one shard in flight: memory stays one or two shards
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
        self._pending = self._pool.submit(self._write, entry, blob, index)

    def _write(self, entry: dict[str, Any], blob: bytes, index: bytes) -> None:
        entry["sha256"] = hashlib.sha256(blob).hexdigest()
        entry["index_sha256"] = hashlib.sha256(index).hexdigest()
        self.storage.write_bytes(blob, self.folder, entry["name"], fsync=self.fsync)
        self.storage.write_bytes(index, self.folder, entry["index"], fsync=self.fsync)

    def wait(self) -> list[dict[str, Any]]:
        """Flush, wait for every shard to be on storage (raising its error), return the entries."""
        self.flush()
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        return self.entries


def write_shard(path: str | Path, samples: list[Sample]) -> dict[str, Any]:
    """Write ``samples`` as one shard ``path`` (+ its index beside it); return its manifest entry.

    Keys must have the form ``f0000-u000000-000000``; meta needs the keys ``prepare`` writes.
    ``prepare`` itself writes through :class:`ShardWriter`.
    """
    from datapipe.io import Storage

    path = Path(path)
    stem = path.name.removesuffix(".tar")
    writer = ShardWriter(Storage(path.parent), stem, max_samples=len(samples) + 1, fsync=False, folder="")
    for s in samples:
        if not re.fullmatch(_KEY, s.key):
            raise ValueError(f"sample key {s.key!r} is not of the form f0000-u000000-000000")
        m = s.meta
        ids = np.ascontiguousarray(s.ids, "<u2").tobytes()
        rows = Rows(
            [int(m.get("start", 0))],
            [int(m.get("end", 0))],
            [str(m.get("strand", "+"))],
            [float(m.get("gc", 0.0))],
            [float(m.get("n_frac", 0.0))],
            [ids],
            [len(s.ids)],
            None if s.mask is None else [bytes(s.mask)],
        )
        writer.unit = s.key.rsplit("-", 1)[0]
        ctx = (m.get("species", ""), m.get("token", ""), m.get("assembly", ""), m.get("record", ""))
        writer.add_rows(rows, [ctx], keys=[s.key])
    writer.flush(stem)
    return writer.wait()[0]


# ---------------------------------------------------------------------------------------------
# Reading


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def load_npy(data: bytes | memoryview, where: str = "") -> np.ndarray:
    """A 1-D array from .npy bytes, never unpickling; our own headers take a fast path (~1 us)."""
    data = memoryview(data)
    if len(data) >= 128 and len(data) % 2 == 0:  # our uint16 arrays: compare with the header we write
        n = (len(data) - 128) // 2
        if data[:128] == npy_header("<u2", n):
            return np.frombuffer(data, np.uint16, n, 128)
    if bytes(data[:8]) == b"\x93NUMPY\x01\x00" and len(data) >= 10:
        hlen = int.from_bytes(data[8:10], "little")
        m = _NPY.match(bytes(data[10 : 10 + hlen]))
        if m:
            dtype = np.dtype(m.group(1).decode())
            n = int(m.group(2))
            if len(data) - 10 - hlen != n * dtype.itemsize:
                raise ValueError(f"{where}: .npy holds {len(data) - 10 - hlen} bytes, header says {n} items")
            return np.frombuffer(data, dtype, n, 10 + hlen)
    return np.load(io.BytesIO(bytes(data)), allow_pickle=False)


def parse_header(buf: bytes | memoryview, pos: int, where: str) -> tuple[str, int]:
    """(name, size) of the ustar header at ``pos``; checks it whole.

    Fast path (~1.5 us, the loader's hot path): our headers are our template plus name and size,
    so comparing the constant parts and the checksum of the two variable fields checks every byte.
    Any other header gets tar's own checksum and type checks, for a precise error.
    """
    block = bytes(buf[pos : pos + _BLOCK])
    if len(block) < _BLOCK:
        raise ShardError(f"{where}: truncated tar header at byte {pos}")
    raw_name = block[:100].split(b"\0", 1)[0]
    size_field = block[124:136]
    if (
        block[100:124] == _HEAD_MID
        and block[136:148] == _HEAD_MTIME
        and block[156:] == _HEAD_TAIL
        and block[148:156] == b"%06o\0 " % (_HEAD_SUM + sum(raw_name) + sum(size_field))
    ):
        try:
            return raw_name.decode("ascii"), int(size_field[:11], 8)
        except ValueError:
            pass  # not ours after all: the general checks below say what is wrong
    try:
        size = int(size_field.split(b"\0", 1)[0].strip() or b"0", 8)
        stored = int(block[148:156].split(b"\0", 1)[0].strip() or b"-1", 8)
    except ValueError:
        size = stored = -1
    if stored != sum(block[:148]) + 256 + sum(block[156:]) or size < 0:
        raise ShardError(f"{where}: bad tar header checksum at byte {pos} (corrupt shard)")
    if block[156:157] not in (b"0", b"\0"):
        raise ShardError(f"{where}: member at byte {pos} is not a regular file")
    return raw_name.decode("ascii", "replace"), size


def decode_sample(buf: bytes | memoryview, where: str, base: int = 0) -> Sample:
    """One sample from the bytes of its members (as cut by the shard index). ~10 us."""
    members: dict[str, memoryview] = {}
    key = None
    pos, view = 0, memoryview(buf)
    while pos < len(view):
        name, size = parse_header(view, pos, where)
        m = _MEMBER.match(name)
        if not m or (key is not None and m.group(1) != key):
            raise ShardError(f"{where}: unexpected member '{name}' at byte {base + pos}; not a dnafm shard")
        key = m.group(1)
        members[m.group(2)] = view[pos + _BLOCK : pos + _BLOCK + size]
        pos += _BLOCK + size + (-size % _BLOCK)
    if key is None or "ids.npy" not in members or "meta.json" not in members:
        raise ShardError(f"{where}: sample at byte {base} lacks ids.npy or meta.json")
    try:
        ids = load_npy(members["ids.npy"], where)
        meta = json.loads(bytes(members["meta.json"]))
        mask = load_npy(members["mask.npy"], where) if "mask.npy" in members else None
    except ValueError as err:  # includes JSONDecodeError and bad .npy headers
        raise ShardError(f"{where}: sample {key} is corrupt ({err})") from err
    if ids.dtype != np.uint16 or not isinstance(meta, dict):
        raise ShardError(f"{where}: sample {key} has ids of dtype {ids.dtype} or non-object meta")
    return Sample(key=key, ids=ids, meta=meta, mask=mask)


def scan_offsets(data: bytes, where: str) -> list[int]:
    """Sample offsets (+ end) of a whole shard read into memory: what its index must say."""
    offsets, pos, key = [], 0, None
    while pos + _BLOCK <= len(data) and data[pos : pos + _BLOCK] != _PAD:
        name, size = parse_header(data, pos, where)
        m = _MEMBER.match(name)
        if not m:
            raise ShardError(f"{where}: unexpected member '{name}' at byte {pos}; not a dnafm shard")
        if m.group(1) != key:
            offsets.append(pos)
            key = m.group(1)
        pos += _BLOCK + size + (-size % _BLOCK)
    if pos + 2 * _BLOCK > len(data) or data[pos : pos + 2 * _BLOCK] != _PAD * 2:
        raise ShardError(f"{where}: no end-of-archive blocks; the shard is truncated")
    return [*offsets, pos]


def read_index(path: str | Path, *, samples: int, size: int) -> np.ndarray:
    """A shard's offsets from its sidecar, checked against the manifest's sample count and tar size."""
    try:
        offsets = load_npy(Path(path).read_bytes(), str(path))
    except FileNotFoundError:
        raise ShardError(f"its index {path} is missing") from None
    except (OSError, ValueError) as err:
        raise ShardError(f"its index {path} is unreadable ({err})") from err
    if (
        offsets.dtype != np.uint64
        or len(offsets) != samples + 1
        or (len(offsets) > 1 and not (np.diff(offsets.astype(np.int64)) > 0).all())
        or int(offsets[-1]) + 2 * _BLOCK != size
    ):
        raise ShardError(
            f"its index {path} does not match it ({len(offsets) - 1} samples, the manifest says {samples}; "
            "or offsets out of order or past the end)"
        )
    return offsets.astype(np.int64)


def iter_shard(path: str | Path) -> Iterator[Sample]:
    """Samples of one shard in stored order, read by WebDataset (raw bytes, decoded here without pickle)."""
    import webdataset as wds

    path = str(path)
    if not os.path.exists(path):
        raise ShardError(f"shard {path} is missing; re-run `dnafm prepare` or restore it")
    stream = wds.WebDataset(
        [path], shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False
    )
    try:
        for raw in stream:
            yield _from_wds(raw, path)
    except ShardError:
        raise
    except Exception as err:  # tarfile.ReadError, truncated member, bad npy header ...
        raise ShardError(
            f"shard {path} is corrupt or truncated ({type(err).__name__}: {err}); "
            "re-run `dnafm prepare` to rewrite it, or pass --skip-bad-shards"
        ) from err


def _from_wds(raw: dict[str, Any], path: str) -> Sample:
    key = os.path.basename(raw["__key__"])
    for name in raw:
        if not name.startswith("__") and not _MEMBER.match(f"{key}.{name}"):
            raise ShardError(f"shard {path}: unexpected member '{key}.{name}'; not a dnafm shard")
    if "ids.npy" not in raw or "meta.json" not in raw:
        raise ShardError(f"shard {path}: sample '{key}' lacks ids.npy or meta.json")
    mask = load_npy(raw["mask.npy"], path) if "mask.npy" in raw else None
    return Sample(key=key, ids=load_npy(raw["ids.npy"], path), meta=json.loads(raw["meta.json"]), mask=mask)


def read_manifest(data_dir: str | Path) -> dict[str, Any]:
    path = local_dir(data_dir) / MANIFEST
    if not path.exists():
        raise ShardError(f"{path} not found: point --data at a folder written by `dnafm prepare`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ShardError(f"{path} is not valid JSON ({err}); re-run `dnafm prepare`") from err
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ShardError(
            f"{path}: format_version {manifest.get('format_version')!r}, "
            f"this dnafm reads {FORMAT_VERSION}; re-run `dnafm prepare`"
        )
    return manifest


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def local_dir(data_dir: str | Path) -> Path:
    """A data folder as a local path (``file://`` URLs accepted); training and verify read local files."""
    text = str(data_dir)
    if "://" in text:
        if not text.startswith("file://"):
            raise ShardError(
                f"{text}: only local folders (or file:// URLs) can be read here; copy the data locally"
            )
        text = text.removeprefix("file://")
    return Path(text)


def verify(data_dir: str | Path) -> list[str]:
    """Re-read every shard and its index and compare with the manifest. Problems found (empty = OK)."""
    data_dir = local_dir(data_dir)
    manifest = read_manifest(data_dir)
    problems: list[str] = []
    samples = tokens = 0
    for entry in manifest["shards"]:
        path = data_dir / SHARDS / entry["name"]
        if not path.exists():
            problems.append(f"{entry['name']}: missing")
            continue
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            problems.append(f"{entry['name']}: sha256 differs from the manifest")
        index_path = data_dir / SHARDS / entry["index"]
        if not index_path.exists() or sha256_file(index_path) != entry["index_sha256"]:
            problems.append(f"{entry['index']}: missing, or sha256 differs from the manifest")
        try:
            offsets = scan_offsets(data, str(path))
            if index_path.exists() and load_npy(index_path.read_bytes()).tolist() != offsets:
                problems.append(f"{entry['index']}: offsets differ from the shard's members")
            n_tok = 0
            for i in range(len(offsets) - 1):
                n_tok += len(
                    decode_sample(memoryview(data)[offsets[i] : offsets[i + 1]], str(path), offsets[i]).ids
                )
        except ShardError as err:
            problems.append(str(err))
            continue
        if len(offsets) - 1 != entry["samples"] or n_tok != entry["tokens"]:
            problems.append(
                f"{entry['name']}: {len(offsets) - 1} samples / {n_tok} tokens, "
                f"manifest says {entry['samples']} / {entry['tokens']}"
            )
        samples += len(offsets) - 1
        tokens += n_tok
    totals = manifest.get("totals", {})
    if not problems and (samples, tokens) != (totals.get("samples"), totals.get("tokens")):
        problems.append(
            f"totals: shards hold {samples} samples / {tokens} tokens, manifest totals say "
            f"{totals.get('samples')} / {totals.get('tokens')}"
        )
    return problems
