"""Windows, the shard format (real tar files read by tarfile, WebDataset and GNU tar), indexes, verify."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile

import numpy as np
import pytest

from datapipe.common.errors import ShardError
from datapipe.io import Storage
from datapipe.prepare import InputSpec, PrepareConfig
from datapipe.shards.format import Sample, load_npy
from datapipe.shards.manifest import verify
from datapipe.shards.reader import decode_sample, iter_shard, read_index, scan_offsets
from datapipe.shards.writer import UnitWriter, write_shard
from datapipe.tokenizers import get_tokenizer
from datapipe.windows import WindowMaker


def seq_of(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), dtype=np.uint8)


def make(config: PrepareConfig, text: str, offset: int = 0, key=(0, 0)):
    maker = WindowMaker(config)
    starts, ends = maker.layout(key, offset, offset + len(text))
    ends = np.minimum(ends, offset + len(text))
    return maker.make(seq_of(text), None, starts - offset, ends - starts, starts)


def test_windows_count_gc_drop_n_and_short_tails():
    cfg = PrepareConfig(tokenizer="dnagpt-6mer", window_tokens=1, min_window_tokens=1)  # windows of 6 bp
    # GC 1.0 | AT only | 2 N of 6 (> 5%) | 2-base tail (< 6 bp: short)
    rows, stats = make(cfg, "GGCCGC" + "ATATAA" + "ANNACG" + "AC", offset=96)  # a grid point
    assert (rows.starts, rows.ends, rows.gc) == ([96, 102], [102, 108], [1.0, 0.0])
    assert (stats.kept, stats.dropped_n, stats.dropped_short) == (2, 1, 1)
    assert dict(zip("ACGTN", stats.base_counts.tolist(), strict=True)) == {
        "A": 7,
        "C": 5,
        "G": 4,
        "T": 2,
        "N": 2,
    }
    assert stats.gc_hist.sum() == 2 and stats.tokens == 2


@pytest.mark.parametrize("tokenizer", ["dnagpt-6mer", "dnagpt-1to6mer", "dnabert-6"])
def test_window_stats_and_tokens_match_a_direct_count(tokenizer):
    """The fast path (per-k-mer counts in packed fields) and the general one agree with plain counting."""
    rng = np.random.default_rng(0)
    text = "".join(rng.choice(list("ACGTN"), 20_011, p=[0.3, 0.2, 0.2, 0.29, 0.01]))
    cfg = PrepareConfig(tokenizer=tokenizer, window_tokens=97, min_window_tokens=5, max_n_frac=1.0)
    offset = 2 * 582 if tokenizer.startswith("dnagpt") else 0  # windows are laid out from the record start
    rows, stats = make(cfg, text, offset=offset, key=(3, 1))
    tok = get_tokenizer(tokenizer)
    assert sum(stats.base_counts) == len(text)
    for s, e, gc, ids in zip(rows.starts, rows.ends, rows.gc, rows.ids, strict=True):
        w = text[s - offset : e - offset]
        assert gc == pytest.approx((w.count("G") + w.count("C")) / sum(w.count(b) for b in "ACGT"), abs=1e-6)
        got = np.frombuffer(bytes(ids), "<u2")
        assert got.tolist() == tok.encode(w).tolist()
    if tokenizer.startswith("dnagpt"):  # a grid of full windows from the record start, a short tail
        assert rows.starts[:3] == [offset, offset + 582, offset + 2 * 582]
    else:  # DNABERT: pieces of 5..97 tokens tile the record, half of them full length
        lengths = np.array(rows.ends) - np.array(rows.starts) - 5  # tokens = bases - k + 1
        assert lengths.min() >= 5 and lengths.max() == 97
        assert 0.3 < np.mean(lengths == 97) < 0.7
        assert rows.starts[1:] == rows.ends[:-1]


def test_reverse_complement_and_soft_mask_copies():
    cfg = PrepareConfig(window_tokens=2, min_window_tokens=2, reverse_complement=True, soft_mask="mask")
    maker = WindowMaker(cfg)
    seq = seq_of("AACCGGTTTTAC")
    mask = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], np.uint8)
    rows, _ = maker.make(seq, mask, np.array([0]), np.array([12]), np.array([0]))
    tok = get_tokenizer(cfg.tokenizer)
    assert rows.strands == ["+", "-"]
    assert tok.decode(np.frombuffer(bytes(rows.ids[1]), "<u2")) == "GTAAAACCGGTT"
    assert np.unpackbits(np.frombuffer(rows.masks[0], np.uint8))[:12].tolist() == mask.tolist()
    assert np.unpackbits(np.frombuffer(rows.masks[1], np.uint8))[:12].tolist() == mask[::-1].tolist()


def samples(n: int, unit: str = "f0000-u000001") -> list[Sample]:
    return [
        Sample(
            key=f"{unit}-{i:06d}",
            ids=np.arange(i, 2 * i + 5, dtype=np.uint16),
            meta={
                "start": i,
                "end": i + 30,
                "gc": i / n,
                "token": "R",
                "species": "human",
                "assembly": "a",
                "record": "chr1%",
                "strand": "+",
                "n_frac": 0.0,
            },
            mask=np.packbits(np.ones(30, bool)) if i % 2 else None,
        )
        for i in range(n)
    ]


def test_shards_are_plain_tar_read_by_tarfile_webdataset_and_gnu_tar(tmp_path):
    entry = write_shard(tmp_path / "f0000-u000001-000.tar", samples(7))
    assert entry["samples"] == 7 and entry["tokens"] == sum(i + 5 for i in range(7))
    with tarfile.open(tmp_path / "f0000-u000001-000.tar") as tar:
        members = tar.getmembers()
        assert [m.name for m in members[:3]] == [
            "f0000-u000001-000000.ids.npy",
            "f0000-u000001-000000.meta.json",
            "f0000-u000001-000001.ids.npy",
        ]
        assert {(m.mtime, m.uname, m.mode, m.type) for m in members} == {(0, "dnafm", 0o644, tarfile.REGTYPE)}
        meta = json.loads(tar.extractfile(members[1]).read())
    assert meta == {**samples(7)[0].meta} and meta["record"] == "chr1%"  # '%' survives the template
    back = list(iter_shard(tmp_path / "f0000-u000001-000.tar"))  # through webdataset
    assert [s.key for s in back] == [s.key for s in samples(7)]
    assert back[3].ids.tolist() == list(range(3, 11)) and back[3].mask is not None and back[2].mask is None
    if shutil.which("tar"):
        listing = subprocess.run(
            ["tar", "tf", str(tmp_path / "f0000-u000001-000.tar")], capture_output=True, text=True
        )
        assert listing.returncode == 0 and len(listing.stdout.split()) == 7 * 2 + 3


def test_shards_are_byte_reproducible_and_indexed(tmp_path):
    a = write_shard(tmp_path / "f0000-u000001-000.tar", samples(9))
    (tmp_path / "b").mkdir()
    b = write_shard(tmp_path / "b" / "f0000-u000001-000.tar", samples(9))
    assert a == b
    data = (tmp_path / "f0000-u000001-000.tar").read_bytes()
    offsets = read_index(tmp_path / "f0000-u000001-000.idx.npy", samples=9, size=len(data))
    assert offsets.tolist() == scan_offsets(data, "x")
    s = decode_sample(data[offsets[4] : offsets[5]], "x")
    assert s.key == "f0000-u000001-000004" and s.ids.tolist() == list(range(4, 13))
    assert not list(tmp_path.glob("*.tmp*"))


def test_writer_splits_units_into_shards(tmp_path):
    from datapipe.windows import Rows

    writer = UnitWriter(Storage(tmp_path), "f0002-u000005", max_samples=4, fsync=True)
    (tmp_path / "shards").mkdir()
    ids = np.arange(5, dtype="<u2").tobytes()
    rows = Rows(list(range(10)), list(range(1, 11)), ["+"] * 10, [0.5] * 10, [0.0] * 10, [ids] * 10, [5] * 10)
    writer.add_rows(rows, [("ecoli", "Q", "k12", "chr")])
    entries = writer.wait()
    assert [e["samples"] for e in entries] == [4, 4, 2]
    assert [e["name"] for e in entries] == [f"f0002-u000005-00{i}.tar" for i in range(3)]
    keys = [s.key for e in entries for s in iter_shard(tmp_path / "shards" / e["name"])]
    assert keys == [f"f0002-u000005-{i:06d}" for i in range(10)]


def test_corrupt_samples_raise_shard_errors_naming_the_shard(tmp_path):
    write_shard(tmp_path / "f0000-u000001-000.tar", samples(50))
    data = (tmp_path / "f0000-u000001-000.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2 + 7])
    with pytest.raises(ShardError, match="cut.tar"):
        list(iter_shard(tmp_path / "cut.tar"))
    with pytest.raises(ShardError, match="missing"):
        list(iter_shard(tmp_path / "nope.tar"))
    offsets = scan_offsets(data, "x")
    one = bytearray(data[offsets[3] : offsets[4]])
    one[10] ^= 0x20  # a name byte: the header checksum no longer matches
    with pytest.raises(ShardError, match="checksum"):
        decode_sample(bytes(one), "s.tar")
    with pytest.raises(ShardError, match="no end-of-archive"):
        scan_offsets(data[:-1024], "s.tar")


def test_npy_reader_never_unpickles():
    assert load_npy(_npy(np.arange(4, dtype="<u2"))).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        load_npy(_npy(np.array([{"a": 1}], dtype=object)))


def _npy(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


def test_verify_detects_tampering_and_count_mismatches(tmp_path):
    (tmp_path / "shards").mkdir()
    entries = [
        write_shard(tmp_path / "shards" / f"f0000-u00000{u}-000.tar", samples(6, f"f0000-u00000{u}"))
        for u in range(3)
    ]
    manifest = {
        "format_version": 2,
        "shards": entries,
        "totals": {"samples": 18, "tokens": sum(e["tokens"] for e in entries)},
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert verify(tmp_path) == []
    victim = tmp_path / "shards" / entries[1]["name"]
    blob = bytearray(victim.read_bytes())
    blob[512 + 128 + 2] ^= (
        0xFF  # a token id of sample 0 (after its tar and .npy headers): only sha256 sees it
    )
    victim.write_bytes(bytes(blob))
    problems = verify(tmp_path)
    assert len(problems) == 1 and victim.name in problems[0] and "sha256" in problems[0]
    (tmp_path / "shards" / entries[2]["index"]).unlink()
    assert any(entries[2]["index"] in p for p in verify(tmp_path))
    assert verify(tmp_path, workers=2) == verify(tmp_path)  # the same problems, in the same order


def test_input_spec_resolves_species():
    assert InputSpec(path="/x/GRCh37.fa.gz", species="human").token == "R"
    assert InputSpec(path="/x/GRCh37.fa.gz", species="human").assembly == "GRCh37"
    assert InputSpec(path="a.fa", species="<W>").token == "W"
    assert InputSpec(path="a.fa", species="chimp", token="<Y>").token == "Y"
    with pytest.raises(ValueError, match="unknown species 'dog'"):
        InputSpec(path="a.fa", species="dog")
