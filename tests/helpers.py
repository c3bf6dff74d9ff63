"""Small builders shared by test modules (not fixtures: each module decides its own scope)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

from datapipe.fasta import read_fasta

REPO = Path(__file__).resolve().parents[1]


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
    from datapipe.prepare import InputSpec, PrepareConfig, run_prepare

    out.mkdir(parents=True, exist_ok=True)
    seq = next(read_fasta(REPO / "data/genomes/grch37_chr20_44-46Mb.fa.gz")).seq[:bases].tobytes()
    fasta = out / "chr20_slice.fa.gz"
    with gzip.open(fasta, "wb") as f:
        f.write(b">20 slice\n" + b"\n".join(seq[i : i + 80] for i in range(0, len(seq), 80)) + b"\n")
    cfg = PrepareConfig(
        window_tokens=window_tokens, shard_max_samples=shard_max_samples, tokenizer=tokenizer, num_workers=2
    )
    run_prepare([InputSpec(path=str(fasta), species="human")], out / "data", cfg)
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
    from trainer.checkpoint import export_model
    from trainer.families import bare_model
    from trainer.recipes import get_recipe

    cfg = get_recipe(recipe)
    export_model(
        bare_model(cfg).state_dict(), out, config=cfg.to_dict(), tokenizer=get_tokenizer(cfg.tokenizer)
    )
    return out


# `dnafm eval` flags of a quick run: a linear probe, one epoch
PROBE_ONE_EPOCH = ["--set", "finetune.mode=probe", "--set", "finetune.epochs=1"]
