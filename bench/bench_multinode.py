"""Two nodes against one: the multi-node drills (tests/test_multinode.py, two network namespaces on this
machine) run with their timings recorded, then one table: tokens/s and start-up seconds of the tiny-dnagpt run
under each launcher, and the seconds from a node loss to training again.

    .venv/bin/python bench/bench_multinode.py          # root and iproute2; ~10 min on 2 cores

Both "nodes" share this machine's cores, so two-node throughput measures what the launchers and the
network path cost, not a speed-up. Start-up is from launching the command(s) to the first logged step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        figures = Path(tmp) / "figures.jsonl"
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "tests/test_multinode.py", "-q", "-p", "no:cacheprovider"],
            cwd=REPO,
            env={**os.environ, "DNAFM_DRILL_FIGURES": str(figures)},
        )
        if proc.returncode != 0 or not figures.exists():
            print("the drills failed; no figures", file=sys.stderr)
            return 1
        rows = [json.loads(line) for line in figures.read_text().splitlines()]
    base = next(r for r in rows if r["drill"].startswith("torchrun, one node"))
    print("\ntiny-dnagpt, 2 CPU ranks, 40 steps; two nodes = two network namespaces on one 2-core machine\n")
    print("| run | tokens/s | ratio to one node | start-up s |")
    print("|---|---:|---:|---:|")
    for r in rows:
        if "tokens_per_s" in r:
            ratio = r["tokens_per_s"] / base["tokens_per_s"]
            print(f"| {r['drill']} | {r['tokens_per_s']:,.0f} | {ratio:.2f} | {r['startup_s']:.1f} |")
    print("\n| node loss | seconds to training again |")
    print("|---|---:|")
    for r in rows:
        if "back_training_s" in r:
            print(f"| {r['drill']} | {r['back_training_s']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
