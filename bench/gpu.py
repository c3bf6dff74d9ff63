"""`./dev gpu`: every figure a GPU must show, in one prepared run of at most 8 minutes (issue 20).

On a GPU machine with torch, Triton, numpy and pytest but no deepspeed and no package registry, from a
copy of the repository with .gpu-wheels/ beside it:

    ./dev gpu --out results/gpu       # <= 8 min; the table ends the output and is written to
                                      # results/gpu/gpu-table.md (rows in gpu-results.json, logs in logs/)

`./dev gpu` runs bench/gpu.py with $PYTHON, else .venv/bin/python, else python3 (the machine's own Python
with its CUDA torch; nothing is installed into it).

It runs, each part in its own process with its share of the time budget (a part that runs out of time
reports what it measured and marks the rest skipped; a part that fails reports the error and the run goes on):

1. the bf16 matmul ceiling and the attention benchmark: our Triton kernel against SDPA's flash backend
   (head_dim 64 and 128, seq 512-4096, causal and padded, forward and forward+backward);
2. the k-mer embedding benchmark: forward bandwidth against a same-run copy, forward+backward against the
   faster torch path (dnagpt-6mer and dnabert-6, d_model 768 and 2048);
3. training steps of dnagpt-s-512 and dnabert-6 on synthetic shards: our trainer (DeepSpeed ZeRO-1, bf16,
   fused k-mer embedding, Triton attention) against a plain torch.compile + SDPA loop of the same model
   (and, for dnabert-6, against transformers' BertForMaskedLM with SDPA), tokens/s and MFU;
4. the GPU-marked tests (pytest -m gpu), with the rest of the budget.

Before that, if deepspeed is not importable, the wheels carried in .gpu-wheels/ are installed into a
scratch folder (never touching the machine's torch). Prepare them here, on a machine with a registry:

    ./dev gpu --prepare-wheels        # .gpu-wheels/: deepspeed (pure-Python) + its deps for CPython 3.12
    ./dev gpu --check-wheels          # offline: they resolve for 3.12 and repo + wheels < 64 MiB

.gpu-wheels/ is git-ignored: copy it to the GPU machine with the repository (~6 MiB; with the repository
about 10 MiB in all).

    ./dev gpu --dry-run               # the same script end to end on CPU at tiny sizes (Triton through its
                                      # interpreter); its figures show only that the code runs

Attention blocks are the kernels' defaults (autotuning off) to fit the time; --autotune turns tuning on
(about a minute of compiles per attention variant). No ray, mlflow or webdataset is imported by any part:
each part's process refuses those imports, as the GPU machine would.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO), str(BENCH)]

ABSENT = ("ray", "mlflow", "webdataset")  # not on the GPU machine
RECIPES = ("dnagpt-s-512", "dnabert-6")
PARTS = ("attention", "kmer", "train", "tests")
# (job, seconds of the default 470 s budget; scaled with --budget). The tests take what is left at the end.
SHARES = [
    ("attention", 80),
    ("kmer", 45),
    ("train dnagpt-s-512 ours", 45),
    ("train dnagpt-s-512 plain", 70),
    ("train dnabert-6 ours", 45),
    ("train dnabert-6 plain", 70),
    ("train dnabert-6 hf", 30),
    ("tests", 0),
]
DEFAULT_BUDGET, MIN_JOB_S, MIN_TESTS_S = 470.0, 12.0, 40.0
TRAIN_GOALS = {
    ("dnagpt-s-512", "plain"): "MFU >= 45%, >= 1.0x",
    ("dnabert-6", "plain"): "",
    ("dnabert-6", "hf"): ">= 1.3x",
}
BASELINES = {"plain": "torch.compile + SDPA loop", "hf": "transformers BertForMaskedLM, SDPA, eager"}


def guard_imports() -> None:
    """Make ``import ray`` / ``mlflow`` / ``webdataset`` fail in this process, as on the GPU machine."""
    import importlib.abc

    class _Absent(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ABSENT:
                raise ImportError(f"{name} is not available on the GPU machine (`./dev gpu` keeps it out)")
            return None

    sys.meta_path.insert(0, _Absent())


def unwind_on_sigterm() -> None:
    """SIGTERM (the run's time limit, see ``_stop``) -> SystemExit(143): the part unwinds and its cleanups
    run (e.g. torch's extension build releases its lock file) instead of dying mid-way."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


# --------------------------------------------------------------------------------- one part's process


def run_section(args: argparse.Namespace) -> int:
    """One part, in this (child) process: its rows go to --result, one JSON line each, as they come."""
    unwind_on_sigterm()
    guard_imports()
    from datapipe.common.logs import setup_logging

    setup_logging()
    result = Path(args.result)

    def emit(row: dict) -> None:
        with open(result, "a") as f:
            f.write(json.dumps(row) + "\n")

    if args.section == "train":
        from gpu_train import run_path

        emit(run_path(args))
        return 0
    import gpu_parts

    if args.section == "attention":
        rows = itertools.chain(gpu_parts.ceiling_rows(args.deadline), gpu_parts.attention_rows(args.deadline))
    elif args.section == "kmer":
        rows = gpu_parts.kmer_rows(args.deadline)
    else:
        partial = result.with_suffix(".partial")
        rows = gpu_parts.test_rows(args.deadline, lambda r: partial.write_text(json.dumps(r)))
    for r in rows:
        emit(r)
    return 0


# ------------------------------------------------------------------------------------------ the run


class Run:
    """Starts each part's process with its time, collects rows, and renders the table."""

    def __init__(self, args: argparse.Namespace, out: Path) -> None:
        self.args, self.out = args, out
        self.t0 = time.time()
        self.end = self.t0 + args.budget
        self.scale = args.budget / DEFAULT_BUDGET
        self.grace = 60.0 if args.dry_run else 20.0
        self.rows: list[dict] = []
        self.env = self._env()
        (out / "logs").mkdir(parents=True, exist_ok=True)

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        paths = [str(REPO), str(BENCH)] + ([self.args.site] if self.args.site else [])
        env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [env.get("PYTHONPATH")] if p])
        env["DNAFM_ATTENTION_AUTOTUNE"] = "1" if self.args.autotune else "0"
        env["PYTHONUNBUFFERED"] = "1"  # a part ended at its time limit still leaves its whole log
        env.pop("TRITON_INTERPRET", None)
        if self.args.dry_run:  # CPU even on a GPU machine; Triton through its interpreter
            env |= {"TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": "", "DS_ACCELERATOR": "cpu"}
        return env

    def deadlines(self, job_index: int) -> tuple[float, float]:
        """(soft, hard): the part stops starting new cases at soft; its process is ended at hard."""
        now = time.time()
        later = SHARES[job_index + 1 :]
        reserve = sum(MIN_TESTS_S if n == "tests" else MIN_JOB_S for n, _ in later) * self.scale
        share = SHARES[job_index][1]
        soft = self.end - reserve - self.grace
        if share:
            soft = min(soft, now + share * self.scale)
        hard = min(soft + self.grace, self.end - reserve)
        return soft, max(hard, soft)

    def job(self, index: int, section: str, log_name: str, extra: list[str]) -> tuple[list[dict], str]:
        """Run one part's process -> (its rows, why it ended early or '')."""
        soft, hard = self.deadlines(index)
        if soft - time.time() < 5:
            return [], "skipped: out of time"
        result = self.out / "logs" / f"{log_name}.jsonl"
        result.unlink(missing_ok=True)
        cmd = [sys.executable, str(BENCH / "gpu.py"), "--section", section, "--result", str(result)]
        cmd += ["--deadline", str(soft)] + (["--dry-run"] if self.args.dry_run else []) + extra
        log = self.out / "logs" / f"{log_name}.log"
        print(f"gpu: {log_name} (until +{soft - self.t0:.0f} s; log {log})", flush=True)
        started = time.time()
        with open(log, "w") as f:
            proc = subprocess.Popen(
                cmd, stdout=f, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
            why = ""
            try:
                code = proc.wait(timeout=max(hard - time.time(), 1))
                if code:
                    why = f"failed (exit {code}): {_last_error(log)}"
            except subprocess.TimeoutExpired:
                _stop(proc)
                why = "stopped at its time limit"
        rows = [json.loads(line) for line in result.read_text().splitlines()] if result.exists() else []
        partial = result.with_suffix(".partial")
        if why and partial.exists():
            rows.append(json.loads(partial.read_text()))
        print(f"gpu: {log_name}: {len(rows)} row(s) in {time.time() - started:.0f} s {why}", flush=True)
        return rows, why

    def kernels(self, index: int, section: str) -> None:
        rows, why = self.job(index, section, section, [])
        for r in rows:
            if why and r.get("status") == "timeout":
                r["note"] = f"{why}; {r['note']}"
        self.rows += rows
        if why and not (rows and rows[-1].get("status") == "timeout"):
            case = "(the rest of the part)" if rows else "(the part)"
            self.rows.append(_failure_row(section, case, why))

    def train(self, recipe: str, data: Path) -> None:
        from gpu_parts import row

        results = {}
        for path in ("ours", "plain") + (("hf",) if recipe == "dnabert-6" else ()):
            index = [n for n, _ in SHARES].index(f"train {recipe} {path}")
            extra = ["--recipe", recipe, "--path", path, "--work", str(data.parent)]
            rows, why = self.job(index, "train", f"train-{recipe}-{path}", extra)
            results[path] = (rows[0] if rows else None, why)
        ours, why = results.pop("ours")
        case = _train_case(recipe, self.args.dry_run)
        for path, (base, base_why) in results.items():
            kw = dict(baseline_name=BASELINES[path], goal=TRAIN_GOALS[(recipe, path)])
            if ours is None or not ours["tokens_per_s"]:
                status = "failed" if why.startswith("failed") or not why else "skipped"
                note = why or "no step timed"
                self.rows.append(
                    row("training steps", case, None, "tokens/s", note=note, status=status, **kw)
                )
                continue
            note = _train_note(ours, base, base_why)
            r = row("training steps", case, ours["tokens_per_s"], "tokens/s", note=note, **kw,
                    baseline=base["tokens_per_s"] if base else None, ours_extra=_mfu(ours),
                    baseline_extra=_mfu(base))  # fmt: skip
            if base is None and base_why.startswith("failed"):
                r["status"] = "failed"
            if not ours["finite"] or (base and not base["finite"]):
                r["status"] = "mismatch"  # a NaN/inf loss: the figures are not of a working run
            self.rows.append(r)

    def run(self) -> int:
        only = set(self.args.only or PARTS)
        for index, part in enumerate(("attention", "kmer")):
            if part in only:
                self.kernels(index, part)
        for recipe in RECIPES:
            if "train" in only:
                data = self.out / "work" / recipe / "data"
                self._write_shards(recipe, data)
                self.train(recipe, data)
        if "tests" in only:
            self.kernels(len(SHARES) - 1, "tests")
        return self.finish()

    def _write_shards(self, recipe: str, data: Path) -> None:
        from gpu_train import GPU_MICRO_BATCH, recipe_config, write_synthetic_shards

        if not (data / "manifest.json").exists():
            cfg = recipe_config(recipe, path="ours", dry_run=self.args.dry_run)
            samples = 16 if self.args.dry_run else 8 * GPU_MICRO_BATCH * 4
            write_synthetic_shards(cfg, data, samples=samples)

    def finish(self) -> int:
        from gpu_report import header_lines, render

        wall = time.time() - self.t0
        lines = header_lines(self.args, wall)
        table = render(self.rows)
        text = "\n".join(lines) + "\n\n" + table + "\n"
        (self.out / "gpu-table.md").write_text(text)
        (self.out / "gpu-results.json").write_text(json.dumps({"header": lines, "rows": self.rows}, indent=1))
        print("\n" + text)
        print(f"gpu: table written to {self.out / 'gpu-table.md'} (rows in gpu-results.json, logs in logs/)")
        bad = [r for r in self.rows if r.get("status") in ("failed", "mismatch")]
        return 1 if bad else 0


def _stop(proc: subprocess.Popen) -> None:
    """End a part's process group (its loader workers included): SIGTERM first, which the part turns into
    SystemExit so that cleanup runs (a lock file of a compile cache, say), SIGKILL 10 s later."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _train_case(recipe: str, dry_run: bool) -> str:
    from gpu_train import GPU_MICRO_BATCH

    if dry_run:
        return f"{recipe} (dry run: 1 layer x 64, 64 positions, fp32 on CPU), micro-batch 2"
    return f"{recipe}, bf16, micro-batch {GPU_MICRO_BATCH} x 512; ours: ZeRO-1, fused k-mer embedding, Triton attention"


def _mfu(result: dict | None) -> str:
    return f"MFU {result['mfu']:.1%}" if result and result.get("mfu") else ""


def _train_note(ours: dict, base: dict | None, base_why: str) -> str:
    parts = [f"{ours['measured_steps']} steps timed after a warm-up window"]
    parts.append(f"loss ours {ours['first_loss']:.3f} -> {ours['last_loss']:.3f}")
    if base:
        parts.append(f"baseline {base['first_loss']:.3f} -> {base['last_loss']:.3f}")
    elif base_why:
        parts.append(f"baseline {base_why}")
    if ours.get("stopped_early"):
        parts.append("ours stopped early (time)")
    paths = ours.get("kernel_paths") or {}
    if paths:
        parts.append("kernels: " + "; ".join(f"{k} {v}" for k, v in sorted(paths.items())))
    return "; ".join(parts)


def _failure_row(section: str, case: str, why: str) -> dict:
    from gpu_parts import row

    return row(section, case, None, "", note=why, status="failed" if why.startswith("failed") else "skipped")


def _last_error(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors or lines or ["(no output)"])[-1][:300]


# ------------------------------------------------------------------------------------------ set-up


def ensure_deepspeed(args: argparse.Namespace) -> None:
    """deepspeed importable, or installed from the carried wheels into a scratch folder (args.site)."""
    import importlib.util

    if importlib.util.find_spec("deepspeed") is not None:
        print("gpu: deepspeed is importable here; the carried wheels are not needed", flush=True)
        return
    from gpu_wheels import install

    site = Path(args.site or (Path(os.environ.get("TMPDIR", "/tmp")) / "dnafm-gpu-site"))
    if (site / "deepspeed" / "__init__.py").exists():
        print(f"gpu: deepspeed from {site} (installed there by an earlier run)", flush=True)
    else:
        print(f"gpu: {install(Path(args.wheels), site)}", flush=True)
    args.site = str(site)
    sys.path.insert(0, str(site))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="./dev gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, Triton interpreter (a check)")
    p.add_argument(
        "--out", help="folder for gpu-table.md, gpu-results.json and logs/ (default runs/gpu-<time>)"
    )
    p.add_argument(
        "--budget", type=float, help=f"seconds for the whole run (default {DEFAULT_BUDGET:.0f}; dry run 600)"
    )
    p.add_argument("--only", nargs="+", choices=PARTS, help="run these parts only (e.g. to re-run one)")
    p.add_argument("--autotune", action="store_true", help="autotune the attention blocks (minutes more)")
    p.add_argument(
        "--wheels", default=str(REPO / ".gpu-wheels"), help="the carried wheels (default .gpu-wheels)"
    )
    p.add_argument("--site", help="install the wheels here (default $TMPDIR/dnafm-gpu-site)")
    p.add_argument(
        "--prepare-wheels", action="store_true", help="download/build the wheels (needs a registry)"
    )
    p.add_argument("--check-wheels", action="store_true", help="offline: the wheels resolve for Python 3.12")
    for name in ("--section", "--result", "--recipe", "--path", "--work"):
        p.add_argument(name, help=argparse.SUPPRESS)  # one part's process (internal)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    p.add_argument("--micro-batch", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.budget is None:
        args.budget = 600.0 if args.dry_run else DEFAULT_BUDGET
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.section:
        return run_section(args)
    if args.prepare_wheels or args.check_wheels:
        import gpu_wheels

        wheels = Path(args.wheels)
        return gpu_wheels.prepare(wheels) if args.prepare_wheels else gpu_wheels.check(wheels)
    guard_imports()
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu: no CUDA GPU here; `./dev gpu --dry-run` runs the same script on CPU", file=sys.stderr)
        return 2
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or REPO / "runs" / f"gpu-{stamp}")
    print(f"gpu: {'DRY RUN on CPU' if args.dry_run else 'GPU run'}, budget {args.budget:.0f} s, "
          f"python {platform.python_version()}, output {out}", flush=True)  # fmt: skip
    ensure_deepspeed(args)
    return Run(args, out).run()


if __name__ == "__main__":
    sys.exit(main())
