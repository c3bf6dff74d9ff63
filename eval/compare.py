"""``dnafm compare``: pretraining runs side by side, each joined to the evaluations of its checkpoints.

Runs are found with MLflow's search API by the tags every dnafm stage sets (``dnafm.stage``, and on eval runs
``dnafm.pretrain_run_id``; see ``datapipe.common.tracking``). :func:`compare_runs` returns the joined table as a
pandas DataFrame, one row per pretraining run:

- ``run_id``, ``run_name``, then ``param.<name>`` for every parameter whose value differs between the runs;
- ``train/<component>`` (final, or at ``at_step``) and ``train/<component>:best`` for each loss component,
  ``train/tokens_per_s`` (mean), ``train/mfu`` (mean, when logged), ``wall_s``, ``steps``, ``tokens_seen``;
- ``eval/<task>/<metric>`` with ``_lo`` / ``_hi`` (95% bootstrap interval) for every task of every eval run of
  the pretraining run (the latest eval wins when a task was evaluated twice).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from datapipe.common.errors import UsageError

STAGE = "tags.`dnafm.stage`"
LOSS_KEYS = ("train/loss", "train/loss_lm", "train/loss_order", "train/loss_gc", "train/order_acc",
             "train/mlm_acc")  # fmt: skip
SKIP_PARAMS = ("tracking.",)  # where a run logged, not what it was


@dataclass(kw_only=True)
class Selection:
    """Which pretraining runs to compare (every field optional; all of them together narrow the choice)."""

    experiments: tuple[str, ...] = ()
    filter: str = ""
    runs: tuple[str, ...] = ()
    last: int | None = None


def client_for(tracking_uri: str) -> Any:
    """An MlflowClient on a store that answers (a dead server is one clear error, not minutes of retries)."""
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=5):
                pass
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise UsageError(f"the MLflow tracking server {tracking_uri} does not answer ({err}); start it or "
                             "pass the right --tracking-uri") from None  # fmt: skip
    elif tracking_uri.startswith("sqlite:///"):
        from pathlib import Path

        if not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
            raise UsageError(f"{tracking_uri}: no such MLflow store (the sqlite file does not exist)")
    return MlflowClient(tracking_uri=tracking_uri)


def pretraining_runs(client: Any, sel: Selection) -> list[Any]:
    """The selected pretraining runs, newest first."""
    from mlflow.exceptions import MlflowException

    if sel.runs:
        runs = []
        for run_id in sel.runs:
            try:
                run = client.get_run(run_id)
            except MlflowException:
                raise UsageError(f"run {run_id} is not in this MLflow store; pass --tracking-uri of the store "
                                 "it was logged to") from None  # fmt: skip
            if run.data.tags.get("dnafm.stage") != "pretrain":
                raise UsageError(f"run {run_id} ({run.info.run_name}) is not a pretraining run")
            runs.append(run)
        return runs
    ids = _experiment_ids(client, sel.experiments)
    query = f"{STAGE} = 'pretrain'" + (f" and {sel.filter}" if sel.filter else "")
    try:
        runs = client.search_runs(ids, filter_string=query, order_by=["attributes.start_time DESC"],
                                  max_results=sel.last or 1000)  # fmt: skip
    except MlflowException as err:
        raise UsageError(f"--filter {sel.filter!r}: MLflow rejects it ({str(err).splitlines()[0]})") from None
    if not runs:
        raise UsageError(f"no pretraining runs match (experiments {list(sel.experiments) or 'all'}, filter "
                         f"{sel.filter!r})")  # fmt: skip
    return runs


def _experiment_ids(client: Any, names: tuple[str, ...]) -> list[str]:
    if not names:
        return [e.experiment_id for e in client.search_experiments()]
    ids = []
    for name in names:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            known = ", ".join(sorted(e.name for e in client.search_experiments()))
            raise UsageError(f"no MLflow experiment {name!r} in this store; experiments here: {known}")
        ids.append(exp.experiment_id)
    return ids


def eval_runs(client: Any, run: Any) -> list[Any]:
    """The eval runs (parents) of a pretraining run, oldest first, from any experiment of the store."""
    ids = [e.experiment_id for e in client.search_experiments()]
    query = f"{STAGE} = 'eval' and tags.`dnafm.pretrain_run_id` = '{run.info.run_id}'"
    return client.search_runs(ids, filter_string=query, order_by=["attributes.start_time ASC"])


def history(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of a metric, in step order."""
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


class Histories:
    """Metric histories fetched once per (run, metric): the table and the report's curves read the same ones
    (each fetch is a round trip to the store, the slow part of a compare against a remote server)."""

    def __init__(self, client: Any):
        self.client = client
        self._got: dict[tuple[str, str], list[tuple[int, float]]] = {}

    def __call__(self, run_id: str, key: str) -> list[tuple[int, float]]:
        if (run_id, key) not in self._got:
            self._got[run_id, key] = history(self.client, run_id, key)
        return self._got[run_id, key]


def _training(history: Histories, run: Any, at_step: int | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for key in LOSS_KEYS:
        points = history(run.info.run_id, key)
        if not points:
            continue
        chosen = [v for s, v in points if s <= at_step] if at_step is not None else [v for _, v in points]
        if chosen:
            out[key] = chosen[-1]
            out[f"{key}:best"] = max(chosen) if key.endswith("_acc") else min(chosen)
    for key in ("train/tokens_per_s", "train/mfu"):
        points = history(run.info.run_id, key)
        if points:
            out[key] = sum(v for _, v in points) / len(points)
    seen = history(run.info.run_id, "train/tokens_seen")
    out["tokens_seen"] = seen[-1][1] if seen else float("nan")
    steps = history(run.info.run_id, "train/loss")
    out["steps"] = steps[-1][0] if steps else 0
    if run.info.end_time and run.info.start_time:
        out["wall_s"] = (run.info.end_time - run.info.start_time) / 1000
    return out


def compare_runs(
    tracking_uri: str,
    selection: Selection | None = None,
    *,
    at_step: int | None = None,
    require_eval: bool = True,
    histories: Histories | None = None,
):
    """The joined table (module docstring) as a pandas DataFrame, one row per pretraining run, newest first.
    ``histories``: the caller's, to reuse the fetched metric histories (else fetched here)."""
    import pandas as pd

    histories = histories or Histories(client_for(tracking_uri))
    client = histories.client
    runs = pretraining_runs(client, selection or Selection())
    rows = []
    for run in runs:
        row: dict[str, Any] = {"run_id": run.info.run_id, "run_name": run.info.run_name}
        row.update({f"param.{k}": v for k, v in run.data.params.items() if not k.startswith(SKIP_PARAMS)})
        row.update(_training(histories, run, at_step))
        for ev in eval_runs(client, run):
            row.update({k: v for k, v in ev.data.metrics.items() if k.startswith("eval/")})
        rows.append(row)
    if require_eval and not any(k.startswith("eval/") for r in rows for k in r):
        names = ", ".join(r["run_name"] for r in rows)
        raise UsageError(f"none of the selected pretraining runs ({names}) has an evaluation; run `dnafm eval "
                         "--checkpoint <run folder>` first (it logs to the pretraining run's store by default)")  # fmt: skip
    table = pd.DataFrame(rows)
    params = [c for c in table.columns if c.startswith("param.")]
    same = [c for c in params if table[c].astype(str).nunique(dropna=False) <= 1]
    return table.drop(columns=same)
