"""Reading shards: one sample from its bytes, a whole shard, the offsets index; never unpickling."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from datapipe.common.errors import ShardError
from datapipe.shards.format import BLOCK, KEY, MEMBER, PAD, Sample, load_npy, parse_header


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def decode_sample(buf: bytes | memoryview, where: str, base: int = 0) -> Sample:
    """One sample from the bytes of its members (as cut by the shard index). ~10 us."""
    members: dict[str, memoryview] = {}
    key = None
    pos, view = 0, memoryview(buf)
    while pos < len(view):
        name, size = parse_header(view, pos, where)
        m = MEMBER.match(name)
        if not m or (key is not None and m.group(1) != key):
            raise ShardError(f"{where}: unexpected member '{name}' at byte {base + pos}; not a dnafm shard")
        key = m.group(1)
        if m.group(2) in members:
            raise ShardError(
                f"{where}: member '{name}' at byte {base + pos} is there twice; not a dnafm shard"
            )
        members[m.group(2)] = view[pos + BLOCK : pos + BLOCK + size]
        pos += BLOCK + size + (-size % BLOCK)
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
    seen: set[str] = set()
    while pos + BLOCK <= len(data) and data[pos : pos + BLOCK] != PAD:
        name, size = parse_header(data, pos, where)
        m = MEMBER.match(name)
        if not m:
            raise ShardError(f"{where}: unexpected member '{name}' at byte {pos}; not a dnafm shard")
        if m.group(1) != key:
            if m.group(1) in seen:  # a sample's members are consecutive: its key again is a second sample
                raise ShardError(
                    f"{where}: sample {m.group(1)} appears twice (byte {pos}); not a dnafm shard"
                )
            seen.add(m.group(1))
            offsets.append(pos)
            key = m.group(1)
        pos += BLOCK + size + (-size % BLOCK)
    if pos + 2 * BLOCK > len(data) or data[pos : pos + 2 * BLOCK] != PAD * 2:
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
        or int(offsets[-1]) + 2 * BLOCK != size
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
    _check_members(path)
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


def _check_members(path: str) -> None:
    """Refuse what WebDataset would pass over or trust: members other than regular files (links, devices,
    FIFOs), names other than ours (``../x``, ``/x``, sub-folders), and a name given twice. Reads only the
    headers (tarfile seeks past the data), so it costs a fraction of reading the shard."""
    try:
        with tarfile.open(path, "r:") as tar:
            names: set[str] = set()
            for info in tar:
                if not info.isreg():
                    raise ShardError(
                        f"shard {path}: member '{info.name}' is a {_TAR_KINDS.get(info.type, 'special file')}, "
                        "not a regular file; not a dnafm shard (refused)"
                    )
                if not MEMBER.match(info.name):
                    raise ShardError(f"shard {path}: unexpected member name '{info.name}'; not a dnafm shard")
                if info.name in names:
                    raise ShardError(f"shard {path}: member '{info.name}' is there twice; not a dnafm shard")
                names.add(info.name)
    except tarfile.TarError as err:
        raise ShardError(
            f"shard {path} is corrupt or truncated ({err}); re-run `dnafm prepare` to rewrite it"
        ) from err


_TAR_KINDS = {
    tarfile.SYMTYPE: "symbolic link",
    tarfile.LNKTYPE: "hard link",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "FIFO",
    tarfile.DIRTYPE: "folder",
}


def _from_wds(raw: dict[str, Any], path: str) -> Sample:
    key = raw["__key__"]
    if not re.fullmatch(KEY, key):
        raise ShardError(f"shard {path}: unexpected sample key '{key}'; not a dnafm shard")
    for name in raw:
        if not name.startswith("__") and not MEMBER.match(f"{key}.{name}"):
            raise ShardError(f"shard {path}: unexpected member '{key}.{name}'; not a dnafm shard")
    if "ids.npy" not in raw or "meta.json" not in raw:
        raise ShardError(f"shard {path}: sample '{key}' lacks ids.npy or meta.json")
    mask = load_npy(raw["mask.npy"], path) if "mask.npy" in raw else None
    return Sample(key=key, ids=load_npy(raw["ids.npy"], path), meta=json.loads(raw["meta.json"]), mask=mask)
