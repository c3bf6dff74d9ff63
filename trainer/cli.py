"""`dnafm pretrain`: a recipe, field overrides, and the run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trainer.recipes import RECIPES, get_recipe


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain a DNAGPT model on prepared shards (DeepSpeed)",
        description="Pretrain DNAGPT from a named recipe on shards written by `dnafm prepare`. "
        "Runs as one process, under `deepspeed`, or under `torchrun`.",
    )
    p.add_argument(
        "--recipe", default="tiny-dnagpt", choices=sorted(RECIPES), help="named recipe (default tiny-dnagpt)"
    )
    p.add_argument("--data", type=Path, help="folder written by `dnafm prepare` (holds manifest.json)")
    p.add_argument("--out", type=Path, help="run folder: config, checkpoints, final export, mlflow.db")
    p.add_argument("--steps", type=int, help="optimizer steps (overrides train.steps)")
    p.add_argument(
        "--zero-stage", type=int, choices=(0, 1, 2, 3), help="DeepSpeed ZeRO stage (train.zero_stage)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a config field, e.g. --set optim.lr=3e-4 (repeatable)",
    )
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument(
        "--show-sample", action="store_true", help="print one pretraining sample token by token and exit"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the resolved config and parameter count, then exit"
    )
    p.add_argument(
        "--local_rank", type=int, default=None, help=argparse.SUPPRESS
    )  # set by the deepspeed launcher
    p.set_defaults(func=run)


def resolve(args: argparse.Namespace):
    cfg = get_recipe(args.recipe)
    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.zero_stage is not None:
        overrides.append(f"train.zero_stage={args.zero_stage}")
    if args.no_mlflow:
        overrides.append("tracking.enabled=false")
    return cfg.with_overrides(overrides)


def run(args: argparse.Namespace) -> int:
    from datapipe.logs import setup_logging

    setup_logging()
    cfg = resolve(args)
    if args.show_sample:
        from trainer.pretrain import sample_example

        print(" ".join(sample_example(cfg.tokenizer)))
        return 0
    if args.dry_run:
        from trainer.gpt import count_params

        print(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
        n = count_params(cfg.model)
        print(f"# parameters: {n:,} ({n / 1e9:.2f}B)")
        return 0
    if args.data is None or args.out is None:
        raise SystemExit("dnafm pretrain: --data and --out are required (or use --dry-run)")
    from trainer.pretrain import run_pretrain

    run_pretrain(cfg, data_dir=args.data, out_dir=args.out)
    return 0
