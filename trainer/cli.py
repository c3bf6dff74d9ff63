"""`dnafm pretrain` (a recipe, field overrides, the run), `dnafm export` (checkpoint -> safetensors, a Hugging Face
folder or an MLflow model) and `dnafm import` (weights others released -> an export folder)."""

from __future__ import annotations

import argparse
import json
import os
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

    add_export_parser(sub)


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    e = command_parser(
        sub,
        "export",
        set_example=None,
        mlflow=False,
        dry_run="print what would be exported and exit",
        help="write a checkpoint's weights as safetensors, a Hugging Face folder or an MLflow model",
        description="Consolidate a (ZeRO-sharded) checkpoint into model.safetensors + config.json + "
        "tokenizer/, in one process, no GPU needed; or write it (or an export folder, e.g. from "
        "`dnafm import`) as a Hugging Face folder or an MLflow pyfunc model.",
    )
    e.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        help="`dnafm pretrain` --out folder; for --format hf/mlflow also an export folder",
    )
    e.add_argument("--out", type=Path, required=True, help="output folder")
    e.add_argument("--tag", help="checkpoint tag (default: latest)")
    e.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    e.add_argument(
        "--format",
        choices=("dnafm", "hf", "mlflow"),
        default="dnafm",
        help="dnafm: model.safetensors + config + tokenizer; hf: a Hugging Face folder (DNABERT: "
        "BertForMaskedLM; DNAGPT: AutoModelForCausalLM with trust_remote_code); mlflow: an MLflow pyfunc "
        "model (sequences in, embeddings or class probabilities out), also logged to MLflow",
    )
    e.add_argument(
        "--hf-head",
        choices=("mlm", "classifier"),
        default="mlm",
        help="DNABERT --format hf: BertForMaskedLM (mlm) or BertForSequenceClassification layout",
    )
    e.add_argument(
        "--output",
        choices=("embeddings", "probabilities"),
        default="embeddings",
        help="--format mlflow: what predict returns unless its params say otherwise",
    )
    e.add_argument(
        "--num-classes", type=int, default=2, help="--format mlflow: classes of the probabilities (default 2)"
    )
    e.add_argument(
        "--tracking-uri",
        help="--format mlflow: the MLflow store to log to (default $MLFLOW_TRACKING_URI, else the run's "
        "own store when --checkpoint is a pretraining run)",
    )
    e.add_argument(
        "--registered-model", metavar="NAME", help="--format mlflow: register the logged model under NAME"
    )
    e.set_defaults(func=run_export)


def add_import_parser(sub: argparse._SubParsersAction) -> None:
    from trainer.models.dnagpt_release import VARIANTS

    i = command_parser(
        sub,
        "import",
        set_example=None,
        mlflow=False,
        dry_run="check the file's layout, print the model it holds, and exit",
        help="convert released weights into a dnafm export folder (for eval and export)",
        description="Read the weights others released into our model and write an export folder "
        "(model.safetensors + config.json + tokenizer/) that `dnafm eval` and `dnafm export` take. "
        "dnagpt-release: a .pth of the DNAGPT authors (dna_gpt0.1b_h, dna_gpt0.1b_m, dna_gpt3b_m or their "
        "fine-tuned models), read with torch.load(weights_only=True). hf-bert: a Hugging Face BERT folder "
        "of a released DNABERT.",
    )
    i.add_argument("source", type=Path, help="the checkpoint file (dnagpt-release) or folder (hf-bert)")
    i.add_argument(
        "--format",
        choices=("dnagpt-release", "hf-bert"),
        required=True,
        help="dnagpt-release: a DNAGPT .pth; hf-bert: a Hugging Face DNABERT folder",
    )
    i.add_argument("--out", type=Path, help="export folder to write")
    i.add_argument(
        "--variant",
        choices=("auto", *VARIANTS),
        default="auto",
        help="dnagpt-release: the released configuration (default: recognised from the shapes)",
    )
    i.add_argument("--n-head", type=int, help="dnagpt-release: attention heads, for shapes no release has")
    i.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    i.set_defaults(func=run_import)


def resolve(args: argparse.Namespace):
    cfg = get_recipe(args.recipe)
    overrides = flag_overrides(args, FLAG_FIELDS)
    user_ds = None
    if args.deepspeed_config:
        try:
            user_ds = json.loads(args.deepspeed_config.read_text())
        except (OSError, ValueError) as err:  # ValueError: JSONDecodeError, UnicodeDecodeError
            raise UsageError(f"--deepspeed_config {args.deepspeed_config}: {err}") from err
        if not isinstance(user_ds, dict) or not isinstance(user_ds.get("zero_optimization", {}), dict):
            raise UsageError(
                f"--deepspeed_config {args.deepspeed_config}: expected a JSON object (DeepSpeed's config "
                "format) whose zero_optimization is an object"
            )
        for key, value in (*user_ds.items(), *user_ds.get("zero_optimization", {}).items()):
            if key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "stage") and (
                isinstance(value, bool) or not isinstance(value, int)
            ):
                raise UsageError(
                    f"--deepspeed_config {args.deepspeed_config}: {key} must be an integer, got {value!r}"
                )
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
    for flag in ("tracking_uri", "registered_model"):
        if getattr(args, flag) and args.format != "mlflow":
            raise UsageError(
                f"--{flag.replace('_', '-')} is for --format mlflow (this is --format {args.format})"
            )
    if args.dry_run:
        keys = ("checkpoint", "tag", "out", "dtype", "format", "hf_head", "output", "num_classes")
        keys += ("tracking_uri", "registered_model")
        print(
            json.dumps(
                {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k in keys},
                indent=2,
            )
        )
        return 0
    import tempfile

    import torch

    from trainer.checkpoint import export_checkpoint

    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    if args.format == "dnafm":
        out = export_checkpoint(args.checkpoint, args.out, tag=args.tag, dtype=dtype)
        print(f"exported {out}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        source = _export_folder(args.checkpoint, Path(tmp) / "e", tag=args.tag)
        if args.format == "hf":
            out = _write_hf(source, args.out, dtype=dtype, head=args.hf_head)
        else:
            out = _write_mlflow(source, args)
    print(f"exported {out}")
    return 0


def _is_run(path: Path) -> bool:
    return (path / "checkpoints").is_dir() or (path / "latest").is_file()


def _export_folder(path: Path, scratch: Path, *, tag: str | None) -> Path:
    """A pretraining run (or its checkpoints/) -> its checkpoint consolidated into ``scratch``; an export
    folder (``dnafm export``, ``dnafm import``, a run's final/) -> itself."""
    from trainer.checkpoint import export_checkpoint
    from trainer.models.export import find_export

    if _is_run(path):
        return export_checkpoint(path, scratch, tag=tag)
    return find_export(path)


def _write_hf(source: Path, out: Path, *, dtype, head: str) -> Path:
    from trainer.models.export import load_export

    model, cfg, tok = load_export(source)
    model = model.to(dtype)
    if cfg.family == "dnagpt":
        from trainer.models.hf_gpt import save_hf_gpt

        return save_hf_gpt(model, out, tokenizer=tok)
    from trainer.models.hf_bert import save_hf_bert

    vocab = source / "tokenizer" / "vocab.txt"  # Tokenizer.save wrote the vocabulary there
    return save_hf_bert(model, out, vocab_file=vocab, head=head)


def _write_mlflow(source: Path, args: argparse.Namespace) -> str:
    """The MLflow model folder at --out, and the same model logged to a store when there is one: into the
    pretraining run the export came from (its ``provenance.json``) when that store has it, else a new run."""
    from datapipe.common.tracking import default_tracking_uri, experiment_name, start_tracker
    from trainer.mlflow_model import log_pyfunc, save_pyfunc
    from trainer.models.export import read_provenance

    save_pyfunc(source, args.out, output=args.output, num_classes=args.num_classes)
    provenance = read_provenance(source)
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or _local_store(provenance)
    if uri is None and _is_run(args.checkpoint):
        uri = default_tracking_uri(args.checkpoint)  # an untracked run: a store in its folder
    if uri is None:
        if args.registered_model:
            raise UsageError(
                "--registered-model needs an MLflow store: --tracking-uri or $MLFLOW_TRACKING_URI"
            )
        return str(args.out)
    run_id = _existing_run(provenance.get("run_id"), uri)
    if run_id is None:
        links = {"dnafm.pretrain_run_id": provenance["run_id"]} if provenance.get("run_id") else {}
        tracker = start_tracker(
            experiment=experiment_name(None, provenance.get("experiment") or "dnafm-export"),
            run_name=f"export-{args.out.name}",
            tracking_uri=uri,
            stage="export",
            tags=links,
        )
        if tracker.run_id is None:
            raise UsageError(f"cannot open an MLflow run at {uri} (see the warning above)")
        run_id = tracker.run_id
        tracker.finish()
    logged = log_pyfunc(
        source,
        tracking_uri=uri,
        run_id=run_id,
        registered_model=args.registered_model,
        output=args.output,
        num_classes=args.num_classes,
    )
    print(f"logged {logged.get('registered_uri', logged['model_uri'])} ({logged['run_uri']}) at {uri}")
    return str(args.out)


def _local_store(provenance: dict) -> str | None:
    """The pretraining run's store when it is a server or a sqlite file that is still there."""
    theirs = provenance.get("tracking_uri") or ""
    if theirs.startswith(("http://", "https://")):
        return theirs
    if theirs.startswith("sqlite:///") and Path(theirs.removeprefix("sqlite:///")).exists():
        return theirs
    return None


def _existing_run(run_id: str | None, uri: str) -> str | None:
    """``run_id`` if the store at ``uri`` has that run."""
    if run_id is None:
        return None
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(uri).get_run(run_id)
    except Exception:  # another store, or the run was deleted
        return None
    return run_id


def run_import(args: argparse.Namespace) -> int:
    from datapipe.common.logs import setup_logging

    setup_logging()
    import torch

    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    if args.out is None and not args.dry_run:
        raise UsageError("--out is required (or use --dry-run)")
    if args.format == "hf-bert":
        from trainer.models.hf_bert import import_hf_bert, load_hf_bert

        if args.dry_run:
            print(json.dumps({"model": load_hf_bert(args.source)[1].to_dict()}, indent=2, sort_keys=True))
            return 0
        out = import_hf_bert(args.source, args.out, dtype=dtype)
        print(f"imported {args.source} -> {out}")
        return 0
    from trainer.models import dnagpt_release as rel

    if args.dry_run:
        state = rel.read_release(args.source)
        name, cfg = rel.infer_config(state, variant=args.variant, n_head=args.n_head, path=str(args.source))
        rel.check_layout(state, cfg, path=str(args.source), what=name)
        print(json.dumps({"variant": name, "model": cfg.to_dict()}, indent=2, sort_keys=True))
        return 0
    out, name = rel.import_release(
        args.source, args.out, variant=args.variant, n_head=args.n_head, dtype=dtype
    )
    print(f"imported {args.source} ({name}) -> {out}")
    return 0
