"""Small builders shared by test modules (not fixtures: each module decides its own scope)."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from datapipe.fasta import read_fasta
from eval.tasks import default_data_root

REPO = Path(__file__).resolve().parents[1]
# The public data collection ($DNAFM_DATA_ROOT, else ../shared/data beside the repository): real genomes,
# annotations and benchmark sets too large to ship in data/. Tests that read it skip where it is absent.
DATA_ROOT = default_data_root()


def needs_data(*parts: str) -> pytest.MarkDecorator:
    """Skip the test unless these paths exist in the public data collection, saying which are missing."""
    missing = [p for p in parts if not (DATA_ROOT / p).exists()]
    return pytest.mark.skipif(
        bool(missing), reason=f"public data collection at {DATA_ROOT} lacks {missing} (set DNAFM_DATA_ROOT)"
    )


def torchrun(nproc: int, *args: str, wait: bool = True):
    """`torchrun --standalone --nproc_per_node N -m cluster.cli pretrain ARGS` as a user runs it (one
    thread per rank: 2 ranks share the 2 cores). ``wait=False`` returns the running launcher."""
    from tests.conftest import user_env

    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "cluster.cli",
        "pretrain",
        *args,
    ]
    env = user_env(OMP_NUM_THREADS="1")
    if not wait:
        return subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def run_eval_cli(checkpoint: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    """`dnafm eval --checkpoint CK --out OUT ARGS` in a fresh process; fails the test with its stderr."""
    from tests.conftest import run_cli

    proc = run_cli("eval", "--checkpoint", str(checkpoint), "--out", str(out), *args)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def chr20_shards(
    out: Path,
    *,
    bases: int = 400_000,
    window_tokens: int = 60,
    shard_max_samples: int = 32,
    tokenizer: str = "dnagpt-6mer",
) -> Path:
    """Shards of the first ``bases`` of the shipped human chr20 slice, made by the real `prepare` (the Ray
    instance it starts in this process is reused by the rest of the test session)."""
    from cluster.ray_connect import connect
    from datapipe.prepare import InputSpec, PrepareConfig, run_prepare

    out.mkdir(parents=True, exist_ok=True)
    seq = next(read_fasta(REPO / "data/genomes/grch37_chr20_44-46Mb.fa.gz")).seq[:bases].tobytes()
    fasta = out / "chr20_slice.fa.gz"
    with gzip.open(fasta, "wb") as f:
        f.write(b">20 slice\n" + b"\n".join(seq[i : i + 80] for i in range(0, len(seq), 80)) + b"\n")
    cfg = PrepareConfig(
        window_tokens=window_tokens, shard_max_samples=shard_max_samples, tokenizer=tokenizer, num_workers=2
    )
    run_prepare(
        [InputSpec(path=str(fasta), species="human")], out / "data", cfg, connect=lambda: connect(num_cpus=2)
    )
    return out / "data"


def tiny_gpt_args(*, num_workers: int) -> list[str]:
    """`dnafm pretrain` flags of the short tiny-dnagpt runs the trainer tests compare step by step."""
    sets = [
        "train.log_every=1",
        "optim.warmup_steps=2",
        "loader.micro_batch_size=4",
        f"loader.num_workers={num_workers}",
    ]
    return ["--recipe", "tiny-dnagpt", "--no-mlflow", *[a for s in sets for a in ("--set", s)]]


def curve(run: Path) -> list[float]:
    """The loss curve a run wrote to metrics.jsonl."""
    return [json.loads(line)["train/loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def run_cut_at(src: Path, out: Path, step: int) -> Path:
    """``out`` as if run ``src`` had stopped after checkpoint ``step``: that checkpoint as the latest, and the
    first ``step`` lines of its loss curve (what a resumed run appends to)."""
    tag = f"step{step:07d}"
    shutil.copytree(src / "checkpoints" / tag, out / "checkpoints" / tag)
    (out / "checkpoints" / "latest").write_text(tag)
    lines = (src / "metrics.jsonl").read_text().splitlines()[:step]
    (out / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    return out


def kernel_log(caplog, fn) -> str:
    """What the kernels logger says while ``fn()`` runs: which path each op took. Every choice is logged
    once per process, so the remembered choices are forgotten first, to make this call's show."""
    import logging

    from kernels.dispatch import forget_choices

    forget_choices()
    with caplog.at_level(logging.INFO, logger="kernels"):
        fn()
    return "\n".join(r.getMessage() for r in caplog.records if r.name == "kernels")


def untrained_export(recipe: str, out: Path) -> Path:
    """A freshly initialised model of ``recipe`` in the export layout: for tests of the eval plumbing, where
    the score is not under test."""
    from datapipe.tokenizers import get_tokenizer
    from trainer.families import bare_model
    from trainer.models.export import export_model
    from trainer.recipes import get_recipe

    cfg = get_recipe(recipe)
    export_model(
        bare_model(cfg).state_dict(), out, config=cfg.to_dict(), tokenizer=get_tokenizer(cfg.tokenizer)
    )
    return out


# `dnafm eval` flags of a quick run: a linear probe, one epoch
PROBE_ONE_EPOCH = ["--set", "finetune.mode=probe", "--set", "finetune.epochs=1"]
