"""`dnafm pretrain` (a recipe, field overrides, the run) and `dnafm export` (checkpoint -> safetensors)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from datapipe.common.cliargs import command_parser, flag_overrides
from datapipe.common.errors import UsageError
from trainer.recipes import RECIPES, get_recipe

# Flags that set config fields (the rest of the flags choose what to run).
FLAG_FIELDS = {
    "steps": "train.steps",
    "zero_stage": "train.zero_stage",
    "no_mlflow": "tracking.enabled=false",
    "skip_bad_shards": "loader.skip_bad_shards=true",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = command_parser(
        sub,
        "pretrain",
        set_example="optim.lr=3e-4",
        dry_run="print the resolved config and parameter count, then exit",
        help="pretrain a DNAGPT model on prepared shards (DeepSpeed)",
        description="Pretrain DNAGPT from a named recipe on shards written by `dnafm prepare`. "
        "Runs as one process, under `deepspeed`, or under `torchrun`; --nproc-per-node N starts "
        "the deepspeed launcher itself.",
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
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in --out (at any world size); fresh start if none",
    )
    p.add_argument(
        "--skip-bad-shards", action="store_true", help="skip corrupt or missing shards (logged, counted)"
    )
    p.add_argument(
        "--nproc-per-node", type=int, help="start the deepspeed launcher with this many local ranks"
    )
    p.add_argument(
        "--show-sample", action="store_true", help="print one pretraining sample token by token and exit"
    )
    # The deepspeed.add_config_arguments() route: a ds.json whose keys win over the recipe's.
    p.add_argument("--deepspeed", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--deepspeed_config",
        "--deepspeed-config",
        type=Path,
        metavar="DS_JSON",
        help="a DeepSpeed config JSON; its keys override the config derived from the recipe",
    )
    p.add_argument(
        "--local_rank", type=int, default=None, help=argparse.SUPPRESS
    )  # set by the deepspeed launcher
    p.set_defaults(func=run)

    e = command_parser(
        sub,
        "export",
        set_example=None,
        mlflow=False,
        dry_run="print what would be exported and exit",
        help="write consolidated safetensors weights from a pretraining checkpoint",
        description="Consolidate a (ZeRO-sharded) checkpoint into model.safetensors + config.json + "
        "tokenizer/, in one process, no GPU needed.",
    )
    e.add_argument("--checkpoint", type=Path, required=True, help="`dnafm pretrain` --out folder")
    e.add_argument("--out", type=Path, required=True, help="export folder")
    e.add_argument("--tag", help="checkpoint tag (default: latest)")
    e.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    e.add_argument(
        "--format",
        choices=("dnafm", "hf"),
        default="dnafm",
        help="dnafm: model.safetensors + config + tokenizer; hf: a Hugging Face BertForMaskedLM folder "
        "(DNABERT runs only)",
    )
    e.set_defaults(func=run_export)


def resolve(args: argparse.Namespace):
    cfg = get_recipe(args.recipe)
    overrides = flag_overrides(args, FLAG_FIELDS)
    user_ds = None
    if args.deepspeed_config:
        try:
            user_ds = json.loads(args.deepspeed_config.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise UsageError(f"--deepspeed_config {args.deepspeed_config}: {err}") from err
        # Keep the loader and the schedule in step with the batch sizes the ds.json sets.
        if "train_micro_batch_size_per_gpu" in user_ds:
            overrides.append(f"loader.micro_batch_size={user_ds['train_micro_batch_size_per_gpu']}")
        if "gradient_accumulation_steps" in user_ds:
            overrides.append(f"train.grad_accum_steps={user_ds['gradient_accumulation_steps']}")
        if "zero_optimization" in user_ds and "stage" in user_ds["zero_optimization"]:
            overrides.append(f"train.zero_stage={user_ds['zero_optimization']['stage']}")
    return cfg.with_overrides(overrides), user_ds


def _launch_local_ranks(n: int) -> int:
    """Re-run this very command under the deepspeed launcher with n local ranks (replaces this process)."""
    from trainer.engine import _free_port

    launcher = shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")
    argv = sys.argv[1:]
    clean, skip = [], False
    for a in argv:  # drop --nproc-per-node N / --nproc-per-node=N
        if skip:
            skip = False
            continue
        if a == "--nproc-per-node":
            skip = True
            continue
        if a.startswith("--nproc-per-node="):
            continue
        clean.append(a)
    cmd = [
        launcher,
        "--num_gpus",
        str(n),
        "--master_port",
        str(_free_port()),
        "--module",
        "cluster.cli",
        *clean,
    ]
    print("dnafm pretrain: launching", " ".join(cmd), flush=True)
    os.execv(launcher, cmd)
    return 1  # not reached


def run(args: argparse.Namespace) -> int:
    from datapipe.common.logs import setup_logging

    setup_logging()
    cfg, user_ds = resolve(args)
    if args.show_sample:
        from trainer.pretrain import sample_example

        print(" ".join(sample_example(cfg.tokenizer)))
        return 0
    if args.dry_run:
        from trainer.families import count_params

        print(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
        n = count_params(cfg)
        print(f"# parameters: {n:,} ({n / 1e9:.2f}B)")
        return 0
    if args.data is None or args.out is None:
        raise UsageError("--data and --out are required (or use --dry-run)")
    if args.nproc_per_node and "RANK" not in os.environ:
        return _launch_local_ranks(args.nproc_per_node)
    from trainer.loop import TooManyBadSteps
    from trainer.pretrain import run_pretrain

    try:
        outcome = run_pretrain(
            cfg, data_dir=args.data, out_dir=args.out, resume=args.resume, user_ds_config=user_ds
        )
    except TooManyBadSteps as err:
        print(f"dnafm pretrain: error: {err}", file=sys.stderr)
        return 1
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if outcome == "signal":
        return 143
    return 0


def run_export(args: argparse.Namespace) -> int:
    from datapipe.common.logs import setup_logging

    setup_logging()
    if args.dry_run:
        print(
            json.dumps(
                {
                    "checkpoint": str(args.checkpoint),
                    "tag": args.tag,
                    "out": str(args.out),
                    "dtype": args.dtype,
                    "format": args.format,
                },
                indent=2,
            )
        )
        return 0
    import torch

    from trainer.checkpoint import export_checkpoint

    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    if args.format == "hf":
        import tempfile
        from pathlib import Path

        from trainer.models.export import load_export
        from trainer.models.hf_bert import save_hf_bert

        with tempfile.TemporaryDirectory() as tmp:
            export_checkpoint(args.checkpoint, Path(tmp) / "e", tag=args.tag, dtype=dtype)
            model, cfg, tok = load_export(Path(tmp) / "e")
            if cfg.family != "dnabert":
                raise UsageError(f"--format hf exports DNABERT runs; {args.checkpoint} is a {cfg.family} run")
            (Path(tmp) / "vocab.txt").write_text("\n".join(tok.vocab) + "\n")
            out = save_hf_bert(model.to(dtype), args.out, vocab_file=Path(tmp) / "vocab.txt")
    else:
        out = export_checkpoint(args.checkpoint, args.out, tag=args.tag, dtype=dtype)
    print(f"exported {out}")
    return 0
