"""`dnafm prepare` end to end on a real local Ray instance (one per module), real genomes, real tar shards.

Covers issue #3's prepare side: determinism across worker counts and input encodings, resuming,
a killed driver and a killed worker, MAF, DNABERT and the options, and one clear error per bad
input with nothing partial left behind.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from datapipe.fasta import FastaFormatError, read_fasta
from datapipe.io import bgzf_compress
from datapipe.maf import MafFormatError
from datapipe.prepare import InputSpec, PrepareConfig, run_prepare
from datapipe.shards.manifest import read_manifest, verify
from datapipe.shards.reader import iter_shard
from datapipe.tokenizers import get_tokenizer
from tests.conftest import REPO, run_cli
from tests.helpers import DATA_ROOT, needs_data

pytestmark = pytest.mark.slow

SHARED = DATA_ROOT / "genomes"
CHR20_SLICE = REPO / "data/genomes/grch37_chr20_44-46Mb.fa.gz"  # plain gzip, 2 Mb
ECOLI = REPO / "data/genomes/ecoli_k12_mg1655.fa.gz"  # plain gzip, 4.6 Mb
MAF = SHARED / "chr22_subset_human_chimp_gorilla_orangutan.maf.gz"
APES = {"Hsap": ["human", "R"], "Ptro": ["chimp", "W"], "Ggor": ["gorilla", "Y"], "Ppyg": ["orangutan", "X"]}


@pytest.fixture(scope="module")
def ray_address(ray_cluster):
    return ray_cluster


@pytest.fixture(scope="module")
def genomes(tmp_path_factory, data_root) -> dict[str, Path]:
    """Real sequence in each encoding prepare reads: bgzip, plain gzip, plain text (several records,
    soft-masked bases), and a MAF slice (the first 400 blocks of the chr22 ape alignment)."""
    d = tmp_path_factory.mktemp("genomes")
    rec = next(read_fasta(CHR20_SLICE, soft_mask="mask"))
    seq = rec.seq.tobytes()
    lower = np.where(rec.mask, np.frombuffer(seq, np.uint8) | 0x20, np.frombuffer(seq, np.uint8)).tobytes()
    text = b"".join(
        b">part%d slice of GRCh37 chr20\n" % i
        + b"\n".join(lower[lo : lo + 200_000][j : j + 60] for j in range(0, 200_000, 60))
        + b"\n"
        for i, lo in enumerate(range(0, 1_000_000, 200_000))
    )
    (d / "slice.fa").write_bytes(text)
    (d / "slice.fa.gz").write_bytes(bgzf_compress(text))
    (d / "slice.gz.fa.gz").write_bytes(gzip.compress(text, compresslevel=1))
    with gzip.open(MAF, "rb") as f:
        head = f.read(5_000_000)
    blocks = head.split(b"\n\na")
    assert len(blocks) > 401
    maf = blocks[0] + b"".join(b"\n\na" + b for b in blocks[1:400]) + b"\n"
    (d / "apes.maf").write_bytes(maf)
    (d / "apes.maf.gz").write_bytes(gzip.compress(maf, compresslevel=1))
    (d / "apes.bgz.maf.gz").write_bytes(bgzf_compress(maf))
    return {
        "bgzf": d / "slice.fa.gz",
        "gzip": d / "slice.gz.fa.gz",
        "plain": d / "slice.fa",
        "maf": d / "apes.maf.gz",
        "maf_bgzf": d / "apes.bgz.maf.gz",
        "maf_plain": d / "apes.maf",
    }


def snapshot(out: Path) -> dict[str, bytes]:
    """Every shard, index and the manifest, by name (what must be byte-identical between runs)."""
    files = {p.name: p.read_bytes() for p in sorted((out / "shards").iterdir())}
    files["manifest.json"] = (out / "manifest.json").read_bytes()
    return files


def all_samples(out: Path) -> list[tuple[dict, list[int]]]:
    m = read_manifest(out)
    return [(s.meta, s.ids.tolist()) for e in m["shards"] for s in iter_shard(out / "shards" / e["name"])]


CFG = {"window_tokens": 100, "shard_max_samples": 64, "region_bp": 64_000}


def test_same_bytes_whatever_the_worker_count(ray_address, genomes, tmp_path):
    inputs = [
        InputSpec(path=str(genomes["bgzf"]), species="human"),
        InputSpec(path=str(genomes["plain"]), species="<W>"),
        InputSpec(path=str(ECOLI), species="ecoli"),
    ]
    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        manifest = run_prepare(inputs, out, PrepareConfig(**CFG, num_workers=workers))
        assert verify(out) == []
        runs[workers] = snapshot(out)
    assert runs[1] == runs[2]
    t = manifest["totals"]
    assert manifest["inputs"][0]["units"] > 10  # the bgzip input was cut into many chunks
    assert t["bases"] == 2 * 1_000_000 + 4_639_675  # E. coli K-12 MG1655: 4,639,675 bp
    assert set(manifest["tokens_per_species"]) == {"human", "<W>", "ecoli"}
    assert sum(manifest["tokens_per_species"].values()) == t["tokens"]
    assert sum(manifest["gc_histogram"]["counts"]) == t["windows_kept"] == t["samples"]
    assert manifest["config"]["window_tokens"] == 100 and "num_workers" not in manifest["config"]
    assert "non-overlapping windows of 100 6-mer tokens" in manifest["recipe"]["layout"]


def test_every_input_encoding_gives_the_same_windows_of_the_genome(ray_address, genomes, tmp_path):
    """bgzip (chunked, stitched), plain text (chunked) and plain gzip (streamed) agree, and the
    tokens of every window decode back to the genome at the window's coordinates."""
    samples = {}
    for kind in ("bgzf", "plain", "gzip"):
        out = tmp_path / kind
        spec = InputSpec(path=str(genomes[kind]), species="human", assembly="GRCh37")
        run_prepare([spec], out, PrepareConfig(**CFG, num_workers=2))
        samples[kind] = all_samples(out)
    assert samples["bgzf"] == samples["plain"] == samples["gzip"]
    genome = {r.name: r.seq.tobytes().decode() for r in read_fasta(genomes["plain"])}
    tok = get_tokenizer("dnagpt-6mer")
    assert len(samples["bgzf"]) == 5 * (200_000 // 600 + 1)  # every record: full windows + a 200 bp tail
    for meta, ids in samples["bgzf"][::7]:
        window = genome[meta["record"]][meta["start"] : meta["end"]]
        assert tok.decode(ids) == window[: len(window) // 6 * 6] + ("<0>" if len(window) % 6 else "")
        acgt = sum(window.count(b) for b in "ACGT")
        assert meta["gc"] == pytest.approx((window.count("G") + window.count("C")) / acgt, abs=1e-6)


def test_rerun_finishes_only_the_missing_units(ray_address, genomes, tmp_path):
    inputs = [
        InputSpec(path=str(genomes["bgzf"]), species="human"),
        InputSpec(path=str(CHR20_SLICE), species="human"),
    ]
    out = tmp_path / "out"
    run_prepare(inputs, out, PrepareConfig(**CFG))
    reference = snapshot(out)
    markers = sorted((out / "units").glob("f0000-u*.json"))
    lost = markers[3:6]
    for marker in lost:  # an interrupted run: units without markers, one half-written shard
        marker.unlink()
    victim = json.loads((out / "units" / markers[0].name).read_text())["shards"][0]["name"]
    (out / "shards" / f"{victim}.tmp-0123").write_bytes(b"partial")
    (out / "manifest.json").unlink()
    kept = {m.name: m.stat().st_mtime_ns for m in markers if m not in lost}
    time.sleep(0.01)
    run_prepare(inputs, out, PrepareConfig(**CFG))
    assert snapshot(out) == reference
    assert {m: (out / "units" / m).stat().st_mtime_ns for m in kept} == kept  # done units not redone
    assert all((out / "units" / m.name).exists() for m in lost)
    assert not list(out.rglob("*.tmp-*"))


def _busy_ray_workers(name: str) -> list:
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(name in part for part in p.info["cmdline"] or []):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


@needs_data("genomes/GRCh37_chr20.fa.gz")
def test_killed_driver_then_rerun_gives_the_uninterrupted_output(ray_address, tmp_path):
    chr20 = str(SHARED / "GRCh37_chr20.fa.gz")  # bgzip, 63 Mb: long enough to be killed mid-run
    args = [
        "prepare",
        chr20,
        "--species",
        "human",
        "--window-tokens",
        "508",
        "--num-workers",
        "1",
        "--set",
        "region_bp=2000000",
        "--no-mlflow",
        "--ray-address",
        ray_address,
    ]
    reference = tmp_path / "ref"
    run_prepare(
        [InputSpec(path=chr20, species="human")],
        reference,
        PrepareConfig(window_tokens=508, region_bp=2_000_000),
    )
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", *args, "--out", str(out)],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while (
        time.monotonic() < deadline and len(list((out / "units").glob("*.json"))) < 3 and proc.poll() is None
    ):
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list((out / "units").glob("*.json")))
    assert 0 < done < 37 and not (out / "manifest.json").exists(), (done, proc.stderr.read()[-2000:])
    while _busy_ray_workers("ray::fasta_chunk_unit") or _busy_ray_workers("ray::scan_task"):
        time.sleep(0.05)  # Ray stops the dead driver's tasks; wait so none writes during the re-run
    rerun = run_cli(*args, "--out", str(out))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert snapshot(out) == snapshot(reference)
    assert not list(out.rglob("*.tmp-*"))


@needs_data("genomes/GRCh37_chr20.fa.gz")
def test_a_killed_worker_is_retried_by_ray(ray_address, genomes, tmp_path):
    chr20 = str(SHARED / "GRCh37_chr20.fa.gz")
    cfg = PrepareConfig(window_tokens=508, region_bp=8_000_000)  # ~30 units of ~0.1 s
    reference = tmp_path / "ref"
    run_prepare([InputSpec(path=chr20, species="human")], reference, cfg)
    out = tmp_path / "out"
    errors: list[BaseException] = []

    def work():
        try:
            run_prepare([InputSpec(path=chr20, species="human")], out, cfg)
        except BaseException as err:  # noqa: BLE001 - handed to the test thread
            errors.append(err)

    thread = threading.Thread(target=work)
    thread.start()
    killed = 0
    while thread.is_alive() and not killed:
        for p in _busy_ray_workers("ray::fasta_chunk_unit"):
            p.kill()  # SIGKILL the Ray worker process running a unit: as if it had died
            killed += 1
            break
        time.sleep(0.002)
    thread.join()
    assert killed == 1 and not errors, errors
    assert snapshot(out) == snapshot(reference)


def test_maf_rows_become_species_sequences_and_chunks_agree(ray_address, genomes, tmp_path):
    samples = {}
    for kind in ("maf", "maf_bgzf", "maf_plain"):
        out = tmp_path / kind
        cfg = PrepareConfig(window_tokens=100, region_bp=40_000, shard_max_samples=256)
        manifest = run_prepare([InputSpec(path=str(genomes[kind]), sources=APES)], out, cfg)
        samples[kind] = all_samples(out)
    assert samples["maf"] == samples["maf_bgzf"] == samples["maf_plain"]
    assert set(manifest["tokens_per_species"]) == {"human", "chimp", "gorilla", "orangutan"}
    assert manifest["inputs"][0]["units"] > 5
    meta, ids = samples["maf"][0]
    assert (meta["assembly"], meta["record"], meta["species"], meta["token"]) == ("Hsap", "22", "human", "R")
    # The first human row, gaps removed, is the sequence of the first windows.
    text = gzip.decompress(genomes["maf"].read_bytes()).decode()
    row = next(line for line in text.splitlines() if line.startswith("s Hsap.22"))
    bases = row.split()[6].replace("-", "").upper()
    assert meta["start"] == int(row.split()[2])
    assert get_tokenizer("dnagpt-6mer").decode(ids) == bases[:600]


def test_dnabert_pieces_reverse_complement_and_soft_mask(ray_address, genomes, tmp_path):
    out = tmp_path / "bert"
    cfg = PrepareConfig(
        tokenizer="dnabert-6",
        window_tokens=510,
        min_window_tokens=5,
        reverse_complement=True,
        soft_mask="mask",
        region_bp=128_000,
    )
    manifest = run_prepare([InputSpec(path=str(genomes["bgzf"]), species="human")], out, cfg)
    samples = [s for e in manifest["shards"][:4] for s in iter_shard(out / "shards" / e["name"])]
    forward = [s for s in samples if s.meta["strand"] == "+"]
    assert len(samples) == 2 * len(forward) and all(s.mask is not None for s in samples)
    tokens = np.array([len(s.ids) for s in forward])
    assert tokens.min() >= 5 and tokens.max() == 510 and 0.3 < np.mean(tokens == 510) < 0.7
    assert "uniform in [5, 510] tokens" in manifest["recipe"]["layout"]
    assert manifest["recipe"]["reverse_complement"] is True and "mask" in manifest["recipe"]["soft_mask"]
    assert verify(out) == []


def test_file_urls_through_the_cli_and_verify(ray_address, genomes, tmp_path):
    out = tmp_path / "url"
    proc = run_cli(
        "prepare",
        f"file://{genomes['bgzf']}",
        "--species",
        "human",
        "--out",
        f"file://{out}",
        "--window-tokens",
        "100",
        "--ray-address",
        ray_address,
        "--no-mlflow",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_manifest(out)["totals"]["bases"] == 1_000_000
    assert run_cli("prepare", "--verify", str(out)).returncode == 0
    shard = sorted((out / "shards").glob("*.tar"))[0]
    shard.write_bytes(shard.read_bytes()[:-2048])
    proc = run_cli("prepare", "--verify", f"file://{out}")
    assert proc.returncode == 1 and shard.name in proc.stdout
    proc = run_cli("prepare", "--verify", str(out), "--num-workers", "2")  # shards read by 2 processes
    assert proc.returncode == 1 and shard.name in proc.stdout
    proc = run_cli("prepare", "--verify", str(out), "--num-workers", "0")
    assert proc.returncode == 1 and "--num-workers must be >= 1, got 0" in proc.stderr


# -- bad input: one clear error each, nothing partial left, a previous complete state intact ------


def test_malformed_fasta_in_a_late_chunk_names_its_line_and_leaves_nothing(ray_address, genomes, tmp_path):
    text = genomes["plain"].read_bytes()
    line = 3000
    lines = text.split(b"\n")
    lines[line - 1] = lines[line - 1][:10] + b"-" + lines[line - 1][10:]
    bad = tmp_path / "bad.fa"
    bad.write_bytes(b"\n".join(lines))
    out = tmp_path / "out"
    with pytest.raises(FastaFormatError, match=rf"bad.fa:{line}: character '-' is an alignment gap"):
        run_prepare([InputSpec(path=str(bad), species="human")], out, PrepareConfig(**CFG))
    assert not out.exists()
    out.mkdir()  # an empty folder made by the user is emptied again, not removed
    with pytest.raises(FastaFormatError, match=rf"bad.fa:{line}:"):
        run_prepare([InputSpec(path=str(bad), species="human")], out, PrepareConfig(**CFG))
    assert out.is_dir() and not any(out.iterdir())


def test_malformed_and_unmapped_maf_fail_with_their_line(ray_address, genomes, tmp_path):
    text = genomes["maf_plain"].read_bytes().decode()
    lines = text.split("\n")
    target = max(i for i, s in enumerate(lines) if s.startswith("s Ggor"))  # in the last chunk
    fields = lines[target].split()
    fields[3] = str(int(fields[3]) + 1)
    lines[target] = " ".join(fields)
    bad = tmp_path / "bad.maf.gz"
    bad.write_bytes(bgzf_compress("\n".join(lines).encode()))
    out = tmp_path / "out"
    cfg = PrepareConfig(window_tokens=100, region_bp=40_000)
    with pytest.raises(MafFormatError, match=rf"bad.maf.gz:{target + 1}: 's' line says size"):
        run_prepare([InputSpec(path=str(bad), sources=APES)], out, cfg)
    assert not out.exists()
    no_chimp = {k: v for k, v in APES.items() if k != "Ptro"}
    with pytest.raises(MafFormatError, match="unknown species 'Ptro'.*--species-table"):
        run_prepare([InputSpec(path=str(genomes["maf"]), sources=no_chimp)], out, cfg)
    assert not out.exists()


def test_empty_input_unknown_species_and_missing_species_table(ray_address, genomes, tmp_path):
    from datapipe.cli import input_specs

    (tmp_path / "empty.fa").write_bytes(b"")
    proc = run_cli("prepare", str(tmp_path / "empty.fa"), "--species", "human", "--out", str(tmp_path / "o"))
    err = proc.stderr.strip().splitlines()[-1]
    assert (
        proc.returncode == 1
        and err
        == f"dnafm prepare: error: {tmp_path / 'empty.fa'}: file is empty; give a "
        "FASTA or MAF file with sequence"
    ), proc.stderr[-2000:]
    (tmp_path / "blank.fa.gz").write_bytes(gzip.compress(b"\n\n  \n"))
    with pytest.raises(FastaFormatError, match="blank.fa.gz: file has no FASTA records"):
        run_prepare(
            [InputSpec(path=str(tmp_path / "blank.fa.gz"), species="human")], tmp_path / "o", PrepareConfig()
        )
    with pytest.raises(ValueError, match="no inputs given"):
        run_prepare([], tmp_path / "o", PrepareConfig())
    assert not (tmp_path / "o").exists()
    with pytest.raises(
        ValueError, match="is a MAF alignment: map its sources to species with --species-table"
    ):
        input_specs([str(genomes["maf"])], [], None)
    table = tmp_path / "apes.tsv"
    table.write_text(
        "# source species [token]\nHsap human\nPtro chimp <W>\nGgor gorilla <Y>\nPpyg orangutan dog\n"
    )
    with pytest.raises(ValueError, match="apes.tsv:5: unknown species 'dog'"):
        input_specs([str(genomes["maf"])], [], str(table))
    table.write_text("Hsap human\nPtro chimp <W>\nGgor gorilla <Y>\nPpyg orangutan <X>\nslice gorilla <Y>\n")
    maf, fasta = input_specs([str(genomes["maf"]), str(genomes["plain"])], [], str(table))
    assert maf.sources["Ptro"] == ["chimp", "W"] and (fasta.species, fasta.token) == ("gorilla", "Y")


def test_an_out_folder_of_another_run_is_refused_untouched(ray_address, genomes, tmp_path):
    out = tmp_path / "out"
    run_prepare([InputSpec(path=str(genomes["bgzf"]), species="human")], out, PrepareConfig(**CFG))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for change in (PrepareConfig(**{**CFG, "window_tokens": 50}), PrepareConfig(**CFG, seed=3)):
        with pytest.raises(FileExistsError, match="holds shards of another prepare run"):
            run_prepare([InputSpec(path=str(genomes["bgzf"]), species="human")], out, change)
    with pytest.raises(FileExistsError, match="the inputs"):
        run_prepare([InputSpec(path=str(genomes["bgzf"]), species="mouse")], out, PrepareConfig(**CFG))
    foreign = tmp_path / "foreign"
    (foreign / "shards").mkdir(parents=True)
    (foreign / "shards" / "x.tar").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="no prepare_config.json"):
        run_prepare([InputSpec(path=str(genomes["bgzf"]), species="human")], foreign, PrepareConfig(**CFG))
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert (foreign / "shards" / "x.tar").read_bytes() == b"x"


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    return (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )


def test_a_full_disk_fails_cleanly_on_a_real_small_file_system(ray_address, genomes, tmp_path):
    """Real ENOSPC from the kernel: a 1.5 MB tmpfs (needs root to mount; skipped otherwise)."""
    disk = tmp_path / "disk"
    if not _tmpfs(disk, "1500k"):
        pytest.skip("cannot mount a tmpfs here (needs root); the simulated test below still runs")
    try:
        inputs = [InputSpec(path=str(genomes["bgzf"]), species="human")]
        with pytest.raises(
            OSError, match="no space left on the device writing .*re-run the same command"
        ) as err:
            run_prepare(inputs, disk / "fresh", PrepareConfig(**CFG))
        assert err.value.errno == 28 and not (disk / "fresh").exists()
        # An interrupted run (some units done), then the re-run hits the full disk: what was there stays.
        small = tmp_path / "small.fa.gz"
        small.write_bytes(
            bgzf_compress(
                b"".join(
                    b">r%d\n%s\n"
                    % (i, next(read_fasta(CHR20_SLICE)).seq[i * 50_000 : (i + 1) * 50_000].tobytes())
                    for i in range(2)
                ),
                block=8000,
            )
        )
        inputs = [InputSpec(path=str(small), species="human")]
        cfg = PrepareConfig(**{**CFG, "region_bp": 20_000})
        resume = disk / "resume"
        run_prepare(inputs, resume, cfg)
        for marker in sorted((resume / "units").glob("*.json"))[2:]:
            for shard in json.loads(marker.read_text())["shards"]:
                (resume / "shards" / shard["name"]).unlink()
                (resume / "shards" / shard["index"]).unlink()
            marker.unlink()
        (resume / "manifest.json").unlink()
        before = {p: p.read_bytes() for p in resume.rglob("*") if p.is_file()}
        try:  # fill what is left of the disk
            with open(disk / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
        except OSError:
            pass
        with pytest.raises(OSError, match="no space left"):
            run_prepare(inputs, resume, cfg)
        after = {p: p.read_bytes() for p in resume.rglob("*") if p.is_file()}
        assert {p: after.get(p) for p in before} == before and not list(disk.rglob("*.tmp-*"))
        assert not (resume / "manifest.json").exists()
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_enospc_at_fsync_is_simulated_in_a_unit(genomes, tmp_path, monkeypatch):
    """Simulated (some file systems report ENOSPC only at fsync): the unit fails, leaves no temporary
    file and no done-marker, and the message says what to do."""
    from datapipe.io import sniff
    from datapipe.prepare import _fields, chunk_bytes
    from datapipe.units import Job, fasta_stream_units

    out = tmp_path / "out"
    (out / "shards").mkdir(parents=True)
    (out / "units").mkdir()

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    cfg = PrepareConfig(**CFG)
    f = sniff(str(genomes["gzip"]))
    job = Job(
        out=str(out),
        config=cfg.to_dict(),
        file=_fields(f),
        file_index=0,
        spec=vars(InputSpec(path=f.url, species="human")),
        chunk_bytes=chunk_bytes(f, cfg),
        first=0,
        last=None,
    )
    with pytest.raises(OSError, match="no space left on the device writing .*shards/f0000-u000000-000.tar"):
        fasta_stream_units(vars(job))
    assert not list(out.rglob("*.tmp-*")) and not list((out / "units").iterdir())
    shutil.rmtree(out)
