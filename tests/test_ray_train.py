"""Pretraining and evaluation as Ray jobs, on a real cluster started with `ray start --head` on 127.0.0.1:
Ray Train runs the DeepSpeed ranks, restarts them after a kill -9, stops them cleanly on `ray job stop`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO, run_cli, user_env
from tests.helpers import (
    PROBE_ONE_EPOCH,
    chr20_shards,
    curve,
    needs_data,
    run_eval_cli,
    tiny_gpt_args,
    torchrun,
    untrained_export,
)

pytestmark = pytest.mark.slow
COMMON = [*tiny_gpt_args(num_workers=0), "--set", "train.ckpt_every=2"]
STEPS = "24"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return chr20_shards(tmp_path_factory.mktemp("data"), bases=200_000)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """The same run under torchrun, 2 ranks: the curve every Ray Train run must reproduce."""
    out = tmp_path_factory.mktemp("torchrun")
    proc = torchrun(2, *COMMON, "--data", str(data), "--out", str(out), "--steps", STEPS)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def ray_args(data: Path, out: Path, head, *extra: str) -> list[str]:
    return ["pretrain", *COMMON, "--data", str(data), "--out", str(out), "--steps", STEPS, "--launcher", "ray",
            "--num-workers", "2", "--ray-address", head.address, *extra]  # fmt: skip


def test_ray_train_ranks_reproduce_the_torchrun_curve(data, reference, ray_head, mlflow_server, tmp_path):
    """Two Ray Train workers give the torchrun curve step for step, and rank 0 logs to the MLflow server the
    driver was pointed at (a sqlite file is not safe from many nodes)."""
    args = [a for a in ray_args(data, tmp_path / "run", ray_head) if a != "--no-mlflow"]
    proc = run_cli(*args, env={"MLFLOW_TRACKING_URI": mlflow_server})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert curve(tmp_path / "run") == curve(reference)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name("dnafm-pretrain").experiment_id])
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert losses == pytest.approx(curve(reference)) and run.data.params["world_size"] == "2"
    assert "joined the Ray cluster at" in proc.stderr
    logs = proc.stderr + proc.stdout  # the workers' logs reach the driver: both ranks, ours rank-prefixed
    assert "[rank 0] INFO trainer.loop: step 24" in logs
    assert len(set(re.findall(r"\(RayTrainWorker pid=(\d+)", logs))) == 2
    # every complete checkpoint was reported to Ray, in place
    result = json.loads((tmp_path / "run/checkpoint_manager_snapshot.json").read_text())
    reported = {r["checkpoint_dir_name"] for r in result["checkpoint_results"]}  # relative to storage/name
    saved = {f"checkpoints/{c.parent.name}" for c in (tmp_path / "run/checkpoints").glob("step*/COMPLETE")}
    assert reported == saved and "checkpoints/step0000008" in reported


def _ray_train_workers() -> list[psutil.Process]:
    return [
        p for p in psutil.process_iter(["cmdline"]) if "RayTrainWorker" in " ".join(p.info["cmdline"] or [])
    ]


def test_a_killed_worker_is_restarted_and_the_curve_is_exact(data, reference, ray_head, tmp_path):
    out = tmp_path / "run"
    driver = subprocess.Popen(
        [sys.executable, "-m", "cluster.cli", *ray_args(data, out, ray_head, "--max-failures", "2")],
        cwd=REPO, env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not (out / "checkpoints/step0000004/COMPLETE").exists():
        assert driver.poll() is None and time.monotonic() < deadline, driver.stdout.read()[-4000:]
        time.sleep(0.2)
    victims = _ray_train_workers()
    assert len(victims) == 2
    victims[1].kill()  # kill -9 of one rank mid-run
    text, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, text[-4000:]
    assert curve(out) == curve(reference)  # resumed from step 4 (or 6): bit for bit
    # Resumed, not begun again: a restart from step 0 would give the same curve at the same world size.
    assert "Ray restarted the worker group: resuming from the last complete checkpoint" in text, text[-4000:]
    assert re.search(r"resumed from \S+/step\d+ at step [1-9]", text), text[-4000:]


def test_a_restarted_group_knows_it_from_the_launch_marker_not_from_ray(tmp_path):
    """Ray registers a reported checkpoint only when its controller polls; the marker does not wait for it."""
    import torch.distributed as dist

    from cluster.ray_train import LAUNCH_FILE, group_restarted

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert not group_restarted(tmp_path, "launch-a")  # the first group of a launch
        assert (tmp_path / LAUNCH_FILE).read_text() == "launch-a\n"
        assert group_restarted(tmp_path, "launch-a")  # Ray's restart of that launch
        assert not group_restarted(tmp_path, "launch-b")  # a new launch (e.g. --resume later) is no restart
    finally:
        dist.destroy_process_group()


def test_ray_job_submit_logs_status_and_a_clean_stop(data, reference, ray_head, tmp_path):
    """`ray job submit` as Ray users run it: logs stream with rank prefixes, `ray job stop` makes every rank
    save at the same step, and --resume continues exactly; a failing run is a FAILED job."""
    ray = str(Path(sys.executable).parent / "ray")
    out = tmp_path / "run"
    env = user_env(RAY_ADDRESS=ray_head.dashboard)
    job = "dnafm-stop-" + tmp_path.name[-6:]
    args = [a for a in ray_args(data, out, ray_head) if a != ray_head.address and a != "--ray-address"]
    submit = _submit(
        ray, env, "--submission-id", job, "--no-wait",
        "--runtime-env-json", json.dumps({"env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": "120"}}),
        "--", sys.executable, "-m", "cluster.cli", *args,
    )  # fmt: skip
    assert submit.returncode == 0, submit.stderr[-3000:]
    deadline = time.monotonic() + 300
    while not (out / "metrics.jsonl").exists() or len((out / "metrics.jsonl").read_text().splitlines()) < 3:
        assert time.monotonic() < deadline, _job(ray, env, "logs", job)
        time.sleep(0.2)
    _job(ray, env, "stop", job)
    assert _status(ray, env, job) == "STOPPED"
    logs = _job(ray, env, "logs", job)
    assert "[rank 0] INFO trainer.loop: step 3" in logs
    assert len(set(re.findall(r"\(RayTrainWorker pid=(\d+)", logs))) == 2
    stopped_at = json.loads(
        (out / "checkpoints" / (out / "checkpoints/latest").read_text() / "dnafm_state.json").read_text()
    )["step"]
    assert 3 <= stopped_at < int(STEPS), logs[-3000:]
    resumed = run_cli(*ray_args(data, out, ray_head), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert curve(out) == curve(reference)
    bad = _submit(ray, env, "--", sys.executable, "-m", "cluster.cli",
                  *ray_args(tmp_path / "no-such-data", tmp_path / "bad", ray_head))  # fmt: skip
    text = bad.stdout + bad.stderr  # the job's status is the run's exit code; its one-line error in the logs
    assert bad.returncode != 0 and "failed" in text.lower() and "manifest.json not found" in text


def _submit(ray: str, env: dict, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    """`ray job submit`, again while the head's job agent is not yet registered: Ray answers 500 "No available
    agent to submit job, please try again later" for a while after a busy start."""
    deadline = time.monotonic() + timeout_s
    while True:
        proc = subprocess.run([ray, "job", "submit", "--working-dir", str(REPO), *args],
                              env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        if "No available agent" not in proc.stderr or time.monotonic() > deadline:
            return proc
        time.sleep(2)


def _job(ray: str, env: dict, verb: str, job: str) -> str:
    proc = subprocess.run([ray, "job", verb, job], env=env, capture_output=True, text=True, timeout=300)
    return proc.stdout + proc.stderr


def _status(ray: str, env: dict, job: str, timeout_s: float = 300) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        text = _job(ray, env, "status", job)
        for state in ("STOPPED", "SUCCEEDED", "FAILED"):
            if f"was {state.lower()}" in text or f"has {state.lower()}" in text or f"{state}" in text:
                return state
        assert time.monotonic() < deadline, text
        time.sleep(1)


def test_every_command_joins_the_cluster_or_starts_its_own(ray_head, tmp_path):
    """With a cluster running on the machine, a plain prepare starts a private instance (Ray's own
    'num_cpus ... must not be provided' never reaches the user); RAY_ADDRESS joins the cluster."""
    genome = str(REPO / "data/genomes/grch37_chr20_44-46Mb.fa.gz")
    args = ["prepare", genome, "--species", "human", "--no-mlflow", "--set", "region_bp=500000"]
    private = run_cli(*args, "--out", str(tmp_path / "a"))
    assert private.returncode == 0, private.stderr[-3000:]
    assert "started a private Ray instance" in private.stderr
    joined = run_cli(*args, "--out", str(tmp_path / "b"), env={"RAY_ADDRESS": ray_head.address})
    assert joined.returncode == 0, joined.stderr[-3000:]
    assert f"joined the Ray cluster at {ray_head.address}" in joined.stderr
    assert (tmp_path / "a/manifest.json").read_bytes() == (tmp_path / "b/manifest.json").read_bytes()
    gone = run_cli(*args, "--out", str(tmp_path / "c"), "--ray-address", "127.0.0.1:1")
    assert gone.returncode == 1 and "cannot join the Ray cluster at '127.0.0.1:1'" in gone.stderr
    assert len(gone.stderr.strip().splitlines()) == 1


def test_a_loopback_head_is_joined_without_ray_environment_settings(ray_head):
    """A head started on 127.0.0.1 is joined by a driver whose environment says nothing about Ray's loopback
    mode: Ray would otherwise rewrite 127.0.0.1 to the machine's address and wait for the GCS forever. A
    caller that imported Ray first gets one clear error instead of that hang."""
    env = {
        k: v for k, v in user_env().items() if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")
    }
    env["RAY_AUTH_MODE"] = "disabled"
    join = f"from cluster.ray_connect import connect\nprint(connect({ray_head.address!r}))\n"
    task = "import ray\nprint('task', ray.get(ray.remote(lambda: 41 + 1).remote()))\n"
    proc = subprocess.run([sys.executable, "-c", join + task], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"joined the Ray cluster at {ray_head.address}" in proc.stdout and "task 42" in proc.stdout
    early = subprocess.run([sys.executable, "-c", "import ray\n" + join], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert early.returncode == 1 and "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0" in early.stderr, early.stderr[
        -2000:
    ]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--num-workers", "2"], "error: --num-workers: only used with --launcher ray"),
        (["--launcher", "ray", "--num-workers", "3-1"], "needs 1 <= MIN <= MAX"),
        (["--launcher", "ray", "--num-workers", "2-3"], "cannot be kept at 2 ranks"),
        (["--launcher", "ray", "--num-workers", "4", "--cpus-per-worker", "2", "--ray-address", "HEAD"],
         "needs 8 CPUs (the cluster has 2)"),
    ],
)  # fmt: skip
def test_launcher_flags_that_cannot_work_are_one_line_errors(data, ray_head, tmp_path, flags, message):
    flags = [ray_head.address if f == "HEAD" else f for f in flags]
    proc = run_cli("pretrain", *COMMON, "--data", str(data), "--out", str(tmp_path), *flags)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and last.startswith("dnafm pretrain: error:") and message in last, proc.stderr
    assert "Traceback" not in proc.stderr


@needs_data("genomes/GRCh37_chr20.fa.gz", "annotations/start_codons.parquet")
def test_eval_tasks_as_ray_tasks_give_the_local_figures(ray_head, tmp_path):
    """`dnafm eval --launcher ray`: one Ray task per benchmark, in parallel; the same rows as a local run and
    the task runs nested under the one parent run."""
    from mlflow.tracking import MlflowClient

    ckpt = untrained_export("tiny-dnagpt", tmp_path / "ckpt")
    quick = ["--tasks", "pas-human,tis-human", *PROBE_ONE_EPOCH, "--set", "finetune.max_train_samples=200"]
    run_eval_cli(ckpt, tmp_path / "local", *quick)
    run_eval_cli(ckpt, tmp_path / "ray", *quick, "--launcher", "ray", "--ray-address", ray_head.address)
    keep = ("task", "n_test", "accuracy", "accuracy_ci", "mcc", "mcc_ci", "auroc", "baseline_mcc")
    for task in ("pas-human", "tis-human"):
        local, ray = (json.loads((tmp_path / w / f"{task}.json").read_text()) for w in ("local", "ray"))
        assert {k: local[k] for k in keep} == {k: ray[k] for k in keep}
    client = MlflowClient(f"sqlite:///{tmp_path / 'ray/mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("dnafm-eval").experiment_id])
    parent = next(r for r in runs if r.info.run_name.startswith("eval-"))
    children = {r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert children == {"task-pas-human", "task-tis-human"}
