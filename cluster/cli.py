"""The `dnafm` console script: one entry, one subcommand per stage.

Each stage's parser lives with its layer (datapipe/cli.py, trainer/cli.py, eval/cli.py); this
module only dispatches, and turns expected errors into one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import logging
import sys

from datapipe import __version__
from datapipe.shards import ShardError

# Errors whose message is the whole story for a user (bad input, bad config, missing file).
EXPECTED = (ValueError, FileNotFoundError, FileExistsError, KeyError, OSError, ShardError)


def build_parser() -> argparse.ArgumentParser:
    from cluster import demo
    from datapipe import cli as prepare_cli
    from eval import cli as eval_cli
    from trainer import cli as pretrain_cli

    parser = argparse.ArgumentParser(
        prog="dnafm",
        description="Pretrain DNA language models (DNAGPT, DNABERT): genomes -> shards -> DeepSpeed -> benchmarks.",
    )
    parser.add_argument("--version", action="version", version=f"dnafm {__version__}")
    # The deepspeed launcher puts --local_rank=N before the subcommand; LOCAL_RANK in the environment is what we use.
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    prepare_cli.add_parser(sub)
    pretrain_cli.add_parser(sub)
    eval_cli.add_parser(sub)
    demo.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("dnafm: interrupted", file=sys.stderr)
        return 130
    except EXPECTED as err:
        logging.getLogger("dnafm").debug("error detail", exc_info=True)
        print(f"dnafm {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
