"""What an evaluation reports: one row per task (ours, the baselines, the published figure), its MLflow
metrics under one naming scheme, and ``summary.md`` / ``summary.csv``.

MLflow names (README "MLflow"): ``eval/<task>/<metric>`` with ``_lo`` / ``_hi`` for the 95% bootstrap
interval; ``eval/<task>/kmer/<metric>`` and ``eval/<task>/scratch/<metric>`` for the baselines;
``eval/<task>/mcc_gain_vs_scratch`` and ``..._vs_kmer`` (+ ``_lo`` / ``_hi``) for the paired differences.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from eval.metrics import METRICS, averaging


def task_row(data: Any, scores: dict[str, Any], job: Any, parts: Any, seconds: float) -> dict[str, Any]:
    """The summary row of one task, also written as ``<task>.json``."""
    task = job.task
    ours, base = scores["ours"], scores["baseline"]
    row: dict[str, Any] = {
        "task": data.name,
        "source": job.source,
        "n_test": len(parts.test),
        "n_classes": data.num_classes,
        "classes": list(data.class_names),
        "averaging": averaging(data.num_classes),
        "test_sha256": parts.hashes["test"][:12],
        "seconds": round(seconds, 1),
    }
    for m in METRICS:
        row[f"{m}"] = ours[m]["value"]
        row[f"{m}_ci"] = [ours[m]["lo"], ours[m]["hi"]]
        row[f"baseline_{m}"] = base[m]["value"]
        row[f"baseline_{m}_ci"] = [base[m]["lo"], base[m]["hi"]]
        if "scratch" in scores:
            row[f"scratch_{m}"] = scores["scratch"][m]["value"]
            row[f"scratch_{m}_ci"] = [scores["scratch"][m]["lo"], scores["scratch"][m]["hi"]]
    for other in ("kmer", "scratch"):
        gain = scores.get(f"gain_vs_{other}")
        if gain is not None:
            row[f"mcc_gain_vs_{other}"] = gain["value"]
            row[f"mcc_gain_vs_{other}_ci"] = [gain["lo"], gain["hi"]]
    row["published"] = dict(task.published or {}) if task else {}
    row["published_note"] = task.published_note if task else "user data: no published figure"
    return row


def mlflow_metrics(row: dict[str, Any]) -> dict[str, float]:
    """A task row as ``eval/<task>/...`` metrics (see the module docstring)."""
    name = row["task"]
    out: dict[str, float] = {}
    for m in METRICS:
        for who, key in (("", m), ("kmer/", f"baseline_{m}"), ("scratch/", f"scratch_{m}")):
            if key in row:
                out[f"eval/{name}/{who}{m}"] = row[key]
                out[f"eval/{name}/{who}{m}_lo"], out[f"eval/{name}/{who}{m}_hi"] = row[f"{key}_ci"]
    for other in ("kmer", "scratch"):
        key = f"mcc_gain_vs_{other}"
        if key in row:
            out[f"eval/{name}/{key}"] = row[key]
            out[f"eval/{name}/{key}_lo"], out[f"eval/{name}/{key}_hi"] = row[f"{key}_ci"]
    return out


def _ci(value: float, ci: list[float]) -> str:
    return f"{value:.4f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def gain_sentence(row: dict[str, Any], other: str, label: str) -> str:
    """'beats no pretraining: MCC +0.12 [0.05, 0.19]' / 'does not beat ...' (the CI must exclude 0)."""
    value, (lo, hi) = row[f"mcc_gain_vs_{other}"], row[f"mcc_gain_vs_{other}_ci"]
    verdict = "beats" if lo > 0 else "is worse than" if hi < 0 else "does not clearly beat"
    return f"{verdict} {label}: MCC {value:+.3f} [{lo:+.3f}, {hi:+.3f}] (paired bootstrap, 95%)"


def write_summary(rows: list[dict[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    """summary.md and summary.csv: ours [95% CI], the k-mer baseline, the model trained from scratch when asked
    for (with the paired MCC difference), and the published figure, metric named; 'averaging' says per row
    whether F1/AUROC are binary or macro over C classes."""
    scratch = any("scratch_mcc" in r for r in rows)
    header = (
        ["task", "classes", "averaging"]
        + [f"{m} (dnafm)" for m in METRICS]
        + [f"{m} (4-mer LR)" for m in METRICS]
        + ([f"{m} (no pretraining)" for m in METRICS] + ["mcc gain vs no pretraining"] if scratch else [])
        + ["mcc gain vs 4-mer LR", "published", "test split sha256"]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table = []
    for r in rows:
        cells = [r["task"], str(r["n_classes"]), r["averaging"]]
        cells += [_ci(r[m], r[m + "_ci"]) for m in METRICS]
        cells += [_ci(r["baseline_" + m], r["baseline_" + m + "_ci"]) for m in METRICS]
        if scratch:
            cells += [_ci(r["scratch_" + m], r["scratch_" + m + "_ci"]) for m in METRICS]
            cells.append(_signed(r, "scratch"))
        cells.append(_signed(r, "kmer"))
        pub = ", ".join(f"{k} {v}" for k, v in r["published"].items()) or f"none ({r['published_note']})"
        cells += [pub, r["test_sha256"]]
        lines.append("| " + " | ".join(cells) + " |")
        table.append(cells)
    md = out_dir / "summary.md"
    md.write_text("\n".join(lines) + "\n")
    csv_path = out_dir / "summary.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(table)
    return md, csv_path


def _signed(row: dict[str, Any], other: str) -> str:
    value, (lo, hi) = row[f"mcc_gain_vs_{other}"], row[f"mcc_gain_vs_{other}_ci"]
    return f"{value:+.4f} [{lo:+.3f}, {hi:+.3f}]"
