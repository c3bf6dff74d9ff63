"""WebDataset tar shards and their manifest.

A sample in a shard is three tar members sharing a key (``<unit>-<index>``):

- ``ids.npy``   uint16 token ids of the window (numpy .npy, never pickled)
- ``meta.json`` species, token, assembly, record, start/end (0-based, end exclusive), strand,
                gc (G+C over A/C/G/T bases of the window), n_frac
- ``mask.npy``  optional: packed bits, 1 = soft-masked (lower-case) base, when kept

Shards are written with ``mtime=0`` and fixed owner fields so that the same samples give the
same bytes, under a temporary name that is renamed when complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
# Member names we write and accept; anything else in a shard is rejected (no path tricks).
_MEMBER = re.compile(r"^u\d{6}-\d{6}\.(ids\.npy|meta\.json|mask\.npy)$")


class ShardError(RuntimeError):
    """A shard is missing, unreadable or does not match the manifest."""


@dataclass(kw_only=True, slots=True)
class Sample:
    key: str
    ids: np.ndarray  # (num_tokens,) uint16
    meta: dict[str, Any]
    mask: np.ndarray | None = None  # packed bits of the soft mask


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def write_shard(path: Path, samples: list[Sample]) -> dict[str, Any]:
    """Write samples to ``path`` atomically; return the manifest entry (name, counts, sha256)."""
    import webdataset as wds

    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as stream:
        writer = wds.TarWriter(stream, encoder=False, mtime=0, user="dnafm", group="dnafm")
        for s in samples:
            record = {
                "__key__": s.key,
                "ids.npy": npy_bytes(s.ids),
                "meta.json": json.dumps(s.meta, sort_keys=True).encode(),
            }
            if s.mask is not None:
                record["mask.npy"] = npy_bytes(s.mask)
            writer.write(record)
        writer.close()
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(tmp, path)
    return {
        "name": path.name,
        "samples": len(samples),
        "tokens": int(sum(len(s.ids) for s in samples)),
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
    }


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def iter_shard(path: str | Path) -> Iterator[Sample]:
    """Samples of one shard in stored order, via WebDataset (raw bytes, decoded here without pickle)."""
    import webdataset as wds

    path = str(path)
    if not os.path.exists(path):
        raise ShardError(f"shard {path} is missing; re-run `dnafm prepare` or restore it")
    stream = wds.WebDataset(
        [path], shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False
    )
    try:
        for raw in stream:
            yield _decode(raw, path)
    except ShardError:
        raise
    except Exception as err:  # tarfile.ReadError, truncated member, bad npy header ...
        raise ShardError(
            f"shard {path} is corrupt or truncated ({type(err).__name__}: {err}); "
            "re-run `dnafm prepare` to rewrite it, or pass --skip-bad-shards"
        ) from err


def _decode(raw: dict[str, Any], path: str) -> Sample:
    key = raw["__key__"]
    for name in raw:
        if not name.startswith("__") and not _MEMBER.match(f"{os.path.basename(key)}.{name}"):
            raise ShardError(f"shard {path}: unexpected member '{key}.{name}'; not a dnafm shard")
    if "ids.npy" not in raw or "meta.json" not in raw:
        raise ShardError(f"shard {path}: sample '{key}' lacks ids.npy or meta.json")
    mask = load_npy(raw["mask.npy"]) if "mask.npy" in raw else None
    return Sample(
        key=os.path.basename(key), ids=load_npy(raw["ids.npy"]), meta=json.loads(raw["meta.json"]), mask=mask
    )


def read_manifest(data_dir: str | Path) -> dict[str, Any]:
    path = Path(data_dir) / MANIFEST
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


def verify(data_dir: str | Path) -> list[str]:
    """Re-read every shard and compare with the manifest. Returns a list of problems (empty = OK)."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    problems: list[str] = []
    for entry in manifest["shards"]:
        path = data_dir / "shards" / entry["name"]
        if not path.exists():
            problems.append(f"{entry['name']}: missing")
            continue
        if sha256_file(path) != entry["sha256"]:
            problems.append(f"{entry['name']}: sha256 differs from the manifest")
        try:
            samples = list(iter_shard(path))
        except ShardError as err:
            problems.append(str(err))
            continue
        tokens = sum(len(s.ids) for s in samples)
        if len(samples) != entry["samples"] or tokens != entry["tokens"]:
            problems.append(
                f"{entry['name']}: {len(samples)} samples / {tokens} tokens, "
                f"manifest says {entry['samples']} / {entry['tokens']}"
            )
    return problems
