"""The training loader on real tar shards: exactly once per epoch over ranks x workers, exact resume
(also at another world size), and bad shards both ways."""

from __future__ import annotations

import json
import logging
import os
import sys
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from datapipe.common.errors import ShardError
from datapipe.io import Storage
from datapipe.loader import START_CHECKS, LoaderConfig, SampleOrder, ShardLoader, start_checks
from datapipe.shards.manifest import FORMAT_VERSION
from datapipe.shards.writer import UnitWriter
from datapipe.windows import Rows

SIZES = [5, 13, 1, 20, 8, 17, 3, 9, 7, 13]  # 96 samples in shards of irregular sizes


def build(folder, sizes=SIZES):
    """A data folder in prepare's layout: one unit per shard, sample i has start == i (its id)."""
    storage = Storage(folder)
    storage.makedirs("shards")
    entries, first = [], 0
    for u, n in enumerate(sizes):
        writer = UnitWriter(storage, f"f0000-u{u:06d}", max_samples=1000, fsync=False)
        ids = [np.arange(i, i + 3 + i % 4, dtype="<u2").tobytes() for i in range(first, first + n)]
        rows = Rows(
            list(range(first, first + n)),
            [i + 1 for i in range(first, first + n)],
            ["+"] * n,
            [0.5] * n,
            [0.0] * n,
            ids,
            [len(x) // 2 for x in ids],
        )
        writer.add_rows(rows, [("human", "R", "test", "chr1")])
        entries += writer.wait()
        first += n
    manifest = {
        "format_version": FORMAT_VERSION,
        "tokenizer": "dnagpt-6mer",
        "config": {"window_tokens": 8},
        "shards": entries,
        "totals": {"samples": first, "tokens": sum(e["tokens"] for e in entries)},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture
def data(tmp_path):
    return build(tmp_path / "data")


def ids_of(samples, rng):
    """A collate that keeps the sample ids and some tensors of every dtype the trainer sends."""
    return {
        "k": torch.tensor([s.meta["start"] for s in samples]),
        "gc": torch.tensor([s.meta["gc"] for s in samples], dtype=torch.float32),
        "mask": torch.ones(len(samples), 3, dtype=torch.bool),
        "n": torch.tensor(sum(len(s.ids) for s in samples)),  # 0-dim, like num_tokens
    }


def take(loader, steps) -> list[list[int]]:
    return [next(loader)["k"].tolist() for _ in range(steps)]


def global_stream(data, world_size, batch, steps, *, workers=0, state=None, **cfg):
    """Samples in global order (step by step, rank by rank) and the loaders' final states."""
    loaders = []
    for rank in range(world_size):
        loader = ShardLoader(
            data,
            LoaderConfig(micro_batch_size=batch, num_workers=workers, seed=7, **cfg),
            collate=ids_of,
            rank=rank,
            world_size=world_size,
        )
        if state is not None:
            loader.load_state_dict(state)
        loaders.append(loader)
    out = []
    for _ in range(steps):
        for loader in loaders:
            out += next(loader)["k"].tolist()
    return out, [loader.state_dict() for loader in loaders]


def test_two_ranks_two_workers_see_every_sample_once_per_epoch(data):
    reference, _ = global_stream(data, 1, 1, 192)  # two epochs, one sample per step
    assert sorted(reference[:96]) == list(range(96)) and sorted(reference[96:]) == list(range(96))
    assert reference[:96] != reference[96:]  # each epoch has its own order
    seen, states = global_stream(data, 2, 3, 32, workers=2)  # 2 x 3 x 16 = one epoch per 16 steps
    assert seen == reference  # the same global order, sliced by rank and built by workers
    assert all(s["samples_consumed"] == 192 and s["batches_consumed"] == 32 for s in states)


def test_order_is_deterministic_and_depends_on_the_seed(data):
    a, _ = global_stream(data, 1, 4, 10)
    b, _ = global_stream(data, 1, 4, 10)
    loader = ShardLoader(data, LoaderConfig(micro_batch_size=4, num_workers=0, seed=8), collate=ids_of)
    assert a == b and take(loader, 10) != [a[i : i + 4] for i in range(0, 40, 4)]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_is_exact(data, workers):
    full, _ = global_stream(data, 2, 3, 20, workers=workers)
    head, states = global_stream(data, 2, 3, 7, workers=workers)
    assert states[0] == states[1]  # every rank saves the same, world-size-free state
    tail, _ = global_stream(data, 2, 3, 13, workers=workers, state=states[0])
    assert head + tail == full


@pytest.mark.parametrize("new_world, new_batch", [(3, 2), (1, 5), (4, 4)])
def test_resume_at_another_world_size_repeats_and_skips_nothing(data, new_world, new_batch):
    reference, _ = global_stream(data, 1, 1, 400)
    head, states = global_stream(data, 2, 3, 9)  # 54 samples
    tail, _ = global_stream(data, new_world, new_batch, 20, state=states[0])
    assert head + tail == reference[: 54 + 20 * new_world * new_batch]


def test_mixing_groups_of_shards(data):
    order = SampleOrder(SIZES, seed=1, mix=1)
    shards, samples = order.locate(np.arange(96))
    runs = np.flatnonzero(np.diff(shards)) + 1
    assert len(runs) == len(SIZES) - 1  # mix=1: each shard's samples are consecutive
    assert sorted(zip(shards.tolist(), samples.tolist(), strict=True)) == [
        (s, i) for s, n in enumerate(SIZES) for i in range(n)
    ]
    mixed, _ = SampleOrder(SIZES, seed=1, mix=16).locate(np.arange(96))
    assert len(np.flatnonzero(np.diff(mixed))) > 40  # one group: shards interleave


def test_states_that_cannot_continue_the_order_are_refused(data):
    loader = ShardLoader(data, LoaderConfig(num_workers=0, seed=7), collate=ids_of)
    with pytest.raises(ValueError, match="older dnafm"):
        loader.load_state_dict(
            {"batches_consumed": 3, "rank": 0, "world_size": 1, "seed": 7, "micro_batch_size": 8}
        )
    state = loader.state_dict()
    other = ShardLoader(data, LoaderConfig(num_workers=0, seed=8), collate=ids_of)
    with pytest.raises(ValueError, match="seed=7"):
        other.load_state_dict(state)


def damage(data, how: str) -> str:
    """Damage the 4th shard of the manifest (20 samples); returns its name."""
    entry = json.loads((data / "manifest.json").read_text())["shards"][3]
    path = data / "shards" / entry["name"]
    blob = bytearray(path.read_bytes())
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(bytes(blob[: len(blob) // 2]))
    elif how == "garbage":  # same size, overwritten from the start
        path.write_bytes(bytes(len(blob)))
    elif how == "index":
        (data / "shards" / entry["index"]).unlink()
    return entry["name"]


@pytest.mark.parametrize("how", ["missing", "truncated", "garbage", "index"])
def test_a_bad_shard_stops_the_run_with_its_name_or_is_skipped_and_counted(data, how, caplog):
    name = damage(data, how)
    with pytest.raises(ShardError, match=rf"{name}.*--skip-bad-shards"):
        ShardLoader(data, LoaderConfig(num_workers=0), collate=ids_of)
    with caplog.at_level(logging.WARNING, logger="datapipe.loader"):
        seen, states = global_stream(data, 2, 2, 19, workers=2, skip_bad_shards=True)  # 76 = one epoch
    assert name in caplog.text and states[0]["skipped_shards"] == [name]
    assert sorted(seen) == [i for i in range(96) if not 19 <= i < 39]  # its 20 samples (ids 19..38), no other
    loader = ShardLoader(data, LoaderConfig(num_workers=0, skip_bad_shards=True), collate=ids_of)
    assert loader.skipped_shards == 1 and loader.order.epoch_samples == 76


def test_damage_inside_a_sample_stops_the_run_naming_the_shard(data):
    entry = json.loads((data / "manifest.json").read_text())["shards"][1]
    path = data / "shards" / entry["name"]
    blob = bytearray(path.read_bytes())
    blob[512 + 5] ^= 0x40  # the first member's name: its header checksum fails when read
    path.write_bytes(bytes(blob))
    loader = ShardLoader(
        data, LoaderConfig(micro_batch_size=96, num_workers=0, skip_bad_shards=True), collate=ids_of
    )
    with pytest.raises(ShardError, match=rf"{entry['name']}.*--verify"):
        next(loader)


def test_trainer_batches_cross_the_worker_boundary_intact(data):
    from datapipe.tokenizers import get_tokenizer
    from trainer.samples import GptSampleBuilder

    builder = GptSampleBuilder(tokenizer=get_tokenizer("dnagpt-6mer"), max_seq_len=16)
    batches = {}
    for workers in (0, 2):
        loader = ShardLoader(data, LoaderConfig(micro_batch_size=4, num_workers=workers), collate=builder)
        batches[workers] = [next(loader) for _ in range(6)]
    for a, b in zip(batches[0], batches[2], strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


_OPENED: list[str] | None = None  # files opened by this process while `opened_files` counts


def _audit(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], str | bytes | os.PathLike):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # sees every open(), os.open() and Path.read_bytes() of this process


@contextmanager
def opened_files():
    global _OPENED
    _OPENED = paths = []
    try:
        yield paths
    finally:
        _OPENED = None


def shard_reads(paths: list[str]) -> tuple[int, int]:
    """(manifest reads, shard and index files opened)."""
    return sum(p.endswith("manifest.json") for p in paths), sum(f"{os.sep}shards{os.sep}" in p for p in paths)


def test_start_up_reads_one_manifest_and_a_fixed_sample_of_shards_whatever_their_number(tmp_path):
    reads = {}
    for n in (20, 60):
        data = build(tmp_path / f"d{n}", [3] * n)
        for checks in ("sample", "all"):
            with opened_files() as paths:
                ShardLoader(
                    data,
                    LoaderConfig(num_workers=0, check_shards=checks),
                    collate=ids_of,
                    rank=1,
                    world_size=2,
                )
            reads[n, checks] = shard_reads(paths)
    assert reads[20, "sample"] == reads[60, "sample"] == (1, 2 * START_CHECKS)  # each: the tar and its index
    assert reads[20, "all"] == (1, 40) and reads[60, "all"] == (1, 120)  # the full check is still there
    loader = ShardLoader(data, LoaderConfig(micro_batch_size=4, num_workers=0), collate=ids_of)
    with opened_files() as paths:
        seen = take(loader, 45)  # one epoch of 180 samples
    assert sorted(sum(seen, [])) == list(range(180))
    assert shard_reads(paths) == (0, 120)  # every shard checked and opened once, when first read


def test_a_bad_shard_outside_the_start_sample_stops_the_run_when_first_read(tmp_path):
    data = build(tmp_path / "data", [3] * 60)
    assert start_checks(60, seed=0, rank=0) != start_checks(
        60, seed=0, rank=1
    )  # ranks check different shards
    victim = min(set(range(60)) - set(start_checks(60, seed=0, rank=0)))
    entry = json.loads((data / "manifest.json").read_text())["shards"][victim]
    (data / "shards" / entry["index"]).unlink()
    loader = ShardLoader(data, LoaderConfig(micro_batch_size=4, num_workers=0), collate=ids_of)
    with pytest.raises(
        ShardError, match=rf"bad shard {entry['name']}: its index .* is missing.*--skip-bad-shards"
    ):
        take(loader, 45)
    with pytest.raises(ShardError, match=rf"bad shard {entry['name']}"):
        ShardLoader(data, LoaderConfig(num_workers=0, check_shards="all"), collate=ids_of)
