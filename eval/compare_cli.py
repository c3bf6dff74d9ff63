"""`dnafm compare`: pretraining runs side by side with their evaluations (eval/compare.py), as report.md,
report.html and PNGs, logged as the artifacts of a compare run."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from datapipe.common.cliargs import command_parser
from datapipe.common.errors import UsageError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = command_parser(
        sub,
        "compare",
        set_example=None,
        mlflow=False,
        dry_run="print which pretraining runs would be compared, then exit",
        help="compare pretraining runs and their evaluations (MLflow) in one report",
        description="Select pretraining runs from an MLflow store, join each to the eval runs of its checkpoints, "
        "and write report.md, a self-contained report.html and PNGs (loss curves, task metrics with 95% CIs).",
    )
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                   help="the MLflow store (default: $MLFLOW_TRACKING_URI)")  # fmt: skip
    p.add_argument("--experiment", action="append", default=[], metavar="NAME",
                   help="only runs of this experiment (repeatable; default: $MLFLOW_EXPERIMENT_NAME when set, "
                   "else every experiment)")  # fmt: skip
    p.add_argument(
        "--filter", default="", help="an MLflow search filter, e.g. \"params.`optim.lr` = '0.001'\""
    )
    p.add_argument("--runs", nargs="+", default=[], metavar="ID", help="these pretraining run ids")
    p.add_argument("--last", type=int, help="only the N most recent runs")
    p.add_argument("--at-step", type=int, help="read the losses at this step (default: the last logged)")
    p.add_argument("--out", type=Path, help="report folder")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the report as a compare run")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from datapipe.common.logs import setup_logging
    from eval.compare import Histories, Selection, client_for, compare_runs

    setup_logging()
    if not args.tracking_uri:
        raise UsageError("no MLflow store: pass --tracking-uri (e.g. sqlite:///runs/x/mlflow.db) or set "
                         "MLFLOW_TRACKING_URI")  # fmt: skip
    if args.last is not None and args.last < 1:
        raise UsageError(f"--last {args.last}: must be >= 1")
    if args.out is None and not args.dry_run:
        raise UsageError("--out is required (or use --dry-run)")
    if not args.experiment and os.environ.get("MLFLOW_EXPERIMENT_NAME"):
        args.experiment = [os.environ["MLFLOW_EXPERIMENT_NAME"]]
    sel = Selection(
        experiments=tuple(args.experiment), filter=args.filter, runs=tuple(args.runs), last=args.last
    )
    histories = Histories(client_for(args.tracking_uri))
    table = compare_runs(
        args.tracking_uri, sel, at_step=args.at_step, require_eval=not args.dry_run, histories=histories
    )
    if args.dry_run:
        print(json.dumps([{"run_id": r, "run_name": n} for r, n in zip(table["run_id"], table["run_name"],
                                                                        strict=True)], indent=2))  # fmt: skip
        return 0
    write_report(table, args, histories)
    from eval.compare_report import terminal_table

    print(terminal_table(table))
    print(f"\nreport: {args.out / 'report.html'}")
    return 0


def write_report(table, args: argparse.Namespace, history) -> Path:
    """Everything into a temporary folder renamed to --out at the end (nothing partial on failure), then
    logged as the artifacts of a compare run. ``history``: the ``eval.compare.Histories`` the table was read
    with (its loss and tokens-seen histories are the curves)."""
    from datapipe.common.files import atomic_dir
    from datapipe.common.tracking import experiment_name, start_tracker
    from eval.compare_report import plot_curves, plot_tasks, write_html, write_markdown

    client = history.client
    curves = {}
    for run_id in table["run_id"]:
        loss = history(run_id, "train/loss")
        seen = dict(history(run_id, "train/tokens_seen"))
        curves[run_id] = {"step": [s for s, _ in loss], "loss": [v for _, v in loss],
                          "tokens_seen": [seen[s] for s, _ in loss] if all(s in seen for s, _ in loss) else []}  # fmt: skip
    names = dict(zip(table["run_id"], table["run_name"], strict=True))
    with atomic_dir(args.out) as tmp:
        pngs = plot_curves(curves, names, tmp) + plot_tasks(table, tmp)
        write_markdown(table, pngs, tmp / "report.md")
        write_html(table, pngs, tmp / "report.html")
        table.to_csv(tmp / "table.csv", index=False)
    if not args.no_mlflow:
        first = client.get_run(table["run_id"][0])
        default = client.get_experiment(first.info.experiment_id).name
        tracker = start_tracker(experiment=experiment_name(args.experiment[0] if args.experiment else None, default),
                                run_name=f"compare-{args.out.name}", tracking_uri=args.tracking_uri, stage="compare")  # fmt: skip
        tracker.log_params(
            {"runs": ",".join(table["run_id"]), "filter": args.filter, "at_step": args.at_step}
        )
        for path in sorted(args.out.iterdir()):
            tracker.log_artifact(path, "compare")
        tracker.finish()
    return args.out
