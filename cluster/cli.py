"""The `dnafm` console script: one entry, one subcommand per stage.

Each stage's parser lives with its layer (datapipe/cli.py, trainer/cli.py, eval/cli.py); this
module only dispatches. An expected error (``datapipe.common.errors.UserError``: bad input, a wrong
value, a missing file, a full disk) becomes one line on stderr and exit code 1; anything else is a bug
in dnafm and keeps its traceback, followed by a line saying so (exit code 1 as well).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from cluster.ray_connect import loopback_mode
from datapipe.common import __version__
from datapipe.common.errors import UserError

BUG_REPORT = (
    "this is a bug in dnafm, not a problem with your input: please report it with the traceback above"
)


def build_parser() -> argparse.ArgumentParser:
    from cluster import demo
    from datapipe import cli as prepare_cli
    from eval import cli as eval_cli
    from eval import compare_cli, genomes_cli
    from eval.interpret import cli as interpret_cli
    from trainer import cli as pretrain_cli
    from trainer import generate_cli

    parser = argparse.ArgumentParser(
        prog="dnafm",
        description="Pretrain DNA language models (DNAGPT, DNABERT): genomes -> shards -> DeepSpeed -> benchmarks.",
    )
    parser.add_argument("--version", action="version", version=f"dnafm {__version__}")
    # The deepspeed launcher puts --local_rank=N before the subcommand; LOCAL_RANK in the environment is what we use.
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    prepare_cli.add_parser(sub)
    pretrain_cli.add_parser(sub)  # pretrain, export
    pretrain_cli.add_import_parser(sub)
    eval_cli.add_parser(sub)
    compare_cli.add_parser(sub)
    generate_cli.add_parser(sub)
    genomes_cli.add_parser(sub)
    interpret_cli.add_parsers(sub)
    demo.add_parser(sub)
    # What the lower layers' commands need from this layer, handed down as arguments: joining Ray, and
    # starting the ranks of a run (they never import cluster/).
    sub.choices["prepare"].set_defaults(ray_connect=_ray_connect)
    sub.choices["pretrain"].set_defaults(launch=_launch_pretrain)
    sub.choices["eval"].set_defaults(launch=_launch_eval)
    sub.choices["genomes"].set_defaults(init_group=_init_group)
    return parser


def _init_group():
    from cluster.launch import init_process_group

    return init_process_group()


def _ray_connect(*args, **kwargs):
    from cluster.ray_connect import connect

    return connect(*args, **kwargs)


def _launch_pretrain(*args, **kwargs):
    from cluster.launch import pretrain

    return pretrain(*args, **kwargs)


def _launch_eval(*args, **kwargs):
    from cluster.launch import evaluate

    return evaluate(*args, **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        loopback_mode(getattr(args, "ray_address", None) or os.environ.get("RAY_ADDRESS"))
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("dnafm: interrupted", file=sys.stderr)
        return 130
    except UserError as err:
        logging.getLogger("dnafm").debug("error detail", exc_info=True)
        print(f"dnafm {args.command}: error: {err}", file=sys.stderr)
        return 1
    except Exception:
        traceback.print_exc()
        print(f"dnafm {args.command}: internal error; {BUG_REPORT}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
