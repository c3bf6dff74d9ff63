"""Windows, shards, manifest verification and the training loader (real tar shards, WebDataset)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from datapipe.loader import LoaderConfig, ShardLoader
from datapipe.prepare import InputSpec, PrepareConfig, process_unit
from datapipe.shards import FORMAT_VERSION, Sample, ShardError, iter_shard, verify, write_shard
from datapipe.tokenizers import get_tokenizer
from datapipe.windows import cut_windows


def seq_of(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), dtype=np.uint8)


def test_cut_windows_counts_gc_and_drops_n():
    text = "GGCC" + "ATAT" + "NNNA" + "AC"  # windows of 4: gc 1.0, 0.0, >5% N (dropped), short tail
    windows, stats = cut_windows(seq_of(text), offset=100, window_bp=4, min_window_bp=3, max_n_frac=0.05)
    assert [(w.start, w.end, w.gc) for w in windows] == [(100, 104, 1.0), (104, 108, 0.0)]
    assert (stats.kept, stats.dropped_n, stats.dropped_short) == (2, 1, 1)
    assert stats.base_counts == {"A": 4, "C": 3, "G": 2, "T": 2, "N": 3}
    assert sum(stats.gc_hist) == 2


def test_gc_matches_a_direct_count():
    rng = np.random.default_rng(0)
    text = "".join(rng.choice(list("ACGTN"), 5000, p=[0.3, 0.2, 0.2, 0.29, 0.01]))
    windows, _ = cut_windows(seq_of(text), offset=0, window_bp=600, min_window_bp=1, max_n_frac=1.0)
    for w in windows:
        s = text[w.start : w.end]
        acgt = sum(s.count(b) for b in "ACGT")
        assert w.gc == pytest.approx((s.count("G") + s.count("C")) / acgt)


def make_samples(n: int, unit: int = 0) -> list[Sample]:
    return [
        Sample(
            key=f"u{unit:06d}-{i:06d}",
            ids=np.arange(i, i + 5, dtype=np.uint16),
            meta={"token": "R", "gc": i / n, "i": i},
        )
        for i in range(n)
    ]


def test_shard_round_trip_and_byte_reproducible(tmp_path):
    a = write_shard(tmp_path / "a.tar", make_samples(7))
    b = write_shard(tmp_path / "b.tar", make_samples(7))
    assert a["sha256"] == b["sha256"] and a["samples"] == 7 and a["tokens"] == 35
    back = list(iter_shard(tmp_path / "a.tar"))
    assert [s.key for s in back] == [f"u000000-{i:06d}" for i in range(7)]
    assert back[3].ids.tolist() == [3, 4, 5, 6, 7] and back[3].meta["i"] == 3
    assert not list(tmp_path.glob("*.tmp"))


def test_corrupt_and_missing_shards_name_the_file(tmp_path):
    write_shard(tmp_path / "a.tar", make_samples(50))
    data = (tmp_path / "a.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2 + 7])
    with pytest.raises(ShardError, match="cut.tar"):
        list(iter_shard(tmp_path / "cut.tar"))
    with pytest.raises(ShardError, match="missing"):
        list(iter_shard(tmp_path / "nope.tar"))


def prepared_dir(tmp_path, n_units: int = 3, per_unit: int = 10, shard_max: int = 4):
    """A data folder in prepare's layout, built from process_unit (the Ray task body) without Ray."""
    cfg = PrepareConfig(window_tokens=10, min_window_tokens=10, shard_max_samples=shard_max)
    rng = np.random.default_rng(0)
    shards = []
    (tmp_path / "shards").mkdir()
    (tmp_path / "units").mkdir()
    for u in range(n_units):
        seq = seq_of("".join(rng.choice(list("ACGT"), per_unit * 60)))
        unit = {
            "id": u,
            "path": "x.fa",
            "species": "human",
            "token": "R",
            "assembly": "x",
            "record": "chr",
            "start": u * len(seq),
            "end": (u + 1) * len(seq),
        }
        shards += process_unit(unit, seq, None, cfg.to_dict(), str(tmp_path))["shards"]
    manifest = {
        "format_version": FORMAT_VERSION,
        "tokenizer": cfg.tokenizer,
        "config": cfg.to_dict(),
        "shards": shards,
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def test_process_unit_tokens_are_the_genome(tmp_path):
    tok = get_tokenizer("dnagpt-6mer")
    rng = np.random.default_rng(5)
    text = "".join(rng.choice(list("ACGT"), 600))
    cfg = PrepareConfig(window_tokens=10, min_window_tokens=10)
    unit = {
        "id": 3,
        "path": "x.fa",
        "species": "human",
        "token": "R",
        "assembly": "x",
        "record": "chr1",
        "start": 1000,
        "end": 1600,
    }
    (tmp_path / "shards").mkdir()
    (tmp_path / "units").mkdir()
    result = process_unit(unit, seq_of(text), None, cfg.to_dict(), str(tmp_path))
    samples = list(iter_shard(tmp_path / "shards" / result["shards"][0]["name"]))
    assert len(samples) == 10
    for s in samples:
        lo, hi = s.meta["start"] - 1000, s.meta["end"] - 1000
        assert tok.decode(s.ids) == text[lo:hi] and s.meta["record"] == "chr1" and s.meta["token"] == "R"
    assert (tmp_path / "units" / "u000003.json").exists()


def test_verify_detects_tampering(tmp_path):
    data = prepared_dir(tmp_path)
    assert verify(data) == []
    victim = sorted((data / "shards").iterdir())[1]
    blob = bytearray(victim.read_bytes())
    blob[600] ^= 0xFF
    victim.write_bytes(bytes(blob))
    problems = verify(data)
    assert problems and victim.name in problems[0]


def keys(batch) -> list[int]:
    return batch["k"].tolist()


def collate(samples, rng):
    import torch

    return {"k": torch.tensor([s.meta["start"] for s in samples])}


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_is_deterministic_and_resumes_exactly(tmp_path, workers):
    data = prepared_dir(tmp_path)
    cfg = LoaderConfig(micro_batch_size=3, num_workers=workers, seed=7)
    full = [keys(next(it)) for it in [ShardLoader(data, cfg, collate=collate)] for _ in range(12)]
    again = ShardLoader(data, cfg, collate=collate)
    assert [keys(next(again)) for _ in range(12)] == full
    first = ShardLoader(data, cfg, collate=collate)
    head = [keys(next(first)) for _ in range(5)]
    resumed = ShardLoader(data, cfg, collate=collate)
    resumed.load_state_dict(first.state_dict())
    assert head + [keys(next(resumed)) for _ in range(7)] == full


def test_loader_ranks_are_disjoint_and_cover_an_epoch(tmp_path):
    data = prepared_dir(tmp_path, n_units=4, per_unit=6, shard_max=3)  # 24 samples in 8 shards of 3
    seen = []
    for rank in range(2):
        loader = ShardLoader(
            data,
            LoaderConfig(micro_batch_size=3, num_workers=0, seed=1),
            collate=collate,
            rank=rank,
            world_size=2,
        )
        seen.append({k for _ in range(4) for k in keys(next(loader))})
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == 24


def test_loader_state_refuses_another_world_size(tmp_path):
    data = prepared_dir(tmp_path)
    state = ShardLoader(data, LoaderConfig(num_workers=0), collate=collate, world_size=1).state_dict()
    with pytest.raises(ValueError, match="world_size"):
        ShardLoader(data, LoaderConfig(num_workers=0), collate=collate, rank=0, world_size=2).load_state_dict(
            state
        )


def test_input_spec_resolves_species():
    assert InputSpec(path="/x/GRCh37.fa.gz", species="human").token == "R"
    assert InputSpec(path="/x/GRCh37.fa.gz", species="human").assembly == "GRCh37"
    assert InputSpec(path="a.fa", species="<W>").token == "W"
    with pytest.raises(ValueError, match="unknown species 'dog'"):
        InputSpec(path="a.fa", species="dog")
