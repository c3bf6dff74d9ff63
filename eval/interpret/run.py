"""The interpretation commands as functions: `dnafm attention`, `dnafm embed`, `dnafm variants` (`dnafm
motifs` is ``eval.interpret.motif_report.run_motifs``). Each reads its inputs before writing anything."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from datapipe.common.files import write_atomic
from eval.interpret.attention import AttentionConfig
from eval.interpret.embed import EmbedConfig
from eval.interpret.variants import VariantConfig

log = logging.getLogger(__name__)


def run_attention(cfg: AttentionConfig, *, checkpoint: Path, data_path: Path, out_dir: Path) -> Path:
    from eval.interpret.attention import attention_scores, write_attention
    from eval.interpret.inputs import read_sequences
    from eval.saved_model import load_checkpoint

    data = read_sequences(data_path)
    loaded = load_checkpoint(checkpoint)
    if loaded.classifier is None:
        log.warning(
            "%s is not a fine-tuned classifier: the %s row of a pretrained model is read, and there are no "
            "predictions (`dnafm eval --save-model` writes a fine-tuned one)",
            checkpoint,
            "[CLS]" if loaded.family == "dnabert" else "<=>",
        )
    result = attention_scores(loaded, data.sequences, cfg)
    write_attention(out_dir, result, data, loaded, cfg)
    return out_dir


def embed(
    checkpoint: str | Path, sequences: list[str], *, pooling: str = "mean", batch_size: int = 32
) -> np.ndarray:
    """(N, d_model) float32 embeddings of ``sequences`` from a checkpoint (any folder `dnafm embed` takes).

    The Python form of `dnafm embed`; pooling and windowing as in ``eval.interpret.embed``."""
    from eval.interpret.embed import embed_sequences
    from eval.saved_model import load_checkpoint

    loaded = load_checkpoint(checkpoint)
    cfg = EmbedConfig(pooling=pooling, batch_size=batch_size, species_token=loaded.species_token)  # type: ignore[arg-type]
    return embed_sequences(loaded.model, loaded.family, loaded.tokenizer, [s.upper() for s in sequences], cfg)


def run_embed(cfg: EmbedConfig, *, checkpoint: Path, data_path: Path, out: Path) -> np.ndarray:
    from eval.interpret.embed import embed_sequences, write_embeddings
    from eval.interpret.inputs import read_sequences
    from eval.saved_model import load_checkpoint

    if out.suffix not in (".npy", ".parquet"):
        from datapipe.common.errors import UsageError

        raise UsageError(f"{out}: --out must end in .npy or .parquet")
    data = read_sequences(data_path)
    loaded = load_checkpoint(checkpoint)
    emb = embed_sequences(loaded.model, loaded.family, loaded.tokenizer, data.sequences, cfg)
    write_embeddings(out, emb, data.ids)
    return emb


def run_variants(
    cfg: VariantConfig, *, checkpoint: Path, vcf: Path, genome: Path, out_dir: Path
) -> dict[str, Any]:
    """Score every variant of ``vcf``; write variants.tsv and summary.json into ``out_dir``; log to MLflow."""
    from datapipe.common.tracking import default_tracking_uri, experiment_name, start_tracker
    from eval.interpret import variants as V
    from eval.saved_model import load_checkpoint

    loaded = load_checkpoint(checkpoint)
    found = V.read_vcf(vcf)
    window = V.default_window(loaded, cfg)
    V.prepare(found, _genome(genome, found), window, cfg, vcf)
    todo = [v for v in found if v.window is not None]
    columns, values = _score(loaded, todo, window, cfg)
    counts = {s: sum(v.status == s for v in found) for s in ("scored", *V.SKIPS)}
    summary = {
        "checkpoint": str(loaded.path),
        "family": loaded.family,
        "mode": scoring_mode(loaded),
        "vcf": str(vcf),
        "genome": str(genome),
        "window_bp": window,
        "alleles": len(found),
        "counts": counts,
        "config": cfg.to_dict(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    tsv = write_atomic(out_dir / "variants.tsv", _variant_table(found, todo, columns, values))
    write_atomic(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    tracker = start_tracker(
        experiment=experiment_name(cfg.experiment, "dnafm-variants"),
        run_name=f"variants-{Path(vcf).name}",
        tracking_uri=default_tracking_uri(out_dir),
        enabled=cfg.tracking,
        stage="variants",
    )
    tracker.log_params(
        {
            **cfg.flat(),
            "checkpoint": str(checkpoint),
            "vcf": str(vcf),
            "genome": str(genome),
            "window_bp": window,
            "mode": summary["mode"],
        }
    )
    metrics = {f"variants/{k}": float(v) for k, v in counts.items()}
    if todo:
        delta = values[columns[-1]]
        metrics["variants/mean_abs_delta"] = float(np.mean(np.abs(delta)))
        metrics["variants/max_abs_delta"] = float(np.max(np.abs(delta)))
    tracker.log_metrics(metrics, step=0)
    tracker.log_artifact(tsv)
    tracker.log_artifact(out_dir / "summary.json")
    tracker.finish()
    log.info("variants: %s", ", ".join(f"{k} {v}" for k, v in counts.items() if v))
    return summary


def _genome(path: Path, found):
    from datapipe.common.errors import MissingError, UsageError
    from eval.genome import Genome

    if not path.is_file():
        raise MissingError(f"{path}: no such genome FASTA")
    chroms = sorted({v.chrom for v in found})
    try:
        return Genome.from_fasta(path, chroms=chroms)
    except UsageError:
        raise UsageError(
            f"{path}: holds none of the VCF's contigs ({', '.join(chroms[:5])}); is it the VCF's genome?"
        ) from None


def scoring_mode(loaded) -> str:
    if loaded.classifier is not None:
        return "classifier"
    return "dnagpt log-likelihood" if loaded.family == "dnagpt" else "dnabert masked log-odds"


def _score(loaded, todo, window: int, cfg: VariantConfig) -> tuple[list[str], dict[str, np.ndarray]]:
    """Score columns (the last is the effect: alt - ref) and their values for the scorable variants."""
    from eval.interpret import variants as V

    mode = scoring_mode(loaded)
    if not todo:
        return [], {}
    refs = [v.window[0] for v in todo]
    alts = [v.window[1] for v in todo]
    if mode == "classifier":
        p_ref, lo_ref = V.score_classifier(loaded, refs, cfg)
        p_alt, lo_alt = V.score_classifier(loaded, alts, cfg)
        return ["p_ref", "p_alt", "logodds_ref", "logodds_alt", "delta_prob", "delta_logodds"], {
            "p_ref": p_ref,
            "p_alt": p_alt,
            "logodds_ref": lo_ref,
            "logodds_alt": lo_alt,
            "delta_prob": p_alt - p_ref,
            "delta_logodds": lo_alt - lo_ref,
        }
    if mode == "dnagpt log-likelihood":
        ll_ref = V.gpt_loglik(loaded, refs, cfg, loaded.species_token)
        ll_alt = V.gpt_loglik(loaded, alts, cfg, loaded.species_token)
        return ["ll_ref", "ll_alt", "delta_ll"], {
            "ll_ref": ll_ref,
            "ll_alt": ll_alt,
            "delta_ll": ll_alt - ll_ref,
        }
    score = V.bert_masked_logodds(loaded, [v.window for v in todo], window // 2, cfg)
    return ["mlm_logodds"], {"mlm_logodds": score}


def _variant_table(found, todo, columns: list[str], values: dict[str, np.ndarray]) -> str:
    """One row per ALT allele in VCF order: position, alleles, status, and the scores when scored."""
    row_of = {id(v): i for i, v in enumerate(todo)}
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    w.writerow(["chrom", "pos", "id", "ref", "alt", "status", *columns])
    for v in found:
        i = row_of.get(id(v))
        cells = [f"{values[c][i]:.6g}" for c in columns] if i is not None else [""] * len(columns)
        w.writerow([v.chrom, v.pos, v.id, v.ref, v.alt, v.status, *cells])
    return buf.getvalue()
