"""Fuzzing what `pretrain` and `prepare --verify` read from a prepared folder: shards (through WebDataset, and
through the offsets index as the loader does), their .idx.npy indexes, and manifest.json."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from datapipe.loader import ShardTable, check_shards
from datapipe.shards.format import SHARDS, Sample
from datapipe.shards.manifest import read_manifest, verify
from datapipe.shards.reader import decode_sample, iter_shard, scan_offsets
from datapipe.shards.writer import write_shard
from tests.fuzz import fuzz, mutated, outcome

NAME = "f0000-u000001-000"


def samples(n: int) -> list[Sample]:
    meta = {
        "start": 0,
        "end": 30,
        "gc": 0.5,
        "token": "R",
        "species": "human",
        "assembly": "a",
        "record": "c",
    }
    return [
        Sample(
            key=f"f0000-u000001-{i:06d}",
            ids=np.arange(i, 2 * i + 5, dtype=np.uint16),
            meta={**meta, "start": i, "strand": "+", "n_frac": 0.0},
            mask=np.packbits(np.ones(30, bool)) if i % 2 else None,
        )
        for i in range(n)
    ]


def _clean_folder() -> tuple[bytes, bytes, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        entry = write_shard(Path(tmp) / f"{NAME}.tar", samples(3))
        return (Path(tmp) / f"{NAME}.tar").read_bytes(), (Path(tmp) / f"{NAME}.idx.npy").read_bytes(), entry


TAR, INDEX, ENTRY = _clean_folder()
MANIFEST = {
    "format_version": 2,
    "tokenizer": "dnagpt-6mer",
    "config": {"window_tokens": 64},
    "shards": [ENTRY],
    "totals": {"samples": ENTRY["samples"], "tokens": ENTRY["tokens"], "bases": 90},
}


def _folder(tmp: Path, tar: bytes = TAR, index: bytes = INDEX, manifest: bytes | None = None) -> Path:
    (tmp / SHARDS).mkdir()
    (tmp / SHARDS / f"{NAME}.tar").write_bytes(tar)
    (tmp / SHARDS / f"{NAME}.idx.npy").write_bytes(index)
    (tmp / "manifest.json").write_bytes(manifest or json.dumps(MANIFEST).encode())
    return tmp


def _via_webdataset(path: Path):
    return [(s.key, s.ids.tolist(), s.meta) for s in iter_shard(path)]


def _via_scan(path: Path):
    data = path.read_bytes()
    offsets = scan_offsets(data, str(path))
    return [
        decode_sample(memoryview(data)[a:b], str(path), a).key
        for a, b in zip(offsets, offsets[1:], strict=False)
    ]


def _via_loader(folder: Path):
    """What the training loader does: check each shard against the manifest, cut samples by the index."""
    table = ShardTable.from_manifest(folder, read_manifest(folder))
    check_shards(folder, table, range(len(table)), skip_bad=False)  # what check_shards=all does at start
    keys = []
    for s in range(len(table)):
        fd, off = table.open_checked(s)  # what a process does before it first reads a shard
        os.close(fd)
        data = Path(table.path(s)).read_bytes()
        keys += [
            decode_sample(data[off[i] : off[i + 1]], table.path(s), int(off[i])).key
            for i in range(len(off) - 1)
        ]
    return keys


def _tar_op(draw, data: bytes) -> bytes:
    """Byte damage aimed at tar headers (name, size, type, checksum fields) as well as anywhere."""
    if not data:
        return data
    pos = draw(st.sampled_from([0, 100, 124, 148, 156, 512, 1024]) | st.integers(0, len(data) - 1))
    pos = min(pos + draw(st.integers(0, 11)), len(data) - 1)
    return data[:pos] + bytes([draw(st.integers(0, 255))]) + data[pos + 1 :]


@st.composite
def shard_bytes(draw) -> bytes:
    data = TAR
    for _ in range(draw(st.integers(1, 3))):
        data = _tar_op(draw, data) if draw(st.booleans()) else draw(mutated([data], max_ops=1))
    return data


@fuzz()
@given(data=shard_bytes())
def test_shard_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = _folder(Path(tmp), tar=data)
        path = folder / SHARDS / f"{NAME}.tar"
        outcome("shard.webdataset", _via_webdataset, path)
        outcome("shard.scan(verify)", _via_scan, path)
        outcome("shard.loader", _via_loader, folder, names=(path,), watch=folder)


@fuzz()
@given(data=mutated([INDEX]))
def test_shard_index(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = _folder(Path(tmp), index=data)
        # offsets that pass the index's own checks but point into a sample are caught reading the shard
        names = (folder / SHARDS / f"{NAME}.idx.npy", folder / SHARDS / f"{NAME}.tar")
        outcome("shard.index", _via_loader, folder, names=names, watch=folder)


@fuzz(2)
@given(data=mutated([json.dumps(MANIFEST, indent=1).encode()]))
def test_manifest(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = _folder(Path(tmp), manifest=data)
        # a manifest that disagrees with its folder is reported against the shard (or the folder) it names
        names = (
            folder / "manifest.json",
            folder / SHARDS / f"{NAME}.tar",
            folder / SHARDS / f"{NAME}.idx.npy",
            folder,
        )
        outcome("manifest", _via_loader, folder, names=names, watch=folder)
        outcome("manifest(verify)", verify, folder, names=names, watch=folder)
