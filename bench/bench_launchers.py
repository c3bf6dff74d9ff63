"""Launchers side by side: the same 2-rank tiny-dnagpt run started by the deepspeed launcher
(`--nproc-per-node 2`) and by Ray Train (`--launcher ray --num-workers 2` on a `ray start --head` cluster of
this machine), in alternating rounds so a noisy neighbour hits both alike.

    .venv/bin/python bench/bench_launchers.py [--steps 60] [--rounds 2]

Prints one table: tokens/s of the training steps (the mean of train/tokens_per_s after the first log window,
which holds the warm-up), the ratio Ray / deepspeed (goal >= 0.95), and the start-up seconds from the command
to the first logged step (process start, group set-up, DeepSpeed engine, loader; for Ray also the worker
actors).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str], out: Path, env: dict[str, str]) -> dict[str, float]:
    """Run one pretraining command; seconds until metrics.jsonl has its first line, and its steady tokens/s."""
    t0 = time.perf_counter()
    # the logs go to a file: a pipe nobody reads while polling fills at 64 KiB and stalls the run
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
        metrics = out / "metrics.jsonl"
        first = None
        while proc.poll() is None:
            if first is None and metrics.exists() and metrics.read_text().strip():
                first = time.perf_counter() - t0
            time.sleep(0.05)
        if proc.returncode != 0:
            log.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{log.read()[-3000:]}")
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    return {
        "startup_s": first or float("nan"),
        "tokens_per_s": statistics.mean(r["train/tokens_per_s"] for r in rows[1:]),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    from cluster.testbed import RayCluster

    scratch = Path(tempfile.mkdtemp(prefix="bench-launchers-"))
    cluster = RayCluster.start(num_cpus=2)
    try:
        data = scratch / "data"
        genome = REPO / "data/genomes/grch37_chr20_44-46Mb.fa.gz"  # 2 Mb of human chr20, shipped
        subprocess.run([sys.executable, "-m", "cluster.cli", "prepare", str(genome), "--species", "human",
                        "--window-tokens", "124", "--out", str(data), "--no-mlflow"], cwd=REPO, check=True)  # fmt: skip
        common = [sys.executable, "-m", "cluster.cli", "pretrain", "--recipe", "tiny-dnagpt", "--no-mlflow",
                  "--data", str(data), "--steps", str(args.steps), "--set", "train.log_every=10",
                  "--set", "loader.num_workers=0"]  # fmt: skip
        launchers = {
            "deepspeed launcher (--nproc-per-node 2)": ["--nproc-per-node", "2"],
            "Ray Train (--launcher ray --num-workers 2)": [
                "--launcher",
                "ray",
                "--num-workers",
                "2",
                "--ray-address",
                cluster.address,
            ],  # fmt: skip
        }
        results: dict[str, list[dict[str, float]]] = {k: [] for k in launchers}
        for r in range(args.rounds):
            for name, extra in launchers.items():
                out = scratch / f"run-{r}-{len(results[name])}-{extra[0].strip('-')}"
                # cluster.env: Ray's loopback single-node mode; without it the driver rewrites 127.0.0.1 to the
                # machine's address, where this cluster does not listen, and waits for the GCS forever
                results[name].append(run([*common, "--out", str(out), *extra], out, cluster.env))
    finally:
        cluster.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    base = statistics.mean(x["tokens_per_s"] for x in results[next(iter(launchers))])
    print(f"\ntiny-dnagpt, 2 CPU ranks (gloo), {args.steps} steps, {args.rounds} rounds (mean)\n")
    print("| launcher | tokens/s | ratio to deepspeed | start-up s |")
    print("|---|---:|---:|---:|")
    for name, runs in results.items():
        tps = statistics.mean(x["tokens_per_s"] for x in runs)
        start = statistics.mean(x["startup_s"] for x in runs)
        print(f"| {name} | {tps:,.0f} | {tps / base:.2f} | {start:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
