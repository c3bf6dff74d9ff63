"""`dnafm genomes`: fine-tune on real haplotypes, generate artificial ones, score them beside other generators'."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from datapipe.common.cliargs import command_parser, flag_overrides
from datapipe.common.errors import UsageError

FLAG_FIELDS = {
    "num": "num",
    "test_fraction": "test_fraction",
    "epochs": "finetune.epochs",
    "no_mlflow": "tracking=false",
}

EPILOG = """\
Formats (from the file name): .hapt (Yelmen et al.: tag, id, one 0/1 per SNP; .gz or .zip), phased
.vcf / .vcf.gz / .bcf (genotypes like 0|1; read with cyvcf2), IMPUTE2/SHAPEIT .haps with the .sample of the
same stem (or --sample). Multi-allelic sites and sites with a missing call are skipped and counted; an
unphased heterozygous genotype, a VCF without GT, mixed ploidy, values other than 0/1 and rows of unequal
length stop the run with one message, before anything is written.

Example (the 805-SNP 1000 Genomes panel and the published GAN and RBM sets of Yelmen et al.):
  dnafm genomes --haplotypes 805_SNP_1000G_real.hapt.gz --legend 805_SNP.legend --checkpoint runs/s512 \\
      --out reports/ag805 --compare GAN=805_SNP_GAN_AG_20000epochs.hapt.zip \\
      --compare RBM=805_SNP_RBM_AG_800Epochs.hapt.zip
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = command_parser(
        sub,
        "genomes",
        set_example="finetune.lr=5e-4",
        help="generate artificial haplotypes and score them against held-out real ones",
        description="Fine-tune a DNAGPT checkpoint on real haplotypes (DeepSpeed), generate artificial ones "
        "(KV-cached sampling, in windows when the panel is longer than the context) and score them against "
        "held-out real haplotypes: PCA, allele frequencies, LD, Hamming distances, AATS, privacy loss, "
        "copies; beside any --compare sets.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--haplotypes", type=Path, help="real panel: .hapt[.gz|.zip], .vcf[.gz], .bcf or .haps")
    p.add_argument("--sample", type=Path, help="the .sample file of a .haps panel (default: same stem)")
    p.add_argument("--legend", type=Path, help="IMPUTE2 legend with the SNP positions of a .hapt panel")
    p.add_argument("--checkpoint", type=Path, help="DNAGPT: `dnafm pretrain` --out folder or an export")
    p.add_argument("--out", type=Path, help="report folder")
    p.add_argument("--num", type=int, help="artificial haplotypes to generate (default 5000)")
    p.add_argument("--test-fraction", type=float, help="fraction of individuals held out (default 0.2)")
    p.add_argument("--epochs", type=int, help="fine-tuning epochs (default 3)")
    p.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="another set to score (repeatable)",
    )
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace):
    from eval.genomes import GenomesConfig

    data = GenomesConfig().with_overrides(flag_overrides(args, FLAG_FIELDS)).to_dict()
    # paths and NAME=FILE pairs are set directly: a path may hold '=' or ',' that an override would split
    for key in ("haplotypes", "sample", "legend"):
        value = getattr(args, key)
        if value is not None:
            data[key] = str(value.resolve())
    if args.compare:
        pairs = [c.partition("=") for c in args.compare]
        data["compare"] = [f"{n}{s}{Path(f).resolve() if f else ''}" for n, s, f in pairs]
    return GenomesConfig.from_dict(data)


def run(args: argparse.Namespace) -> int:
    from datapipe.common.logs import setup_logging

    setup_logging()
    cfg = resolve_config(args)
    if args.dry_run:
        print(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
        return 0
    if args.checkpoint is None or args.out is None or not cfg.haplotypes:
        raise UsageError("--haplotypes, --checkpoint and --out are required (or use --dry-run)")
    from eval.genomes import run_genomes
    from trainer.models.export import find_export

    find_export(args.checkpoint)  # fail before any work if it is not there
    run_genomes(cfg, checkpoint=args.checkpoint, out_dir=args.out, init_group=args.init_group)
    print((args.out / "report.md").read_text())
    return 0
