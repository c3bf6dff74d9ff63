"""`dnafm attention`, `dnafm motifs`, `dnafm embed`, `dnafm variants`: the interpretation commands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from datapipe.common.cliargs import command_parser, flag_overrides
from datapipe.common.errors import UsageError

DATA_HELP = (
    "sequences: CSV/TSV with a 'sequence' column (optional 'label', 'id'), or FASTA (labels as '>id label=1')"
)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    a = command_parser(
        sub,
        "attention",
        set_example="layer=-1",
        mlflow=False,
        help="per-base attention scores of a (fine-tuned) checkpoint, with heatmaps and score tracks",
        description="DNABERT-viz attention: the last layer's [CLS] row (DNAGPT: the <=> answer row), summed over "
        "heads, per base the mean over the k-mers covering it, L2-normalised per sequence. Writes scores.npy, "
        "scores.tsv, attention.json, heatmap.png and tracks.png into --out.",
    )
    a.add_argument(
        "--checkpoint", type=Path, help="`dnafm eval --save-model` folder (OUT/models/TASK) or an export"
    )
    a.add_argument("--data", type=Path, help=DATA_HELP)
    a.add_argument("--out", type=Path, help="output folder")
    a.set_defaults(func=_attention)

    m = command_parser(
        sub,
        "motifs",
        set_example="motifs.min_len=6",
        mlflow=False,
        help="motifs from attention scores (DNABERT-viz), matched against JASPAR offline",
        description="High-attention regions of the positives, hypergeometric enrichment against the negatives "
        "(Benjamini-Hochberg), merged by alignment, 24-bp windows; PWMs in MEME format, logos, and the best "
        "JASPAR matches by TOMTOM, from the JASPAR copy that pyjaspar ships.",
    )
    m.add_argument("--scores", type=Path, help="the --out folder of `dnafm attention`")
    m.add_argument("--data", type=Path, help="the same --data file `dnafm attention` read (labels required)")
    m.add_argument("--out", type=Path, help="output folder")
    m.add_argument("--no-jaspar", action="store_true", help="skip the JASPAR comparison")
    m.set_defaults(func=_motifs)

    e = command_parser(
        sub,
        "embed",
        set_example="batch_size=64",
        mlflow=False,
        help="sequence embeddings (mean, [CLS] or last-token pooling) as .npy or .parquet",
        description="Embed every sequence of --data with a checkpoint; sequences longer than the context are "
        "windowed and pooled. Rows follow the input order.",
    )
    e.add_argument("--checkpoint", type=Path, help="an export, a pretraining run or a fine-tuned folder")
    e.add_argument("--data", type=Path, help=DATA_HELP)
    e.add_argument("--out", type=Path, help="FILE.npy or FILE.parquet")
    e.add_argument("--pooling", choices=("mean", "cls", "last"), help="default mean")
    e.set_defaults(func=_embed)

    v = command_parser(
        sub,
        "variants",
        set_example="window_bp=101",
        help="variant effects: ref vs alt windows centred on each VCF variant",
        description="Fine-tuned classifier: change in probability and log-odds of the positive class. Pretrained "
        "DNAGPT: change in log-likelihood; pretrained DNABERT: masked-token log-odds at the variant. Indels, "
        "symbolic alleles, REF mismatches, missing contigs and windows past a chromosome end are counted skips.",
    )
    v.add_argument("--checkpoint", type=Path, help="a fine-tuned folder, an export or a pretraining run")
    v.add_argument("--vcf", type=Path, help="VCF or BCF (.gz allowed)")
    v.add_argument("--genome", type=Path, help="reference FASTA (.gz allowed) the VCF is on")
    v.add_argument("--out", type=Path, help="output folder: variants.tsv, summary.json, mlflow.db")
    v.set_defaults(func=_variants)


def _resolved(cls, args: argparse.Namespace, table: dict[str, str]):
    from datapipe.common.logs import setup_logging

    setup_logging()
    cfg = cls().with_overrides(flag_overrides(args, table))
    if args.dry_run:
        print(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
    return cfg


def _need(args: argparse.Namespace, *names: str) -> None:
    missing = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) is None]
    if missing:
        raise UsageError(f"{' and '.join(missing)} required (or use --dry-run)")


def _attention(args: argparse.Namespace) -> int:
    from eval.interpret.attention import AttentionConfig

    cfg = _resolved(AttentionConfig, args, {})
    if args.dry_run:
        return 0
    _need(args, "checkpoint", "data", "out")
    from eval.interpret.run import run_attention

    run_attention(cfg, checkpoint=args.checkpoint, data_path=args.data, out_dir=args.out)
    print(f"attention scores of {args.data} written to {args.out}")
    return 0


def _motifs(args: argparse.Namespace) -> int:
    from eval.interpret.motif_report import MotifsRunConfig

    cfg = _resolved(MotifsRunConfig, args, {"no_jaspar": "jaspar.enabled=false"})
    if args.dry_run:
        return 0
    _need(args, "scores", "data", "out")
    from eval.interpret.motif_report import run_motifs

    rows = run_motifs(cfg, scores_dir=args.scores, data_path=args.data, out_dir=args.out)
    print((args.out / "motifs.md").read_text())
    print(f"{len(rows)} motifs written to {args.out}")
    return 0


def _embed(args: argparse.Namespace) -> int:
    from eval.interpret.embed import EmbedConfig

    cfg = _resolved(EmbedConfig, args, {"pooling": "pooling"})
    if args.dry_run:
        return 0
    _need(args, "checkpoint", "data", "out")
    from eval.interpret.run import run_embed

    emb = run_embed(cfg, checkpoint=args.checkpoint, data_path=args.data, out=args.out)
    print(
        f"{emb.shape[0]} embeddings of dimension {emb.shape[1]} ({cfg.pooling} pooling) written to {args.out}"
    )
    return 0


def _variants(args: argparse.Namespace) -> int:
    from eval.interpret.variants import VariantConfig

    cfg = _resolved(VariantConfig, args, {"no_mlflow": "tracking=false"})
    if args.dry_run:
        return 0
    _need(args, "checkpoint", "vcf", "genome", "out")
    from eval.interpret.run import run_variants

    summary = run_variants(
        cfg, checkpoint=args.checkpoint, vcf=args.vcf, genome=args.genome, out_dir=args.out
    )
    counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items() if v)
    print(
        f"{summary['alleles']} alleles ({counts}); {summary['mode']}; written to {args.out / 'variants.tsv'}"
    )
    return 0
