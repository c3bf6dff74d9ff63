"""`dnafm pretrain` (a recipe, field overrides, the run) and `dnafm export` (checkpoint -> safetensors)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from datapipe.common.cliargs import command_parser, flag_overrides
from datapipe.common.errors import UsageError
from trainer.recipes import RECIPES, get_recipe

RAY_FLAGS = ("num_workers", "cpus_per_worker", "gpus_per_worker", "placement", "ray_address", "max_failures")
# Flags that set config fields (the rest of the flags choose what to run).
FLAG_FIELDS = {
    "steps": "train.steps",
    "zero_stage": "train.zero_stage",
    "no_mlflow": "tracking.enabled=false",
    "experiment": "tracking.experiment",
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
    r = p.add_argument_group(
        "Ray Train (--launcher ray)",
        "Each Ray worker is one DeepSpeed rank; Ray places them on the cluster, restarts the group from the last "
        "complete checkpoint after a failure, and keeps its records in OUT.",
    )
    r.add_argument(
        "--launcher",
        choices=("process", "ray"),
        default="process",
        help="process: this process is one rank (started by you, deepspeed or torchrun; default); "
        "ray: Ray Train starts the ranks",
    )
    r.add_argument("--num-workers", metavar="N|MIN-MAX", help="ranks; MIN-MAX: elastic (default 1)")
    r.add_argument("--cpus-per-worker", type=float, help="CPUs each rank reserves (default 1)")
    r.add_argument("--gpus-per-worker", type=float, help="GPUs each rank reserves (default 0: CPU + gloo)")
    r.add_argument(
        "--placement", choices=("spread", "pack"), help="spread ranks over nodes, or pack them (default)"
    )
    r.add_argument(
        "--ray-address", help="Ray cluster to join (default: $RAY_ADDRESS, else a private instance)"
    )
    r.add_argument("--max-failures", type=int, help="worker-group restarts after failures (default 0)")
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
    if args.launcher != "ray":
        ray_only = [f for f in RAY_FLAGS if getattr(args, f) is not None]
        if ray_only:
            flags = ", ".join("--" + f.replace("_", "-") for f in ray_only)
            raise UsageError(f"{flags}: only used with --launcher ray")
    return args.launch(cfg, args, user_ds)  # cluster.launch.pretrain: starts the ranks, runs, exit code


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
