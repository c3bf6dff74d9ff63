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
def ray_head():
    """A real Ray cluster for the session, started with `ray start --head` on 127.0.0.1 (dashboard on, job
    submission through it); every process it started is removed at the end. Its workers run without
    TRITON_INTERPRET, as a user's would."""
    from cluster.testbed import RayCluster

    cluster = RayCluster.start(num_cpus=2, env=user_env())
    try:
        cluster.wait_for_nodes(1)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 (the multi-node tracking store), stopped with its process group."""
    import signal
    import socket
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = tmp_path_factory.mktemp("mlflow-server")
    mlflow = str(Path(sys.executable).parent / "mlflow")
    proc = subprocess.Popen(
        [mlflow, "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination",
         str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="session")
def ray_cluster() -> str:
    """One local Ray instance for the whole session (on loopback, auth off), shared by every test that prepares
    data in-process; `dnafm prepare` reuses an instance that is already up."""
    import ray

    from cluster.ray_connect import connect, disconnect

    connect(num_cpus=2)  # a private instance, as `dnafm prepare` starts one
    yield ray.get_runtime_context().gcs_address
    disconnect()
