"""DNAGPT pretraining on real DeepSpeed engines, 2 CPU ranks over gloo (torchrun), as users launch it."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from tests.helpers import chr20_shards, curve, run_cut_at, tiny_gpt_args, torchrun

pytestmark = pytest.mark.slow
COMMON = tiny_gpt_args(num_workers=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return chr20_shards(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def zero_runs(data, tmp_path_factory) -> dict[int, Path]:
    runs = {}
    for stage in (0, 1, 2, 3):
        out = tmp_path_factory.mktemp(f"zero{stage}")
        proc = torchrun(
            2,
            *COMMON,
            "--data",
            str(data),
            "--out",
            str(out),
            "--steps",
            "8",
            "--zero-stage",
            str(stage),
            "--set",
            "train.ckpt_every=4",
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        runs[stage] = out
    return runs


def test_zero_stages_give_matching_losses(zero_runs):
    base = curve(zero_runs[0])
    assert len(base) == 8 and base[-1] < base[0]
    for stage in (1, 2, 3):
        # Same data, same initial weights: only the order of floating-point reductions differs.
        np.testing.assert_allclose(curve(zero_runs[stage]), base, rtol=2e-4, err_msg=f"ZeRO-{stage}")


def test_zero3_export_matches_zero1(zero_runs):
    from safetensors.torch import load_file

    a = load_file(str(zero_runs[1] / "final" / "model.safetensors"))
    b = load_file(str(zero_runs[3] / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-5, msg=k)


def test_kill_9_of_one_rank_then_resume_reproduces_the_curve(data, zero_runs, tmp_path):
    out = tmp_path / "run"
    args = [
        *COMMON,
        "--data",
        str(data),
        "--out",
        str(out),
        "--steps",
        "8",
        "--zero-stage",
        "1",
        "--set",
        "train.ckpt_every=4",
    ]
    launcher = torchrun(2, *args, wait=False)
    latest = out / "checkpoints" / "latest"
    deadline = time.time() + 300
    while not (latest.exists() and latest.read_text().strip() == "step0000004"):
        assert launcher.poll() is None, (
            f"run ended before it could be killed:\n{launcher.stdout.read()[-3000:]}"
        )
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.02)
    victim = next(
        p for p in psutil.Process(launcher.pid).children(recursive=True) if p.environ().get("RANK") == "1"
    )
    victim.send_signal(signal.SIGKILL)
    launcher.wait(timeout=120)
    assert launcher.returncode != 0
    proc = torchrun(2, *args, "--resume")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "resumed from" in proc.stderr
    # Bit-exact: same world size, same data order, restored optimizer, scheduler and RNG states.
    assert curve(out) == curve(zero_runs[1])


def test_resume_on_one_rank_from_a_two_rank_checkpoint(data, zero_runs, tmp_path):
    """2 -> 1 ranks through DeepSpeed's universal checkpoint. With 2 micro-batches per step on one rank, a step
    sees the same 8 samples as a 2-rank step, so the curve continues within float tolerance."""
    out = run_cut_at(zero_runs[1], tmp_path / "run", 4)
    proc = torchrun(
        1,
        *COMMON,
        "--data",
        str(data),
        "--out",
        str(out),
        "--steps",
        "8",
        "--zero-stage",
        "1",
        "--set",
        "train.ckpt_every=4",
        "--set",
        "train.grad_accum_steps=2",
        "--resume",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "world size 2 -> 1" in proc.stderr
    assert (out / "checkpoints" / "step0000004_universal" / "COMPLETE").exists()
    np.testing.assert_allclose(curve(out), curve(zero_runs[1]), rtol=2e-4)


def test_nan_guard_skips_then_stops_with_a_checkpoint(data, tmp_path):
    """Shards whose GC targets are NaN make every loss NaN: each micro-batch is skipped and counted, and after
    train.max_bad_steps in a row the run saves a checkpoint and stops with a clear message."""
    bad = tmp_path / "bad"
    import shutil

    from datapipe.shards.reader import iter_shard
    from datapipe.shards.writer import write_shard

    shutil.copytree(data, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    for entry in manifest["shards"]:
        samples = list(iter_shard(bad / "shards" / entry["name"]))
        for s in samples:
            s.meta["gc"] = float("nan")
        entry.update(write_shard(bad / "shards" / entry["name"], samples))
    (bad / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "run"
    proc = torchrun(
        2, *COMMON, "--data", str(bad), "--out", str(out), "--steps", "8", "--set", "train.max_bad_steps=3"
    )
    assert proc.returncode != 0
    assert "3 micro-batches in a row had a NaN/inf loss" in proc.stderr + proc.stdout
    assert (out / "checkpoints" / "latest").read_text().strip() == "step0000000"
    assert "non-finite loss, micro-batch skipped (1 in a row, 1 in total)" in proc.stderr + proc.stdout
