"""The end of `./dev gpu` (bench/gpu.py): machine/date/command lines and one Markdown table, in the form
BENCHMARKS.md uses (bullets, then a table whose baseline sits beside ours as a ratio)."""

from __future__ import annotations

import datetime
import importlib.metadata as md
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAD = ["part", "case", "ours", "baseline", "ours / baseline", "goal", "note"]


def header_lines(args, wall_s: float) -> list[str]:
    import torch

    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    gpu = torch.cuda.is_available() and not args.dry_run
    if gpu:
        props = torch.cuda.get_device_properties(0)
        machine = f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    else:
        machine = "CPU only (dry run)" if args.dry_run else "no GPU"
    versions = ", ".join(f"{n} {_version(n)}" for n in ("torch", "triton", "deepspeed", "transformers"))
    command = "./dev gpu " + " ".join(a for a in sys.argv[1:])
    lines = [
        f"## `./dev gpu`, {now}",
        "",
        f"- Machine: {machine}; {os.cpu_count()} CPU cores; Python {platform.python_version()}.",
        f"- Software: {versions}. Commit: {_commit()}.",
        f"- Command: `{command.strip()}`; {wall_s:.0f} s wall of a {args.budget:.0f} s budget.",
    ]
    if args.dry_run:
        lines.append(
            "- DRY RUN: CPU, fp32, tiny shapes, the Triton kernels through their interpreter, torch.compile "
            "with the aot_eager backend. The figures show that every part runs; they measure nothing."
        )
    else:
        tune = "autotuned" if args.autotune else "the kernels' defaults (autotuning off)"
        lines.append(
            f"- bf16. Kernel times: triton.testing.do_bench medians. Attention blocks: {tune}. "
            "Training: tokens/s over the steps after a warm-up window; MFU = tokens/s x (6N + 12 L d T) / "
            "the bf16 dense peak."
        )
    return lines


def render(rows: list[dict]) -> str:
    """The one table: a header row, then one line per row (every row of every part)."""
    lines = ["| " + " | ".join(HEAD) + " |", "|---|---|---:|---:|---:|---|---|"]
    for r in rows:
        cells = [
            r["part"],
            r["case"],
            _ours(r),
            _baseline(r),
            _ratio(r),
            r.get("goal", ""),
            r.get("note", ""),
        ]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def _ours(r: dict) -> str:
    if r["ours"] is None:
        return "skipped (time)" if r.get("status") == "skipped" else "FAILED"
    text = f"{num(r['ours'])} {r['unit']}".strip()
    if r.get("ours_extra"):
        text += f", {r['ours_extra']}"
    flag = {"mismatch": "MISMATCH", "timeout": "cut short", "failed": "FAILED"}.get(r.get("status", "ok"))
    return f"{text} ({flag})" if flag else text


def _baseline(r: dict) -> str:
    name = r.get("baseline_name", "")
    if r.get("baseline") is None:
        return f"n/a ({name})" if name and r["ours"] is not None else ""
    text = f"{num(r['baseline'])} {r['unit']}"
    if r.get("baseline_extra"):
        text += f", {r['baseline_extra']}"
    return f"{text} ({name})" if name else text


def _ratio(r: dict) -> str:
    return "" if r.get("ratio") is None else f"{r['ratio']:.2f}x"


def num(x: float) -> str:
    """1,234,567 / 123 / 12.3 / 1.23 / 0.0123: three significant figures below 100, none lost above."""
    if x == int(x) and abs(x) < 1e15:
        return f"{int(x):,}"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def _version(name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "absent"


def _commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        )
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True)
    except OSError:
        return "unknown (no git)"
    if head.returncode != 0:
        return "unknown (not a git checkout)"
    return head.stdout.strip() + (" with local changes" if dirty.stdout.strip() else "")
