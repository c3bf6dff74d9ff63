"""Shared fixtures. Expensive real components (Ray, DeepSpeed, MLflow) start once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Every Ray/DeepSpeed process started from the tests: CPU accelerator, no token auth, loopback only.
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.pop("MLFLOW_TRACKING_URI", None)  # tests use their own stores, never the user's server
# Without a GPU, Triton kernels run in-process through Triton's CPU interpreter (Triton has no CPU
# backend). Set before anything imports triton: @triton.jit fixes interpreted-or-compiled when a kernel
# is defined. With a GPU they compile, and tests/test_attention.py runs its cases on CUDA tensors instead.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def user_env(**extra: str) -> dict[str, str]:
    """The environment for processes that run the pipeline as a user would: without TRITON_INTERPRET, so
    they take the fast torch path on CPU rather than the ~400x slower interpreter."""
    return {**{k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}, **extra}


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run `dnafm ARGS` as a user would (a fresh process), capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=user_env(**(env or {})),
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """One quick end-to-end demo (real Ray, DeepSpeed engine, MLflow store), shared by the e2e tests."""
    out = tmp_path_factory.mktemp("demo") / "out"
    # Sample system metrics every second so the short run logs some (the default is every 10 s).
    proc = run_cli("demo", "--quick", "--out", str(out), env={"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"})
    if proc.returncode != 0:
        pytest.fail(
            f"dnafm demo --quick failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    (out / "demo.stdout").write_text(proc.stdout)
    return out


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The public data collection ($DNAFM_DATA_ROOT, else ../shared/data); the test skips where it is absent."""
    from tests.helpers import DATA_ROOT

    if not DATA_ROOT.is_dir():
        pytest.skip(f"public data collection not found at {DATA_ROOT} (set DNAFM_DATA_ROOT)")
    return DATA_ROOT


@pytest.fixture(scope="session")
def ray_cluster() -> str:
    """One local Ray instance for the whole session (on loopback, auth off), shared by every test that prepares
    data in-process; `dnafm prepare` reuses an instance that is already up."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            _node_ip_address="127.0.0.1",
            configure_logging=False,
        )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
