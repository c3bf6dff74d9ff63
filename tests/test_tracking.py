"""MLflow tracking against real stores: a sqlite file and an unreachable server."""

from __future__ import annotations

import logging
import socket

from mlflow.tracking import MlflowClient

from datapipe.common.tracking import MlflowTracker, NullTracker, start_tracker


def test_sqlite_store_gets_params_metrics_tags_and_nesting(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = start_tracker(experiment="t", run_name="parent", tracking_uri=uri)
    child = start_tracker(experiment="t", run_name="child", tracking_uri=uri, parent_run_id=parent.run_id)
    assert isinstance(child, MlflowTracker)
    child.log_params({"model.d_model": 128, "optim.lr": 1e-3})
    for step in (1, 2, 3):
        child.log_metrics({"train/loss": 10.0 / step}, step=step)
    (tmp_path / "a.txt").write_text("hello")
    child.log_artifact(tmp_path / "a.txt")
    child.finish()
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(child.run_id)
    assert run.data.params["model.d_model"] == "128"
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id
    history = client.get_metric_history(child.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(1, 10.0), (2, 5.0), (3, 10.0 / 3)]
    assert run.info.status == "FINISHED"
    # artifacts land beside the store, not in ./mlruns of the working directory
    assert (tmp_path / "mlartifacts").exists()
    assert [f.path for f in client.list_artifacts(child.run_id)] == ["a.txt"]


def test_unreachable_server_warns_and_training_goes_on(caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with caplog.at_level(logging.WARNING):
        tracker = start_tracker(experiment="t", run_name="r", tracking_uri=f"http://127.0.0.1:{port}")
    assert isinstance(tracker, NullTracker)
    assert "unreachable" in caplog.text
    tracker.log_metrics({"x": 1.0}, step=1)  # a no-op, not an error


def test_disabled_tracker_is_null():
    assert isinstance(
        start_tracker(experiment="t", run_name="r", tracking_uri="sqlite:///nowhere", enabled=False),
        NullTracker,
    )
