"""What an evaluation reports: one row per task (ours, the baselines, the published figure), its MLflow
metrics under one naming scheme, and ``summary.md`` / ``summary.csv``.

MLflow names (README "MLflow"): ``eval/<task>/<metric>`` with ``_lo`` / ``_hi`` for the 95% bootstrap
interval; ``eval/<task>/kmer/<metric>`` and ``eval/<task>/scratch/<metric>`` for the baselines;
``eval/<task>/mcc_gain_vs_scratch`` and ``..._vs_kmer`` (+ ``_lo`` / ``_hi``) for the paired differences.
Regression rows (``kind`` 'regression') carry r2 / spearman / mse instead, the ridge baseline under ``kmer/``,
and ``r2_gain_vs_*``; summary.md shows them in a table of their own below the classification table.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from eval.metrics import METRICS, averaging
from eval.regression import REGRESSION_METRICS


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


def regression_row(
    data: Any, scores: dict[str, Any], job: Any, parts: Any, seconds: float, info: dict[str, Any]
) -> dict[str, Any]:
    """The summary row of one regression task, also written as ``<task>.json``."""
    task = job.task
    row: dict[str, Any] = {
        "task": data.name,
        "kind": "regression",
        "source": job.source,
        "target": data.target,
        "n_test": len(parts.test),
        "n_features": data.num_features,
        "features": list(data.feature_names),
        "skipped": dict(data.skipped),
        "window_pool": info["pool"],
        "windows_per_example": round(info["windows_per_example"], 2),
        "test_sha256": parts.hashes["test"][:12],
        "seconds": round(seconds, 1),
    }
    for who, prefix in (("ours", ""), ("baseline", "baseline_"), ("scratch", "scratch_")):
        for m in REGRESSION_METRICS if who in scores else ():
            row[f"{prefix}{m}"] = scores[who][m]["value"]
            row[f"{prefix}{m}_ci"] = [scores[who][m]["lo"], scores[who][m]["hi"]]
    for other in ("kmer", "scratch"):
        gain = scores.get(f"gain_vs_{other}")
        if gain is not None:
            row[f"r2_gain_vs_{other}"] = gain["value"]
            row[f"r2_gain_vs_{other}_ci"] = [gain["lo"], gain["hi"]]
    row["published"] = dict(task.published or {}) if task else {}
    row["published_note"] = task.published_note if task else "user data: no published figure"
    return row


def _is_regression(row: dict[str, Any]) -> bool:
    return row.get("kind") == "regression"


def mlflow_metrics(row: dict[str, Any]) -> dict[str, float]:
    """A task row as ``eval/<task>/...`` metrics (see the module docstring)."""
    name = row["task"]
    out: dict[str, float] = {}
    gain = "r2" if _is_regression(row) else "mcc"
    for m in REGRESSION_METRICS if _is_regression(row) else METRICS:
        for who, key in (("", m), ("kmer/", f"baseline_{m}"), ("scratch/", f"scratch_{m}")):
            if key in row:
                out[f"eval/{name}/{who}{m}"] = row[key]
                out[f"eval/{name}/{who}{m}_lo"], out[f"eval/{name}/{who}{m}_hi"] = row[f"{key}_ci"]
    for other in ("kmer", "scratch"):
        key = f"{gain}_gain_vs_{other}"
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
    whether F1/AUROC are binary or macro over C classes. Regression rows get a table of their own below (and
    their own columns in summary.csv)."""
    regression = [r for r in rows if _is_regression(r)]
    rows = [r for r in rows if not _is_regression(r)]
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
    if not rows:
        lines, header, table = [], [], []
    if regression:
        reg_header, reg_table = _regression_table(regression)
        lines += [
            "",
            "Regression (r2 = squared Pearson r, as Xpresso reports it; mse in the target's units)",
            "",
        ]
        lines += ["| " + " | ".join(reg_header) + " |", "|" + "---|" * len(reg_header)]
        lines += ["| " + " | ".join(cells) + " |" for cells in reg_table]
        # one CSV: the union of the columns, empty where a column does not apply to a row
        union = header + [h for h in reg_header if h not in header]
        table = [dict(zip(header, c, strict=True)) for c in table]
        table += [dict(zip(reg_header, c, strict=True)) for c in reg_table]
        header, table = union, [[t.get(h, "") for h in union] for t in table]
    md = out_dir / "summary.md"
    md.write_text("\n".join(lines).lstrip("\n") + "\n")
    csv_path = out_dir / "summary.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(table)
    return md, csv_path


def _regression_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    scratch = any("scratch_r2" in r for r in rows)
    header = (
        ["task", "target", "features", "windows"]
        + [f"{m} (dnafm)" for m in REGRESSION_METRICS]
        + [f"{m} (4-mer ridge)" for m in REGRESSION_METRICS]
        + (
            [f"{m} (no pretraining)" for m in REGRESSION_METRICS] + ["r2 gain vs no pretraining"]
            if scratch
            else []
        )
        + ["r2 gain vs 4-mer ridge", "published", "test split sha256"]
    )
    table = []
    for r in rows:
        cells = [r["task"], r["target"], ", ".join(r["features"]) or "none"]
        cells.append(f"{r['windows_per_example']} per example, {r['window_pool']} pooled")
        cells += [_ci(r[m], r[m + "_ci"]) for m in REGRESSION_METRICS]
        cells += [_ci(r["baseline_" + m], r["baseline_" + m + "_ci"]) for m in REGRESSION_METRICS]
        if scratch:
            cells += [_ci(r["scratch_" + m], r["scratch_" + m + "_ci"]) for m in REGRESSION_METRICS]
            cells.append(_signed(r, "scratch", "r2"))
        cells.append(_signed(r, "kmer", "r2"))
        pub = ", ".join(f"{k} {v}" for k, v in r["published"].items())
        cells += [
            f"{pub} ({r['published_note']})" if pub else f"none ({r['published_note']})",
            r["test_sha256"],
        ]
        table.append(cells)
    return header, table


def _signed(row: dict[str, Any], other: str, metric: str = "mcc") -> str:
    value, (lo, hi) = row[f"{metric}_gain_vs_{other}"], row[f"{metric}_gain_vs_{other}_ci"]
    return f"{value:+.4f} [{lo:+.3f}, {hi:+.3f}]"
