"""The transfer curve (issue #23): downstream test MCC against pretraining tokens.

    .venv/bin/python bench/bench_transfer.py RUN [RUN ...] --tasks pas-human,splice-human --out runs/transfer

RUN is a `dnafm pretrain --out` folder trained with `--set train.ckpt_every=N`: its checkpoints/stepNNNNNNN
folders are the budgets (one run, read at several points, rather than one run per budget: a point is the
model after that many tokens of a longer schedule, not a run annealed to that budget). Every checkpoint is
exported (`dnafm export --tag`) and fine-tuned by `dnafm eval` with the repo's defaults (or --set overrides);
the 0-token point is the same architecture fine-tuned from random initialisation (eval's `scratch` baseline,
run once per RUN), and the 4-mer logistic regression is drawn as a line. Tokens seen come from
RUN/metrics.jsonl (train/tokens_seen at that step, so --set train.log_every must divide ckpt_every).

Each point's gain over the twin is a paired bootstrap difference of test MCC, read from the two evals'
<task>_predictions.tsv (the same split, so the same test examples; one fine-tuning seed each, so the CI
covers the test sample, not fine-tuning noise).

Writes OUT/transfer.csv, OUT/transfer.md (MCC and gain tables) and OUT/transfer.png (top: MCC, bottom: gain
over the twin); `--merge DIR ...` adds the points of earlier OUT folders (e.g. one family per run of this
script) to the tables and the figure. Each point costs
one fine-tune per task: tiny recipes on 2 cores, measured 161-221 s for pas, tis and splice together, and
the first point, which also fine-tunes the twin, 323-338 s.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from eval.metrics import paired_difference

ROOT = Path(__file__).resolve().parents[1]


def dnafm(*args: str) -> None:
    """Run one `dnafm` command as a user would (a child process), failing loudly with its output."""
    cmd = [sys.executable, "-m", "cluster.cli", *args]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(
            f"{' '.join(cmd)} failed (rc {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )


def checkpoint_steps(run: Path) -> list[int]:
    steps = sorted(
        int(m.group(1)) for p in (run / "checkpoints").iterdir() if (m := re.fullmatch(r"step(\d+)", p.name))
    )
    if not steps:
        sys.exit(f"{run}/checkpoints has no stepNNNNNNN folders: pretrain with --set train.ckpt_every=N")
    return steps


def logged(run: Path) -> tuple[dict[int, float], dict[int, float]]:
    """(tokens seen, minutes of pretraining) at each logged step of RUN/metrics.jsonl. The minutes count from
    the run's first step, extrapolated back from the first two logs (start-up and data loading excluded)."""
    with open(run / "metrics.jsonl") as f:
        rows = [r for line in f if line.strip() and "train/tokens_seen" in (r := json.loads(line))]
    (s0, t0), (s1, t1) = [(r["step"], r["time"]) for r in rows[:2]]
    start = t0 - (t1 - t0) * s0 / (s1 - s0)
    tokens = {int(r["step"]): float(r["train/tokens_seen"]) for r in rows}
    return tokens, {int(r["step"]): (r["time"] - start) / 60 for r in rows}


def evaluate(ckpt: Path, out: Path, tasks: str, baselines: str, overrides: list[str]) -> dict[str, dict]:
    """`dnafm eval` of one export; a finished eval folder is read back, not rerun (a second call with more
    RUNs only adds their points, e.g. to draw two families on one figure; use a new OUT for other --set)."""
    if all(
        (out / f"{t}.json").exists() and (out / f"{t}_predictions.tsv").exists() for t in tasks.split(",")
    ):
        done = {t: json.loads((out / f"{t}.json").read_text()) for t in tasks.split(",")}
        if "scratch" not in baselines or all("scratch_mcc" in r for r in done.values()):
            return done  # else it was run without the twin this point now needs: run again
    sets = [a for o in overrides for a in ("--set", o)]
    dnafm("eval", "--checkpoint", str(ckpt), "--out", str(out), "--tasks", tasks, "--no-mlflow",
          "--set", f"baselines={baselines}", *sets)  # fmt: skip
    return {t: json.loads((out / f"{t}.json").read_text()) for t in tasks.split(",")}


def read_probs(eval_dir: Path, task: str, who: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(example ids, labels, (N_test, C) probabilities of ``who``) from an eval's <task>_predictions.tsv."""
    path = eval_dir / f"{task}_predictions.tsv"
    if not path.exists():
        sys.exit(
            f"{path} is missing: that eval predates per-example predictions; delete its folder to rerun it"
        )
    table = np.atleast_1d(np.genfromtxt(path, delimiter="\t", names=True))  # a one-row file reads as 0-d
    cols = sorted(
        (c for c in table.dtype.names if c.startswith(f"{who}_p")), key=lambda c: int(c.split("_p")[1])
    )
    return (
        table["example"].astype(int),
        table["label"].astype(int),
        np.stack([table[c] for c in cols], axis=1),
    )


def paired_gain(point: Path, twin: Path, task: str) -> dict[str, float]:
    """MCC of the point's fine-tune minus the random twin's, on the same test examples (paired bootstrap 95%
    CI, eval's seed and resample count): every point is paired with the one twin fine-tuned by the first eval."""
    ids, y, prob = read_probs(point, task, "dnafm")
    twin_ids, twin_y, twin_prob = read_probs(twin, task, "scratch")
    if not (np.array_equal(ids, twin_ids) and np.array_equal(y, twin_y)):
        sys.exit(
            f"{point} and {twin} scored different test examples for {task}: same --set split_seed needed"
        )
    seed = json.loads((point / "eval_config.json").read_text())["split_seed"]  # eval bootstraps with it too
    return paired_difference(y, prob, twin_prob, seed=seed)


def curve(run: Path, out: Path, tasks: str, overrides: list[str], only: set[int] | None) -> list[dict]:
    name = run.name
    recipe = json.loads((run / "config.json").read_text()).get("recipe", "?")
    label = f"{recipe} ({name})"  # the rows' run: what the figure's legend says
    tokens, minutes = logged(run)
    have = checkpoint_steps(run)
    steps = [s for s in have if only is None or s in only]
    if not steps:
        sys.exit(f"{run}: none of --steps {sorted(only or [])} is a checkpoint (have {have})")
    missing = [s for s in steps if s not in tokens]
    if missing:
        sys.exit(
            f"{run}/metrics.jsonl has no tokens_seen at steps {missing}: log_every must divide ckpt_every"
        )
    rows = []
    twin_dir = out / "evals" / f"{name}-step{steps[0]}"  # the first point's eval also fine-tuned the twin
    for i, step in enumerate(steps):
        t0 = time.perf_counter()
        export = out / "exports" / f"{name}-step{step}"
        if not (export / "config.json").exists():
            dnafm("export", "--checkpoint", str(run), "--tag", f"step{step:07d}", "--out", str(export))
        first = i == 0  # the random twin and the k-mer baseline do not depend on the checkpoint: once per run
        result = evaluate(export, out / "evals" / f"{name}-step{step}", tasks, "kmer,scratch" if first else "kmer",
                          overrides)  # fmt: skip
        for task, r in result.items():
            if first:
                rows.append(dict(run=label, task=task, step=0, tokens=0, minutes=0.0, mcc=r["scratch_mcc"],
                                 lo=r["scratch_mcc_ci"][0], hi=r["scratch_mcc_ci"][1], kmer_mcc=r["baseline_mcc"],
                                 gain_vs_scratch="", gain_lo="", gain_hi=""))  # fmt: skip
            gain = paired_gain(out / "evals" / f"{name}-step{step}", twin_dir, task)
            rows.append(dict(run=label, task=task, step=step, tokens=int(tokens[step]),
                             minutes=round(minutes[step], 2), mcc=r["mcc"],
                             lo=r["mcc_ci"][0], hi=r["mcc_ci"][1], kmer_mcc=r["baseline_mcc"],
                             gain_vs_scratch=gain["value"], gain_lo=gain["lo"], gain_hi=gain["hi"]))  # fmt: skip
        print(f"{name} step {step} ({tokens[step] / 1e6:.2f}M tokens): "
              + ", ".join(f"{t} MCC {r['mcc']:.3f}" for t, r in result.items())
              + f"  [{time.perf_counter() - t0:.0f} s]", flush=True)  # fmt: skip
    return rows


def read_rows(path: Path) -> list[dict]:
    """The rows of an earlier transfer.csv, numbers back to numbers."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for key in ("step", "tokens"):
            r[key] = int(r[key])
        for key in ("minutes", "mcc", "lo", "hi", "kmer_mcc", "gain_vs_scratch", "gain_lo", "gain_hi"):
            r[key] = float(r[key]) if r[key] != "" else ""
    return rows


def write_table(rows: list[dict], out: Path) -> None:
    with open(out / "transfer.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    # one row per (run, step), one column per task
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    cells = {(r["run"], r["step"], r["task"]): r for r in rows}
    runs = list(dict.fromkeys(r["run"] for r in rows))
    points = sorted({(r["run"], r["step"]) for r in rows}, key=lambda p: (runs.index(p[0]), p[1]))
    lines = [
        "| run | step | tokens (M) | minutes | " + " | ".join(f"{t} MCC [95% CI]" for t in tasks) + " |",
        "|---|---:|---:|---:|" + "---|" * len(tasks),
    ]
    for run, step in points:
        first = next(cells[(run, step, t)] for t in tasks if (run, step, t) in cells)
        mccs = []
        for t in tasks:
            c = cells.get((run, step, t))
            mccs.append("-" if c is None else f"{c['mcc']:.3f} [{c['lo']:.3f}, {c['hi']:.3f}]")
        lines.append(
            f"| {run} | {step} | {first['tokens'] / 1e6:.2f} | {first['minutes']:.1f} | "
            + " | ".join(mccs)
            + " |"
        )
    kmer = {t: next(r["kmer_mcc"] for r in rows if r["task"] == t) for t in tasks}
    lines.append("| 4-mer LR | | | | " + " | ".join(f"{kmer[t]:.3f}" for t in tasks) + " |")
    # the same points as gains over the run's random twin (paired: the same test examples resampled together)
    lines += [
        "",
        "| run | step | tokens (M) | minutes | "
        + " | ".join(f"{t} MCC gain vs twin [95% CI]" for t in tasks)
        + " |",
        "|---|---:|---:|---:|" + "---|" * len(tasks),
    ]
    for run, step in points:
        if step == 0:
            continue
        first = next(cells[(run, step, t)] for t in tasks if (run, step, t) in cells)
        gains = []
        for t in tasks:
            c = cells.get((run, step, t))
            ok = c is not None and c["gain_vs_scratch"] != ""
            gains.append(
                f"{c['gain_vs_scratch']:+.3f} [{c['gain_lo']:+.3f}, {c['gain_hi']:+.3f}]" if ok else "-"
            )
        lines.append(
            f"| {run} | {step} | {first['tokens'] / 1e6:.2f} | {first['minutes']:.1f} | "
            + " | ".join(gains)
            + " |"
        )
    (out / "transfer.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))  # the tables' order
    runs = list(dict.fromkeys(r["run"] for r in rows))
    colour = {run: f"C{i}" for i, run in enumerate(runs)}  # one colour per run in both rows
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.2 * len(tasks), 6.6), squeeze=False, sharex="col")
    for ax, task in zip(axes[1], tasks, strict=True):  # bottom row: paired gain over the twin
        for run in runs:
            pts = [r for r in rows if r["run"] == run and r["task"] == task and r["gain_vs_scratch"] != ""]
            if pts:
                g = [r["gain_vs_scratch"] for r in pts]
                err = [
                    [r["gain_vs_scratch"] - r["gain_lo"] for r in pts],
                    [r["gain_hi"] - r["gain_vs_scratch"] for r in pts],
                ]
                x = [r["tokens"] / 1e6 for r in pts]
                ax.errorbar(x, g, yerr=err, marker="o", ms=4, capsize=2, label=run, color=colour[run])
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xlabel("pretraining tokens, millions (log above 1)")
        # symlog: the 0-token twin stays on the axis while budgets spanning 0.4M-50M tokens spread out
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_ylabel("MCC gain vs random twin (paired 95% CI)")
        ax.grid(alpha=0.3)
    for ax, task in zip(axes[0], tasks, strict=True):
        for run in runs:
            pts = [r for r in rows if r["run"] == run and r["task"] == task]
            x = [r["tokens"] / 1e6 for r in pts]
            y = [r["mcc"] for r in pts]
            err = [[r["mcc"] - r["lo"] for r in pts], [r["hi"] - r["mcc"] for r in pts]]
            ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=2, label=run, color=colour[run])
            ax.axhline(pts[0]["mcc"], color=colour[run], ls=":", lw=1)  # its random twin
        ax.axhline(pts[0]["kmer_mcc"], color="grey", ls="--", lw=1, label="4-mer LR")
        ax.set_ylabel("test MCC (95% CI)")
        ax.set_title(task)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle(
        "Downstream MCC against pretraining tokens (top; dotted: random-init twin) and the paired gain over "
        "that twin (bottom)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out / "transfer.png", dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "runs", nargs="*", type=Path, help="`dnafm pretrain --out` folders with stepNNNNNNN checkpoints"
    )
    ap.add_argument(
        "--merge", nargs="+", type=Path, default=[], help="earlier OUT folders: redraw their points"
    )
    ap.add_argument("--tasks", default="pas-human")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", default="", help="comma-separated checkpoint steps to use (default: all)")
    ap.add_argument(
        "--set", dest="overrides", action="append", default=[], help="eval override, e.g. finetune.epochs=5"
    )
    args = ap.parse_args()
    os.environ.setdefault("DNAFM_DATA_ROOT", str(ROOT.parent / "shared" / "data"))
    only = {int(s) for s in args.steps.split(",")} if args.steps else None
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [row for d in args.merge for row in read_rows(d / "transfer.csv")]
    rows += [
        row for run in args.runs for row in curve(run.resolve(), args.out, args.tasks, args.overrides, only)
    ]
    if not rows:
        sys.exit("nothing to draw: give RUN folders and/or --merge OUT folders")
    write_table(rows, args.out)
    plot(rows, args.out)
    print(f"\nwrote {args.out}/transfer.csv, transfer.md, transfer.png")


if __name__ == "__main__":
    main()
