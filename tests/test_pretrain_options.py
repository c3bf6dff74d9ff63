"""Pretraining options, each through the real CLI: activation checkpointing, optimizer offload, a user ds.json,
SIGTERM, export, and --nproc-per-node (the deepspeed launcher)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from safetensors.torch import load_file

from tests.conftest import REPO, run_cli, user_env
from tests.helpers import chr20_shards, curve, tiny_gpt_args

pytestmark = pytest.mark.slow
COMMON = tiny_gpt_args(num_workers=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return chr20_shards(tmp_path_factory.mktemp("data"), bases=200_000)


@pytest.fixture(scope="module")
def baseline(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("base")
    proc = run_cli("pretrain", *COMMON, "--data", str(data), "--out", str(out), "--steps", "6")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.mark.parametrize("option", ["train.activation_checkpointing=true", "train.offload_optimizer=true"])
def test_memory_options_keep_the_loss_curve(data, baseline, tmp_path, option):
    proc = run_cli(
        "pretrain", *COMMON, "--data", str(data), "--out", str(tmp_path), "--steps", "6", "--set", option
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    np.testing.assert_allclose(curve(tmp_path), curve(baseline), rtol=1e-5)


def test_user_deepspeed_config_wins(data, tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(
        json.dumps(
            {
                "train_micro_batch_size_per_gpu": 2,
                "gradient_accumulation_steps": 3,
                "gradient_clipping": 0.5,
                "zero_optimization": {"stage": 2},
            }
        )
    )
    out = tmp_path / "run"
    proc = run_cli(
        "pretrain",
        *COMMON,
        "--data",
        str(data),
        "--out",
        str(out),
        "--steps",
        "2",
        "--deepspeed",
        "--deepspeed_config",
        str(ds),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    cfg = json.loads((out / "config.json").read_text())
    assert (
        cfg["loader"]["micro_batch_size"],
        cfg["train"]["grad_accum_steps"],
        cfg["train"]["zero_stage"],
    ) == (2, 3, 2)
    assert "ZeRO stage 2" in proc.stderr


def test_export_cli_writes_bf16_safetensors(baseline, tmp_path):
    proc = run_cli("export", "--checkpoint", str(baseline), "--out", str(tmp_path / "exp"), "--dtype", "bf16")
    assert proc.returncode == 0, proc.stderr[-4000:]
    state = load_file(str(tmp_path / "exp" / "model.safetensors"))
    final = load_file(str(baseline / "final" / "model.safetensors"))
    assert state.keys() == final.keys()
    assert all(str(v.dtype) == "torch.bfloat16" for v in state.values())
    for k in final:
        np.testing.assert_allclose(state[k].float().numpy(), final[k].numpy(), rtol=1e-2, atol=1e-2)
    assert (tmp_path / "exp" / "tokenizer" / "vocab.txt").exists()


def test_sigterm_saves_and_resume_reproduces_the_curve(data, baseline, tmp_path):
    out = tmp_path / "run"
    args = [*COMMON, "--data", str(data), "--out", str(out), "--steps", "6"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", "pretrain", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=user_env(),
    )
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    log = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, log[-3000:]
    step = int((out / "checkpoints" / "latest").read_text().strip().removeprefix("step"))
    assert 2 <= step < 6 and "signal 15 received" in log
    proc = run_cli("pretrain", *args, "--resume")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert curve(out) == curve(baseline)


def test_nproc_per_node_starts_the_deepspeed_launcher(data, tmp_path):
    proc = run_cli(
        "pretrain",
        *COMMON,
        "--data",
        str(data),
        "--out",
        str(tmp_path),
        "--steps",
        "2",
        "--nproc-per-node",
        "2",
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "launching" in proc.stdout and "world size 2" in proc.stdout + proc.stderr
    assert len(curve(tmp_path)) == 2
    assert not [
        p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])
    ]
