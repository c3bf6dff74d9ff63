"""`dnafm eval`: fine-tune a checkpoint on benchmark tasks (or a user's file) and report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from eval.tasks import TASKS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="fine-tune and score a checkpoint on downstream tasks",
        description="Fine-tune a pretrained checkpoint on each task (DeepSpeed), score the test split "
        "with bootstrap CIs, compare with a k-mer baseline and the published figure.",
    )
    p.add_argument("--checkpoint", type=Path, help="`dnafm pretrain` --out folder or an export folder")
    p.add_argument("--out", type=Path, help="report folder (summary.md, summary.csv, per-task JSON)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--tasks", help=f"comma-separated task names: {', '.join(TASKS)}")
    g.add_argument("--data", type=Path, help="your own CSV/TSV with columns sequence,label")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override an eval config field, e.g. --set finetune.epochs=5",
    )
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from datapipe.logs import setup_logging
    from eval.run import EvalConfig

    setup_logging()
    overrides = list(args.overrides)
    if args.tasks:
        overrides.append(f"tasks={args.tasks}")
    if args.no_mlflow:
        overrides.append("tracking=false")
    cfg = EvalConfig().with_overrides(overrides)
    unknown = [t for t in cfg.tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(unknown)}; available: {', '.join(TASKS)}")
    if args.dry_run:
        print(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
        return 0
    if args.checkpoint is None or args.out is None:
        raise ValueError("--checkpoint and --out are required (or use --dry-run)")
    from eval.run import run_eval
    from trainer.checkpoint import find_export

    find_export(args.checkpoint)  # fail before any work if it is not there
    rows = run_eval(cfg, checkpoint=args.checkpoint, out_dir=args.out, data_file=args.data)
    print((args.out / "summary.md").read_text())
    return 0 if rows else 1
