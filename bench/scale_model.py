"""The cost curve of bench_scale.py: per-token costs at each size, straight-line fits, the 200B-token projection.

    .venv/bin/python bench/scale_model.py rows.json [--before before.json]

Each cost y measured at the three sizes is fitted as y = a + b x (least squares; x = bases, work units
or shards, whichever the cost is paid per), so the projection uses the slope b of the measured curve
and keeps the fixed part a apart, instead of dividing one run's total by its size. ``--before``: rows
of a run of the code before a change, whose loader start-up is shown beside the current one.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

TOKENS = 200e9
RAY_DRIVER_TASKS_PER_S = (
    450  # Ray's own release benchmark "many_tasks", one driver, 2,500 CPUs: 444-602 tasks/s
)
TASKS_PER_UNIT = 2  # bgzip / plain FASTA: a scan task and a unit task per chunk
CLUSTERS = ((1, 16), (10, 32), (100, 64))
BYTES_PER_UNIT_BASE = 10  # a task's memory per base of its unit (prepare's region_bp documentation)


def fit(x: list[float], y: list[float]) -> tuple[float, float]:
    """(a, b) of y = a + b x."""
    b, a = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
    return float(a), float(b)


def flatness(rows: list[dict[str, Any]]) -> None:
    """Per-token (per-unit, per-shard) costs at each size and their ratio largest / smallest corpus."""
    costs = {
        "prepare s per Gbp (driver's own time)": [r["prepare_s"] / r["bases"] * 1e9 for r in rows],
        "prepare s per Gbp (whole CLI run)": [r["wall"] / r["bases"] * 1e9 for r in rows],
        "driver CPU ms per unit": [1e3 * r["driver_cpu"] / r["units"] for r in rows],
        "driver peak MB": [r["driver_mb"] for r in rows],
        "task peak MB (largest Ray worker)": [r["task_mb"] for r in rows],
        "manifest bytes per shard": [r["manifest_mb"] * 1e6 / r["shards"] for r in rows],
        "manifest load ms per 1k shards": [1e6 * r["manifest_s"] / r["shards"] for r in rows],
        "manifest in memory, bytes per shard": [r["manifest_mem_mb"] * 1e6 / r["shards"] for r in rows],
        "verify s per Gbp (1 process)": [r["verify_s"] / r["bases"] * 1e9 for r in rows],
        "disk bytes per base": [r["disk_bytes"] / r["bases"] for r in rows],
        "samples per shard": [r["samples"] / r["shards"] for r in rows],
    }
    if all("verify_workers_s" in r for r in rows):
        costs["verify s per Gbp (--workers processes)"] = [
            r["verify_workers_s"] / r["bases"] * 1e9 for r in rows
        ]
    for lo in rows[0]["loader"]:
        key = (lo["world"], lo["checks"])
        label = f"loader at {key[0]} rank(s), checks {key[1]}"
        costs[f"{label}: start-up ms per rank"] = [1e3 * _loader(r, key)["start"] for r in rows]
        costs[f"{label}: M tokens/s per rank"] = [_loader(r, key)["tps"] / 1e6 for r in rows]
    sizes = " | ".join(f"{r['target_gbp']} Gbp" for r in rows)
    print(f"\n| cost | {sizes} | largest / smallest |")
    print("|---" + "|---:" * (len(rows) + 1) + "|")
    for name, values in costs.items():
        cells = " | ".join(f"{v:,.3g}" for v in values)
        print(f"| {name} | {cells} | {values[-1] / values[0]:.2f}x |")


def _loader(row: dict[str, Any], key: tuple[int, str]) -> dict[str, Any]:
    return next(lo for lo in row["loader"] if (lo["world"], lo["checks"]) == key)


def project(rows: list[dict[str, Any]], before: list[dict[str, Any]] | None, workers: int) -> None:
    bases = [r["bases"] for r in rows]
    tokens_per_base = rows[-1]["tokens"] / rows[-1]["bases"]
    b200 = TOKENS / tokens_per_base
    a_prep, b_prep = fit(bases, [r["prepare_s"] for r in rows])
    core_rate = 1 / (b_prep * workers)  # bases per second per core, from the slope
    a_drv, b_drv = fit([r["units"] for r in rows], [r["driver_cpu"] for r in rows])
    units_per_base = rows[-1]["units"] / rows[-1]["bases"]
    shards_per_base = rows[-1]["shards"] / rows[-1]["bases"]
    region_bp = 1 / units_per_base
    a_ver, b_ver = fit(bases, [r["verify_s"] for r in rows])
    a_man, b_man = fit([r["shards"] for r in rows], [r["manifest_mb"] * 1e6 for r in rows])
    a_ms, b_ms = fit([r["shards"] for r in rows], [r["manifest_s"] for r in rows])
    a_mm, b_mm = fit([r["shards"] for r in rows], [r["manifest_mem_mb"] * 1e6 for r in rows])
    disk = rows[-1]["disk_bytes"] / rows[-1]["bases"]
    input_bytes = rows[-1].get("input_bytes", 0) / rows[-1]["bases"]
    units200, shards200 = b200 * units_per_base, b200 * shards_per_base
    driver_units_s = min(1 / b_drv, RAY_DRIVER_TASKS_PER_S / TASKS_PER_UNIT)
    print(f"\n200B tokens at {tokens_per_base:.4f} tokens per base = {b200 / 1e12:.3f} Tbp")
    print(
        f"- prepare: {a_prep:.1f} s + {b_prep * 1e9:.2f} s per Gbp on {workers} workers = {core_rate / 1e6:.1f} MB/s per core"
    )
    print(
        f"- driver CPU: {a_drv:.1f} s + {1e3 * b_drv:.2f} ms per unit ({TASKS_PER_UNIT} tasks): at most {1 / b_drv:.0f} units/s "
        f"on one core; Ray's single-driver benchmark ~{RAY_DRIVER_TASKS_PER_S} tasks/s = {RAY_DRIVER_TASKS_PER_S / TASKS_PER_UNIT:.0f} units/s"
    )
    print(f"- units of ~{region_bp / 1e6:.1f} Mbp: {units200:,.0f} units, {shards200:,.0f} shards")
    print(
        f"- storage: {disk:.3f} bytes of output per base = {disk * b200 / 1e12:.2f} TB"
        + (
            f", inputs (bgzip) {input_bytes:.3f} B/base = {input_bytes * b200 / 1e12:.2f} TB"
            if input_bytes
            else ""
        )
    )
    print(
        f"- manifest: {(a_man + b_man * shards200) / 1e6:,.0f} MB, read in {a_ms + b_ms * shards200:.1f} s, "
        f"{(a_mm + b_mm * shards200) / 1e9:.2f} GB of Python objects while read (per rank, and in the driver)"
    )
    print(
        f"- verify: {a_ver:.1f} s + {b_ver * 1e9:.2f} s per Gbp per process: {b_ver * b200 / 3600:.1f} h in one process"
    )
    if all("verify_workers_s" in r for r in rows):
        _, b_vw = fit(bases, [r["verify_workers_s"] for r in rows])
        print(
            f"- verify with {workers} processes: {b_vw * 1e9:.2f} s per Gbp ({b_ver / b_vw:.2f}x one process): "
            f"{b_vw * b200 / 3600:.1f} h"
        )
    key_all = next(((lo["world"], lo["checks"]) for lo in rows[0]["loader"] if lo["checks"] == "all"), None)
    for label, data, key in (("before", before, (1, "all (before)")), ("check_shards=all", rows, (1, "all"))):
        if data and key and all(any((lo["world"], lo["checks"]) == key for lo in r["loader"]) for r in data):
            a_ls, b_ls = fit([r["shards"] for r in data], [_loader(r, key)["start"] for r in data])
            at_200 = (
                f"{a_ls + b_ls * shards200:.0f} s"
                if b_ls > 0
                else "not projected (no growth above the noise over the measured sizes)"
            )
            print(
                f"- loader start-up per rank, {label}: {a_ls:.3f} s + {1e6 * b_ls:.1f} us per shard = {at_200}"
            )
    if key_all:
        sample = [
            _loader(r, (1, "sample"))["start"]
            for r in rows
            if any(lo["checks"] == "sample" for lo in r["loader"])
        ]
        if sample:
            print(
                f"- loader start-up per rank, sampled checks: {', '.join(f'{s:.3f}' for s in sample)} s at the three sizes"
            )
    print(
        "\n| nodes x cores | prepare (compute) | units/s needed at the default unit | smallest unit for <= half the driver ceiling | memory per task at that unit (measured peak + 10 B per extra base) | shards written per s |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    task_mb = rows[-1]["task_mb"]
    for nodes, cores in CLUSTERS:
        rate = core_rate * nodes * cores
        seconds = b200 / rate
        need = rate / region_bp
        unit = max(region_bp, rate / (driver_units_s / 2))
        print(
            f"| {nodes} x {cores} | {_duration(seconds)} | {need:,.0f} | {unit / 1e6:,.0f} Mbp | "
            f"~{(task_mb * 1e6 + BYTES_PER_UNIT_BASE * (unit - region_bp)) / 1e9:.1f} GB | {shards200 / seconds:,.0f} |"
        )


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{math.ceil(seconds)} s"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("rows", help="JSON written by bench_scale.py --json")
    p.add_argument("--before", help="rows of a run of the code before a change (loader start-up)")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    rows = json.loads(Path(args.rows).read_text())
    before = json.loads(Path(args.before).read_text()) if args.before else None
    flatness(rows)
    project(rows, before, args.workers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
