"""Resume drill: kill `dnafm prepare` of a ~1 Gbp corpus at random points, re-run it, compare with an uninterrupted run.

    .venv/bin/python bench/drill_resume.py [--gbp 1] [--kills 3] [--seed 0] [--workers 2]

1. A synthetic corpus (``scale_corpus``: copies of public genomes, for cost not biology) is prepared
   once without interruption (the reference).
2. The same command into a new folder is killed ``--kills`` times (SIGKILL to the driver, its local Ray
   instance and every Ray worker: as a lost node would), each time after a random number of further
   work units has been marked done plus a random delay of up to 0.3 s, then re-run to the end.
3. Each run must leave every unit that was done before it untouched (same inode and mtime of its
   marker and its shards: only what was missing is written), no manifest before every unit is done, and the
   final manifest must equal the reference's byte for byte (it lists every shard's sha256); then
   ``prepare --verify`` re-reads every shard against it.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_corpus import NOTE, Corpus, build_corpus  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def command(corpus: Corpus, out: Path, workers: int) -> list[str]:
    args = [sys.executable, "-m", "cluster.cli", "prepare", *map(str, corpus.files)]
    for species in corpus.species:
        args += ["--species", species]
    return [*args, "--window-tokens", "508", "--num-workers", str(workers), "--no-mlflow", "--out", str(out)]


def files_state(out: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) of every done unit's marker and shards (a killed unit's shards may be rewritten)."""
    done = {p.stem for p in (out / "units").glob("f*-u*.json")} if (out / "units").exists() else set()
    state = {}
    for folder in ("units", "shards"):
        for p in (out / folder).glob("*") if (out / folder).exists() else []:
            if ".tmp-" not in p.name and p.name[:13] in done:  # f0000-u000012[-001.tar]
                st = p.stat()
                state[f"{folder}/{p.name}"] = (st.st_ino, st.st_mtime_ns)
    return state


def markers(out: Path) -> int:
    return (
        len([p for p in (out / "units").glob("*.json") if ".tmp-" not in p.name])
        if (out / "units").exists()
        else 0
    )


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the CLI and every process under it (driver, raylet, GCS, workers), then wait for them."""
    import psutil

    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    os.killpg(proc.pid, signal.SIGKILL)
    for p in tree:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()
    psutil.wait_procs(tree, timeout=60)


def run(
    cmd: list[str], env: dict[str, str], *, kill_after: int | None, rng: random.Random, out: Path
) -> dict[str, Any]:
    """One run; with ``kill_after``, killed once that many more units are done (plus a random delay)."""
    before = markers(out)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    if kill_after is None:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"prepare failed:\n{err.decode()[-3000:]}")
        return {"wall": time.perf_counter() - t0, "killed": False, "new_units": markers(out) - before}
    while markers(out) < before + kill_after and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(rng.uniform(0, 0.3))
    if proc.poll() is not None:
        raise RuntimeError(f"the run ended before it could be killed ({proc.returncode})")
    kill_tree(proc)
    return {"wall": time.perf_counter() - t0, "killed": True, "new_units": markers(out) - before}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gbp", type=float, default=1.0)
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--scratch", help="folder for the corpus and outputs (default: a new temporary folder)")
    args = p.parse_args()
    from eval.tasks import default_data_root

    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    rng = random.Random(args.seed)
    scratch = Path(tempfile.mkdtemp(prefix="drill-resume-", dir=args.scratch))
    try:
        corpus = build_corpus(int(args.gbp * 1e9), scratch / "corpus", default_data_root())
        print(f"{NOTE}.\ncorpus: {len(corpus.files)} files, {corpus.bases / 1e9:.3f} Gbp", flush=True)
        ref, out = scratch / "reference", scratch / "resumed"
        reference = run(command(corpus, ref, args.workers), env, kill_after=None, rng=rng, out=ref)
        total = markers(ref)
        manifest = (ref / "manifest.json").read_bytes()
        shutil.rmtree(ref)
        print(f"uninterrupted: {total} units in {reference['wall']:.1f} s", flush=True)
        rows, ok = [], True
        for attempt in range(args.kills + 1):
            before = files_state(out)
            done = markers(out)
            last = attempt == args.kills
            kill_after = None if last else rng.randint(1, max(1, (total - done) // 2))  # mid-run
            r = run(command(corpus, out, args.workers), env, kill_after=kill_after, rng=rng, out=out)
            after = files_state(out)
            untouched = all(after.get(k) == v for k, v in before.items())
            # A manifest only once every unit is done (a kill may land after it was written).
            consistent = not (out / "manifest.json").exists() or markers(out) == total
            ok &= untouched and consistent
            rows.append((attempt + 1, done, r, untouched, consistent))
            print(
                f"run {attempt + 1}: {done}/{total} units done before; {'killed' if r['killed'] else 'finished'} "
                f"after {r['wall']:.1f} s with {r['new_units']} more; earlier units untouched: {untouched}",
                flush=True,
            )
        same = (out / "manifest.json").read_bytes() == manifest
        verify = subprocess.run(
            [sys.executable, "-m", "cluster.cli", "prepare", "--verify", str(out)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )
        leftovers = [str(p) for p in out.rglob("*.tmp-*")]
        print(
            "\n| run | units done before | ended | wall s | units written | earlier units untouched | "
            "manifest only when all done |"
        )
        print("|---:|---:|---|---:|---:|---|---|")
        for n, done, r, untouched, consistent in rows:
            ended = "killed (SIGKILL, whole tree)" if r["killed"] else "finished"
            print(
                f"| {n} | {done} / {total} | {ended} | {r['wall']:.1f} | {r['new_units']} | {untouched} | "
                f"{consistent} |"
            )
        print(
            f"\nuninterrupted run {reference['wall']:.1f} s; final manifest equals the uninterrupted run's: {same}; "
            f"`prepare --verify`: {verify.stdout.strip()}; temporary files left: {len(leftovers)}"
        )
        return 0 if ok and same and verify.returncode == 0 and not leftovers else 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
