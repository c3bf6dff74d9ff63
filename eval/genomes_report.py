"""report.md / report.csv and the figures of `dnafm genomes`."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from datapipe.common.files import write_atomic, write_json_atomic
from eval.genomes_metrics import SetScore
from eval.genomes_plots import plot_allele_freq, plot_hamming, plot_ld, plot_ld_decay, plot_pca

# metric -> (what it is, ideal value)
METRICS = {
    "af_pearson": ("allele-frequency Pearson r (all held-out vs all of the set)", "1"),
    "af_mean_abs_diff": ("mean |allele-frequency difference|", "0"),
    "ld_pearson": ("Pearson r of the pairwise LD r^2 of all SNP pairs", "1"),
    "ld_decay_mean_abs_diff": ("mean |LD-decay difference| over distance bins (same-chromosome pairs)", "0"),
    "pca_wasserstein_pc1": ("Wasserstein distance of real vs set on PC1 (PCA of real + set)", "as held-in"),
    "pca_wasserstein_pc2": ("same on PC2", "as held-in"),
    "hamming_within_wasserstein": ("W(within-set Hamming distances, within-real)", "as held-in"),
    "hamming_between_wasserstein": ("W(real-to-set Hamming distances, within-real)", "as held-in"),
    "aats_test": ("AATS against held-out haplotypes", "0.5"),
    "aats_train": ("AATS against training haplotypes", "0.5"),
    "privacy_loss": ("AATS(test) - AATS(train)", "0"),
    "train_copies_fraction": ("fraction identical to a training haplotype", "as held-in"),
    "unique_fraction": ("fraction of distinct haplotypes in the set", "as held-in"),
}


def _fmt(v: float | None) -> str:
    if v is None or not np.isfinite(v):
        return "-"
    return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"


def metrics_table(scores: list[SetScore]) -> str:
    head = "| metric | ideal | " + " | ".join(s.name for s in scores) + " |"
    lines = [head, "|---|---|" + "---:|" * len(scores)]
    for key, (_, ideal) in METRICS.items():
        vals = " | ".join(_fmt(s.metrics.get(key)) for s in scores)
        lines.append(f"| `{key}` | {ideal} | {vals} |")
    return "\n".join(lines)


def report_csv(scores: list[SetScore]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["set", *METRICS])
    for s in scores:
        w.writerow([s.name, *(s.metrics.get(k, "") for k in METRICS)])
    return buf.getvalue()


def _figures(out_dir: Path, scores: list[SetScore], shared: dict) -> list[Path]:
    files = [
        plot_pca(scores, out_dir / "pca.png"),
        plot_allele_freq(scores, out_dir / "allele_freq.png"),
        plot_ld(shared["real_ld"], scores, out_dir / "ld.png"),
        plot_hamming(scores, out_dir / "hamming.png"),
    ]
    if shared["decay"] is not None:
        d = shared["decay"]
        files.append(plot_ld_decay(d["edges"], d["real"], scores, out_dir / "ld_decay.png"))
    return files


def write_report(out_dir: Path, scores, shared, *, panel, split, cfg, history, checkpoint) -> list[Path]:
    """Write the figures, report.md, report.csv, finetune.json and split.json; return their paths."""
    from eval.genomes import REFERENCE
    from eval.genomes_model import plan_windows, show_template

    figures = _figures(out_dir, scores, shared)
    plan = plan_windows(panel.n_snps, history["context"], cfg.finetune.window_overlap)
    template = " ".join(t for t, _ in show_template(panel.alleles[split.train[0]], plan, 0, n=10))
    skipped = ", ".join(f"{n} {why}" for why, n in panel.skipped.items() if n) or "none"
    compare = [s.name for s in scores if s.name not in ("dnafm", REFERENCE)]
    lines = [
        "# Artificial haplotypes: dnafm against held-out real ones",
        "",
        f"- Real panel: `{panel.source}`, {panel.n_haplotypes:,} haplotypes x {panel.n_snps:,} SNPs "
        f"(sites skipped: {skipped}).",
        f"- Split by individual (seed {cfg.split_seed}): {len(split.train):,} training, {len(split.val):,} "
        f"validation, {len(split.test):,} held-out haplotypes.",
        f"- Model: `{checkpoint}`, context {history['context']} tokens: {len(plan.starts)} window(s) of "
        f"{plan.width} SNPs. Template: `{template} ...`",
        f"- Fine-tuning: {history['steps']} steps; validation loss (nats per allele) "
        + ", ".join(f"epoch {h['epoch']}: {h['val_loss']:.4f}" for h in history["history"])
        + f"; kept the best ({history['best_val_loss']:.4f}).",
        f"- Generated {cfg.num:,} haplotypes (temperature {cfg.sampling.temperature}, top-k "
        f"{cfg.sampling.top_k or 'off'}, top-p {cfg.sampling.top_p}, seed {cfg.sampling.seed}): "
        "`generated.hapt`.",
        "- Time: "
        + ", ".join(f"{k} {v:,.0f} s" for k, v in history.get("seconds", {}).items())
        + f" (on {'a GPU' if history.get('device') == 'cuda' else 'the CPU'}).",
        f"- Distance measures (PCA, Hamming, AATS) on {shared['n']:,} haplotypes of every set; allele "
        f"frequencies and LD on all of them (LD over {shared['ld_snps']:,} SNPs).",
        f"- `{REFERENCE}`: the training haplotypes not used for AATS(train), scored as if a generator had made "
        "them: what a generator that draws new genomes from the same population would score. Its copies row is "
        "the natural rate: held-out haplotypes identical to a training one.",
        "",
        metrics_table(scores),
        "",
    ]
    if compare:
        lines += [
            f"Sets given with --compare ({', '.join(compare)}) come from generators trained elsewhere: if their "
            "training data included the haplotypes held out here (the published GAN and RBM of Yelmen et al. "
            "were trained on 1000 Genomes phase 3 haplotypes), their AATS(test) and privacy loss are not "
            "measured on unseen data, and their copies row counts copies of our training haplotypes.",
            "",
        ]
    if shared["decay"] is None:
        lines += ["LD decay: not drawn (no positions, or fewer than 10 SNP pairs on one chromosome).", ""]
    lines += [f"![{p.stem}]({p.name})" for p in figures]
    md = write_atomic(out_dir / "report.md", "\n".join(lines) + "\n")
    csv_path = write_atomic(out_dir / "report.csv", report_csv(scores))
    ft = write_json_atomic(out_dir / "finetune.json", history)
    sp = write_json_atomic(
        out_dir / "split.json",
        {k: [panel.ids[i] for i in getattr(split, k)] for k in ("train", "val", "test")},
    )
    return [md, csv_path, ft, sp, *figures]
