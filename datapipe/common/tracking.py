"""Experiment tracking: a small Tracker interface and its MLflow implementation.

Every stage (prepare, pretrain, eval, demo) logs through :func:`start_tracker`. The tracking URI
comes from ``MLFLOW_TRACKING_URI`` when set, else a sqlite store in the stage's output folder.
Tracking must never stop training: an unreachable server or a failing store produces one warning
and the run goes on with a :class:`NullTracker` behaviour.

Nesting: a parent run id in ``DNAFM_MLFLOW_PARENT_RUN_ID`` (set by ``dnafm demo`` and
``dnafm eval`` for the stages they start) makes the new run a child of that run in the UI.

Naming (README "MLflow"): one experiment per project (``--experiment NAME``, else ``$MLFLOW_EXPERIMENT_NAME``,
else the stage's default); every run carries the tag ``dnafm.stage`` (prepare, pretrain, eval, eval-task,
demo, compare) and the links between stages as tags (``dnafm.prepare_run_id``, ``dnafm.pretrain_run_id``);
metrics are ``prepare/*``, ``train/*``, ``eval/<task>/*`` and MLflow's ``system/*``. Experiments are tagged
``mlflow.experimentKind=custom_model_development`` so MLflow 3's UI opens them on the runs table and charts
(without it, on its GenAI traces view).
"""

from __future__ import annotations

import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PARENT_ENV = "DNAFM_MLFLOW_PARENT_RUN_ID"
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
# MLflow 3's UI shows an experiment as model development (runs table, charts) with this tag, else as GenAI.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
STAGE_TAG = "dnafm.stage"


RUN_LINK = "mlflow_run.json"
"""Beside a stage's output: which MLflow run made it, so the next stage can link to it (JSON: run_id,
tracking_uri, experiment, stage)."""


def run_link(tracker: Tracker, *, experiment: str, stage: str) -> dict[str, str] | None:
    """What a stage writes to ``RUN_LINK`` (None when the run is not tracked)."""
    if tracker.run_id is None:
        return None
    return {"run_id": tracker.run_id, "tracking_uri": tracker.tracking_uri or "", "experiment": experiment,
            "stage": stage}  # fmt: skip


def read_run_link(folder: str | Path) -> dict[str, str]:
    """The ``RUN_LINK`` of a stage's output folder; {} when it has none (untracked, or made before links)."""
    import json

    path = Path(folder) / RUN_LINK
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def experiment_name(given: str | None, default: str) -> str:
    """``--experiment`` when given, else ``$MLFLOW_EXPERIMENT_NAME``, else the stage's default."""
    return given or os.environ.get(EXPERIMENT_ENV) or default


class Tracker:
    """What the stages need from an experiment tracker. ``log_metrics`` always takes the step."""

    run_id: str | None = None
    tracking_uri: str | None = None

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], *, step: int) -> None: ...

    def set_tags(self, tags: dict[str, str]) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def finish(self, status: str = "FINISHED") -> None: ...

    def start_system_metrics(self, interval_s: float = 10.0) -> None: ...


class NullTracker(Tracker):
    """Tracking switched off (non-zero ranks, --no-mlflow, or an unreachable server)."""


def default_tracking_uri(out_dir: str | Path) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(out_dir).resolve() / 'mlflow.db'}"


def ui_command(tracking_uri: str) -> str:
    """The command that opens the MLflow UI on this store (loopback only)."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        return (
            f"mlflow ui --backend-store-uri {tracking_uri} --default-artifact-root {db.parent / 'mlartifacts'}"
            " --host 127.0.0.1 --port 5000"
        )
    return f"open {tracking_uri} in a browser"


class MlflowTracker(Tracker):
    def __init__(self, client: Any, run_id: str, tracking_uri: str):
        self._client = client
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self._warned = False

    def _safe(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as err:  # tracking must never kill a run
            if not self._warned:
                log.warning(
                    "MLflow %s failed (%s); training goes on, further MLflow errors are silenced", what, err
                )
                self._warned = True

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            self._safe("log_params", self._client.log_batch, self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], *, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        self._safe("log_metrics", self._client.log_batch, self.run_id, metrics=items)

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self._safe("set_tag", self._client.set_tag, self.run_id, k, str(v))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._safe("log_artifact", self._client.log_artifact, self.run_id, str(path), artifact_path)

    def start_system_metrics(self, interval_s: float = 10.0) -> None:
        """CPU / memory / disk / network (and GPU when present) as ``system/*`` metrics, from a thread."""
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(
                self.run_id, sampling_interval=interval_s, tracking_uri=self.tracking_uri, resume_logging=True
            )
            self._monitor.start()
        except Exception as err:
            log.warning("MLflow system metrics unavailable (%s)", err)

    def finish(self, status: str = "FINISHED") -> None:
        monitor = getattr(self, "_monitor", None)
        if monitor is not None:
            self._safe("system metrics", monitor.finish)
        self._safe("set_terminated", self._client.set_terminated, self.run_id, status)


def _server_reachable(uri: str, timeout_s: float = 3.0) -> bool:
    """MLflow's own client retries for minutes against a dead server; probe once, quickly."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _experiment_id(client: Any, experiment: str, tracking_uri: str) -> str:
    """The experiment's id, created (with its artifact location and kind tag) when it does not exist yet."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        artifact_location = None
        if tracking_uri.startswith("sqlite:///"):
            # Without an explicit location MLflow drops artifacts into ./mlruns of the cwd.
            db = Path(tracking_uri.removeprefix("sqlite:///"))
            artifact_location = (db.parent / "mlartifacts").resolve().as_uri()
        return client.create_experiment(experiment, artifact_location=artifact_location, tags=EXPERIMENT_KIND)
    if not all(
        exp.tags.get(k) == v for k, v in EXPERIMENT_KIND.items()
    ):  # made elsewhere, or by an older dnafm
        for k, v in EXPERIMENT_KIND.items():
            client.set_experiment_tag(exp.experiment_id, k, v)
    return exp.experiment_id


def start_tracker(
    *,
    experiment: str,
    run_name: str,
    tracking_uri: str,
    enabled: bool = True,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    resume_run_id: str | None = None,
    stage: str | None = None,
) -> Tracker:
    """Open an MLflow run (or reopen ``resume_run_id``), or return a NullTracker with a warning. ``stage`` is
    recorded as the tag ``dnafm.stage`` (what ``dnafm compare`` selects runs by)."""
    if not enabled:
        return NullTracker()
    if tracking_uri.startswith(("http://", "https://")) and not _server_reachable(tracking_uri):
        log.warning("MLflow tracking server %s is unreachable; this run is not tracked", tracking_uri)
        return NullTracker()
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri)
        if resume_run_id:
            try:
                client.update_run(resume_run_id, status="RUNNING")
                log.info("MLflow run %s resumed at %s", resume_run_id, tracking_uri)
                return MlflowTracker(client, resume_run_id, tracking_uri)
            except Exception as err:  # another store, or the run was deleted: start a new one
                log.warning("cannot resume MLflow run %s (%s); starting a new run", resume_run_id, err)
        exp_id = _experiment_id(client, experiment, tracking_uri)
        all_tags = dict(tags or {})
        if stage:
            all_tags[STAGE_TAG] = stage
        parent = parent_run_id or os.environ.get(PARENT_ENV)
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
    except Exception as err:
        log.warning("could not open an MLflow run at %s (%s); this run is not tracked", tracking_uri, err)
        return NullTracker()
    log.info(
        "MLflow run %s (%s) in experiment '%s' at %s", run_name, run.info.run_id, experiment, tracking_uri
    )
    return MlflowTracker(client, run.info.run_id, tracking_uri)
