"""The comparison report: ``report.md``, one self-contained ``report.html`` (tables and the PNGs embedded),
the PNGs themselves (loss curves against step and against tokens seen, per-task metric bars with 95% CI
whiskers), and a short table for the terminal."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from eval.metrics import METRICS  # noqa: E402

LOWER_IS_BETTER = ("train/loss", "train/loss_lm", "train/loss_order", "train/loss_gc", "wall_s")


def tasks_of(table) -> list[str]:
    return sorted({c.split("/")[1] for c in table.columns if c.startswith("eval/") and c.count("/") == 2})


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4f}"
    return str(v)


def sections(table) -> list[tuple[str, list[str], list[list[str]], list[list[bool]]]]:
    """(title, header, rows of cells, which cells are the best of their column) for each table."""
    names = list(table["run_name"])
    params = [c for c in table.columns if c.startswith("param.")]
    out = []
    out.append(("Runs and the parameters that differ", ["run", "run id", *[c[6:] for c in params]],
                [[n, r, *[_fmt(table.at[i, c]) for c in params]] for i, (n, r) in enumerate(zip(names, table["run_id"],
                 strict=True))], [[False] * (2 + len(params)) for _ in names]))  # fmt: skip
    train = [c for c in table.columns if c.startswith("train/") or c in ("steps", "tokens_seen", "wall_s")]
    out.append(("Training", ["run", *train], [[n, *[_fmt(table.at[i, c]) for c in train]] for i, n in enumerate(names)],
                [[False, *_best(table, train, i)] for i in range(len(names))]))  # fmt: skip
    for task in tasks_of(table):
        cols = [m for m in METRICS if f"eval/{task}/{m}" in table.columns]
        extra = [
            c
            for c in (f"eval/{task}/mcc_gain_vs_scratch", f"eval/{task}/mcc_gain_vs_kmer")
            if c in table.columns
        ]
        keys = [f"eval/{task}/{m}" for m in cols] + extra
        header = [
            "run",
            *[f"{m} [95% CI]" for m in cols],
            *[c.split("/")[-1].replace("_", " ") + " [95% CI]" for c in extra],
        ]
        rows = [[n, *[_with_ci(table, i, k) for k in keys]] for i, n in enumerate(names)]
        out.append(
            (f"Task {task}", header, rows, [[False, *_best(table, keys, i)] for i in range(len(names))])
        )
    return out


def _with_ci(table, i: int, key: str) -> str:
    v = table.at[i, key]
    lo, hi = table.get(f"{key}_lo"), table.get(f"{key}_hi")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if lo is None or hi is None:
        return f"{v:.4f}"
    return f"{v:.4f} [{lo[i]:.3f}, {hi[i]:.3f}]"


def _best(table, keys: list[str], i: int) -> list[bool]:
    flags = []
    for k in keys:
        col = table[k].astype(float)
        if col.isna().all() or k in ("steps", "tokens_seen") or col.nunique() < 2:  # nothing to single out
            flags.append(False)
            continue
        best = col.min() if (k in LOWER_IS_BETTER or k.startswith("train/loss")) else col.max()
        flags.append(bool(col[i] == best))
    return flags


def plot_curves(curves: dict[str, dict[str, list[float]]], names: dict[str, str], out: Path) -> list[Path]:
    """Overlaid train/loss against step and against tokens seen."""
    paths = []
    for x, label in (("step", "optimizer step"), ("tokens_seen", "tokens seen")):
        fig, ax = plt.subplots(figsize=(7, 4))
        for run_id, c in curves.items():
            if c.get(x) and len(c[x]) == len(c["loss"]):
                ax.plot(c[x], c["loss"], label=names[run_id])
        ax.set_xlabel(label)
        ax.set_ylabel("train/loss")
        ax.set_title(f"pretraining loss against {label}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"loss_vs_{x}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_tasks(table, out: Path) -> list[Path]:
    """One bar chart per task: each run's metrics with their 95% CI as whiskers."""
    paths = []
    for task in tasks_of(table):
        metrics = [m for m in METRICS if f"eval/{task}/{m}" in table.columns]
        fig, ax = plt.subplots(figsize=(7, 4))
        width = 0.8 / max(len(table), 1)
        for i, name in enumerate(table["run_name"]):
            vals = [table.at[i, f"eval/{task}/{m}"] for m in metrics]
            lo = [v - table.at[i, f"eval/{task}/{m}_lo"] for v, m in zip(vals, metrics, strict=True)]
            hi = [table.at[i, f"eval/{task}/{m}_hi"] - v for v, m in zip(vals, metrics, strict=True)]
            xs = [j + i * width for j in range(len(metrics))]
            ax.bar(xs, vals, width, yerr=[lo, hi], capsize=3, label=name)
        ax.set_xticks([j + width * (len(table) - 1) / 2 for j in range(len(metrics))], metrics)
        ax.set_ylabel("test score (95% bootstrap CI)")
        ax.set_title(f"{task}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"task_{task}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def write_markdown(table, pngs: list[Path], path: Path) -> Path:
    lines = ["# dnafm compare", ""]
    for title, header, rows, best in sections(table):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for cells, flags in zip(rows, best, strict=True):
            lines.append(
                "| " + " | ".join(f"**{c}**" if f else c for c, f in zip(cells, flags, strict=True)) + " |"
            )
        lines.append("")
    lines += [
        "Best of each column in bold. Intervals are 95% percentile bootstrap over the test examples.",
        "",
    ]
    lines += [f"![{p.stem}]({p.name})" for p in pngs]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_html(table, pngs: list[Path], path: Path) -> Path:
    """One file a browser shows offline: the tables, and every PNG as a data: URI."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>dnafm compare</title><style>",
             "body{font-family:sans-serif;margin:24px;color:#222} table{border-collapse:collapse;margin:8px 0 24px}",
             "th,td{border:1px solid #bbb;padding:4px 8px;font-size:13px;text-align:right} th{background:#eef}",
             "td:first-child,th:first-child{text-align:left} td.best{font-weight:bold;background:#efe}",
             "img{max-width:700px;margin:8px}</style></head><body><h1>dnafm compare</h1>"]  # fmt: skip
    for title, header, rows, best in sections(table):
        parts.append(f"<h2>{html.escape(title)}</h2><table><tr>")
        parts += [f"<th>{html.escape(h)}</th>" for h in header]
        parts.append("</tr>")
        for cells, flags in zip(rows, best, strict=True):
            parts.append("<tr>" + "".join(f"<td{' class=best' if f else ''}>{html.escape(c)}</td>"
                                          for c, f in zip(cells, flags, strict=True)) + "</tr>")  # fmt: skip
        parts.append("</table>")
    parts.append(
        "<p>Best of each column in bold. Intervals are 95% percentile bootstrap over the test examples.</p>"
    )
    for png in pngs:
        data = base64.b64encode(png.read_bytes()).decode()
        parts.append(f"<img alt='{png.stem}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    path.write_text("".join(parts))
    return path


def terminal_table(table) -> str:
    """run, final loss, and each task's MCC."""
    tasks = tasks_of(table)
    header = ["run", "train/loss", *[f"{t} MCC" for t in tasks]]
    lines = ["  ".join(header)]
    for i, name in enumerate(table["run_name"]):
        cells = [name, _fmt(table.at[i, "train/loss"]) if "train/loss" in table.columns else "-"]
        cells += [
            _with_ci(table, i, f"eval/{t}/mcc") if f"eval/{t}/mcc" in table.columns else "-" for t in tasks
        ]
        lines.append("  ".join(cells))
    return "\n".join(lines)
