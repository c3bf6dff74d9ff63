"""Security drills: hostile shards (path tricks, links, devices, duplicates), manifests naming files outside their
folder, gzip bombs, checkpoints carrying pickled code, and species tables / configs trying to write outside --out."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from datapipe.common.errors import InputError, ShardError, UserError
from datapipe.shards.format import npy_header
from datapipe.shards.manifest import read_manifest
from datapipe.shards.reader import decode_sample, iter_shard, scan_offsets
from tests.conftest import REPO, run_cli
from tests.fuzz import gzip_bomb

KEY = "f0000-u000001-000000"
IDS = npy_header("<u2", 3) + np.arange(3, dtype="<u2").tobytes()
META = b'{"start": 0}'


def _member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


def _shard(path: Path, *extra: tuple) -> Path:
    """A shard with one good sample, then the hostile members."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in (_member(f"{KEY}.ids.npy", IDS), _member(f"{KEY}.meta.json", META), *extra):
            tar.addfile(info, None if data is None else io.BytesIO(data))
    return path


K2 = "f0000-u000001-000001"
HOSTILE = {
    "dot-dot": [_member(f"../{K2}.ids.npy", IDS), _member(f"../{K2}.meta.json", META)],
    "absolute": [_member(f"/tmp/{K2}.ids.npy", IDS), _member(f"/tmp/{K2}.meta.json", META)],
    "symlink": [_member(f"{K2}.ids.npy", kind=tarfile.SYMTYPE, link="/etc/passwd")],
    "hardlink": [_member(f"{K2}.ids.npy", kind=tarfile.LNKTYPE, link=f"{KEY}.ids.npy")],
    "char-device": [_member(f"{K2}.ids.npy", kind=tarfile.CHRTYPE)],
    "fifo": [_member(f"{K2}.ids.npy", kind=tarfile.FIFOTYPE)],
    "folder": [_member(f"{K2}.ids.npy", kind=tarfile.DIRTYPE)],
    "duplicate-member": [_member(f"{KEY}.ids.npy", IDS)],  # the first sample's ids, again
    "duplicate-sample": [_member(f"{K2}.ids.npy", IDS), _member(f"{K2}.meta.json", META)]
    + [_member(f"{KEY}.ids.npy", IDS), _member(f"{KEY}.meta.json", META)],
}


def _scan_and_decode(path: Path) -> list[str]:
    """How `prepare --verify` and the training loader read a shard: offsets, then each sample's bytes."""
    data = path.read_bytes()
    offsets = scan_offsets(data, str(path))
    return [decode_sample(data[a:b], str(path), a).key for a, b in zip(offsets, offsets[1:], strict=False)]


def test_a_plain_shard_passes(tmp_path: Path) -> None:
    path = _shard(tmp_path / "s.tar")
    assert [s.key for s in iter_shard(path)] == [KEY]
    assert _scan_and_decode(path) == [KEY]


@pytest.mark.parametrize("kind", sorted(HOSTILE))
@pytest.mark.parametrize(
    "reader", [lambda p: list(iter_shard(p)), _scan_and_decode], ids=["webdataset", "index"]
)
def test_hostile_shard_members_are_refused(kind: str, reader, tmp_path: Path) -> None:
    path = _shard(tmp_path / "s.tar", *HOSTILE[kind])
    with pytest.raises(ShardError, match="s.tar") as info:
        reader(path)
    assert "not a dnafm shard" in str(info.value) or "not a regular file" in str(info.value), info.value
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tar"]  # nothing extracted anywhere
    assert not Path(f"/tmp/{K2}.ids.npy").exists()


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "..", "sub/f.tar", ""])
def test_manifest_names_outside_the_folder_are_refused(name: str, tmp_path: Path) -> None:
    entry = {"name": name, "index": "f.idx.npy", "samples": 1, "tokens": 1, "bytes": 1}
    entry |= {"sha256": "", "index_sha256": ""}
    manifest = {"format_version": 2, "tokenizer": "dnagpt-6mer", "config": {"window_tokens": 8}}
    manifest |= {"shards": [entry], "totals": {}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="plain file names"):
        read_manifest(tmp_path)


# ------------------------------------------------------------------------------------------- gzip bombs

BOMB_GB = 4 if os.environ.get("DNAFM_FUZZ") == "long" else 1


def _peak_rss_mb(code: str, path: Path) -> tuple[float, str]:
    """Run ``code`` (with ``path`` bound) in a fresh interpreter; its peak RSS in MB and its output."""
    script = textwrap.dedent(
        f"""
        import resource, sys
        from pathlib import Path
        path = Path(sys.argv[1])
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        try:
            {code}
            print("ok")
        except Exception as err:
            print(type(err).__name__, err)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(path)], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    *out, peak = proc.stdout.strip().splitlines()
    return float(peak), "\n".join(out)


@pytest.fixture(scope="module")
def fasta_bomb(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.fa.gz"
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(path, "wb") as f:
        f.write(comp.compress(b">chrBomb\n"))
        line = b"ACGT" * 15 + b"\n"
        block = line * ((1 << 22) // len(line))
        for _ in range((BOMB_GB << 30) // len(block)):
            f.write(comp.compress(block))
        f.write(comp.flush())
    assert path.stat().st_size < (BOMB_GB << 30) / 200  # a small file ...
    return path


def test_gzip_bomb_fasta_streams_in_bounded_memory(fasta_bomb: Path) -> None:
    """fasta_summary (what prepare's planning and `--verify` style checks use) and prepare's own streaming
    reader keep a few blocks, whatever the record length; read_fasta would hold the record (one chromosome),
    as documented."""
    peak, out = _peak_rss_mb(
        "from datapipe.fasta import fasta_summary; print(fasta_summary(path))", fasta_bomb
    )
    assert out.startswith("[('chrBomb', ") and out.endswith("ok"), out
    assert peak < 200, f"fasta_summary of a {BOMB_GB} GB bomb peaked at {peak:.0f} MB more"
    peak, out = _peak_rss_mb(
        textwrap.dedent(
            """
            from datapipe.fasta_chunks import FastaStream
            from datapipe.io import ChunkReader, sniff
            stream, n = FastaStream(str(path), keep_mask=False), 0
            for _, piece in ChunkReader(sniff(str(path)), 64 << 20).pieces(0):
                n += sum(len(e[1]) for e in stream.feed(piece) if e[0] == "bases")
            print(n)
            """
        ).replace("\n", "\n            "),
        fasta_bomb,
    )
    assert "ok" in out, out
    assert peak < 300, f"prepare's stream over a {BOMB_GB} GB bomb peaked at {peak:.0f} MB more"


@pytest.mark.parametrize(
    ("name", "code", "error"),
    [
        ("bomb.bed.gz", "from eval.annotations import read_bed; read_bed(path)", "AnnotationFormatError"),
        ("bomb.hapt.gz", "from eval.haplotypes import read_haplotypes; read_haplotypes(path)", "InputError"),
    ],
)
def test_gzip_bomb_text_table_refused_at_the_line_limit(
    name: str, code: str, error: str, tmp_path: Path
) -> None:
    """A table that inflates to 1 GB without a line break: refused after MAX_LINE (16 MiB) characters."""
    path = tmp_path / name
    path.write_bytes(gzip_bomb(1 << 30, b"chr1\t1\t2 0 1 " * 1000))
    peak, out = _peak_rss_mb(code, path)
    assert out.startswith(error) and "longer than 16 MiB" in out, out
    assert peak < 300, f"peaked at {peak:.0f} MB more"


# --------------------------------------------------------------------------------- pickled checkpoints


class Payload:
    """What a hostile checkpoint pickles: unpickling it would create a marker file (run code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _checkpoint(run: Path, marker: Path, *, where: str) -> Path:
    """A run folder whose latest checkpoint looks complete; ``where`` holds a pickled payload."""
    ckpt = run / "checkpoints"
    tag = ckpt / "step0000001"
    tag.mkdir(parents=True)
    state = {
        "step": 1,
        "world_size": 1,
        "zero_stage": 1,
        "loader": {},
        "config": {"tokenizer": "dnagpt-6mer"},
    }
    (tag / "dnafm_state.json").write_text(json.dumps(state))
    (tag / "COMPLETE").write_text("")
    (ckpt / "latest").write_text("step0000001")
    torch.save({"torch": torch.get_rng_state()}, tag / "rng_rank0.pt")
    torch.save({"module": {"w": torch.zeros(2)}}, tag / "mp_rank_00_model_states.pt")
    torch.save({"optimizer_state_dict": {"x": Payload(marker)}}, tag / where)
    return tag


def test_checkpoint_with_pickled_code_is_refused(tmp_path: Path) -> None:
    from trainer.checkpoint import check_pickles, restore_rng

    marker = tmp_path / "code-ran"
    tag = _checkpoint(tmp_path / "run", marker, where="zero_pp_rank_0_mp_rank_00_optim_states.pt")
    with pytest.raises(InputError, match="optim_states.pt.*refused") as info:
        check_pickles(tag)
    assert "pathlib" in str(info.value)
    (tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt").unlink()
    check_pickles(tag)  # what is left is tensors only
    torch.save({"torch": Payload(marker)}, tag / "rng_rank0.pt")
    with pytest.raises(InputError, match="rng_rank0.pt: refused"):
        restore_rng(tag.parent, tag.name, 0)
    assert not marker.exists()


@pytest.mark.parametrize("where", ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"])
def test_export_of_a_hostile_checkpoint_fails_cleanly(where: str, tmp_path: Path) -> None:
    """`dnafm export` stops before DeepSpeed's consolidation, which unpickles with weights_only=False (without
    check_pickles, a payload in the model states file runs: checked by hand with deepspeed 0.19.8)."""
    marker = tmp_path / "code-ran"
    _checkpoint(tmp_path / "run", marker, where=where)
    proc = run_cli("export", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "export"))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "refused" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not marker.exists() and not (tmp_path / "export").exists()


@pytest.mark.parametrize("tag", ["../../elsewhere", "/etc", "..", "\u00e9\x00"])
def test_latest_tag_outside_the_folder_is_refused(tag: str, tmp_path: Path) -> None:
    from trainer.checkpoint import latest_tag

    (tmp_path / "latest").write_text(tag)
    with pytest.raises(UserError, match="latest"):
        latest_tag(tmp_path)


# ------------------------------------------------------------------------ writing outside --out


@pytest.mark.slow
def test_species_table_and_overrides_cannot_write_outside_out(tmp_path: Path) -> None:
    """Names and species of a species table, and --set values, end up in shard metadata only: a real
    `dnafm prepare` with hostile ones writes nothing outside --out (every output path is built from fixed
    names and unit numbers, never from input text)."""
    work = tmp_path / "work"
    work.mkdir()
    fasta = work / "genome.fa"
    rng = np.random.default_rng(0)
    fasta.write_text(">chr1\n" + "".join(rng.choice(list("ACGT"), 20_000)) + "\n")
    table = work / "species.txt"
    table.write_text(f"{fasta} ../../escaped <W>\n/etc/passwd ../../../tmp/evil <X>\n")
    before = {p for p in tmp_path.rglob("*")}
    out = work / "out"
    proc = run_cli(
        "prepare", str(fasta), "--species-table", str(table), "--out", str(out), "--no-mlflow",
        "--num-workers", "1", "--set", "tokenizer=dnagpt-6mer", timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    after = {p for p in tmp_path.rglob("*")}
    outside = {p for p in after - before if out not in p.parents and p != out}
    assert not outside, outside
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/evil").exists()
    assert read_manifest(out)["totals"]["samples"] > 0  # the run did write its shards, inside --out
