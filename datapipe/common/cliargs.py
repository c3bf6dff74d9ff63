"""The command-line flags every stage shares, defined once: ``--set FIELD=VALUE`` (repeatable), ``--dry-run``,
``--no-mlflow``, ``--experiment``; and the table that turns a command's own flags into the config fields they set.

Flags never validate values themselves: they become ``FIELD=VALUE`` overrides, and the config dataclass
checks them (so ``--steps 0`` and ``--set train.steps=0`` give the same message)."""

from __future__ import annotations

import argparse
import os
from typing import Any


def command_parser(
    sub: argparse._SubParsersAction,
    name: str,
    *,
    help: str,
    description: str,
    set_example: str | None,
    mlflow: bool = True,
    dry_run: str = "print the resolved config and exit",
    **kwargs: Any,
) -> argparse.ArgumentParser:
    """A subcommand parser with the shared flags: ``--set`` when it has a config (``set_example`` shows one
    override, e.g. 'optim.lr=3e-4'), ``--no-mlflow`` when it logs, and ``--dry-run``."""
    p = sub.add_parser(name, help=help, description=description, **kwargs)
    if set_example is not None:
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="FIELD=VALUE",
            help=f"override a config field, e.g. --set {set_example} (repeatable)",
        )
    if mlflow:
        p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
        p.add_argument(
            "--experiment",
            metavar="NAME",
            default=os.environ.get("MLFLOW_EXPERIMENT_NAME") or None,
            help="MLflow experiment to log into (default: $MLFLOW_EXPERIMENT_NAME, else the stage's own); give "
            "one project's prepare, pretrain and eval runs the same name to compare them",
        )
    p.add_argument("--dry-run", action="store_true", help=dry_run)
    return p


def flag_overrides(args: argparse.Namespace, table: dict[str, str]) -> list[str]:
    """``--set`` overrides first, then one per flag the user gave. ``table`` maps an argparse ``dest`` to the
    config field it sets (``'steps': 'train.steps'``), or for an on/off flag to the whole override it means
    (``'no_mlflow': 'tracking.enabled=false'``); flags left at None or False add nothing."""
    out = list(getattr(args, "overrides", []))
    for dest, target in table.items():
        value = getattr(args, dest)
        if value is None or value is False:
            continue
        out.append(target if value is True else f"{target}={value}")
    return out
