"""Checkpoints (DeepSpeed, resumable, atomic), and their consolidation into an export
(``trainer.models.export`` holds the export layout and its reader).

Checkpoint layout (``OUT/checkpoints``)::

    latest                     tag of the newest COMPLETE checkpoint, replaced atomically
    step0000300/               DeepSpeed's files (model states, every rank's optimizer shard)
        dnafm_state.json       step, world size, ZeRO stage, loader state, resolved config (JSON, no pickle)
        rng_rank<R>.pt         that rank's torch / CUDA RNG states (tensors only, loaded with weights_only)
        COMPLETE               written after every rank finished: a folder without it is ignored
    step0000300_universal/     made on demand when resuming at another world size

A crash during a save therefore leaves ``latest`` on the previous complete checkpoint.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from datapipe.common.errors import MissingError
from datapipe.common.files import atomic_dir, write_atomic

log = logging.getLogger(__name__)
STATE_FILE = "dnafm_state.json"
COMPLETE = "COMPLETE"


def save_checkpoint(engine: Any, ckpt_dir: Path, *, step: int, state: dict[str, Any]) -> str:
    """Collective: every rank calls it. Returns the tag. ``state`` must be JSON-serialisable."""
    tag = f"step{step:07d}"
    rank = dist.get_rank()
    folder = ckpt_dir / tag
    engine.save_checkpoint(str(ckpt_dir), tag=tag, save_latest=False)
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, folder / f"rng_rank{rank}.pt")
    dist.barrier()  # every rank's shard is on disk
    if rank == 0:
        write_atomic(folder / STATE_FILE, json.dumps({**state, "step": step, "tag": tag}, indent=2) + "\n")
        write_atomic(folder / COMPLETE, "")
        write_atomic(ckpt_dir / "latest", tag)
    dist.barrier()
    log.info("checkpoint saved: %s", folder)
    return tag


def latest_tag(ckpt_dir: Path) -> str | None:
    """Tag named by ``latest`` if that checkpoint is complete; None when there is none."""
    path = ckpt_dir / "latest"
    if not path.exists():
        return None
    tag = path.read_text().strip()
    if not (ckpt_dir / tag / COMPLETE).exists():
        raise MissingError(
            f"{path} names {tag}, which is not a complete checkpoint; "
            "delete the folder's 'latest' file or restore the checkpoint"
        )
    return tag


def read_state(ckpt_dir: Path, tag: str) -> dict[str, Any]:
    return json.loads((ckpt_dir / tag / STATE_FILE).read_text())


def universal_tag_for(ckpt_dir: Path, tag: str) -> str:
    """Convert ``tag`` to DeepSpeed's universal format once (rank 0; others wait). Collective."""
    out_tag = f"{tag}_universal"
    out = ckpt_dir / out_tag
    if dist.get_rank() == 0 and not (out / COMPLETE).exists():
        log.info("world size changed: converting %s to a universal checkpoint", ckpt_dir / tag)
        with atomic_dir(out) as tmp:
            # --inject_missing_state: ZeRO-1/2 checkpoints lack fields the converter expects.
            cmd = [
                sys.executable,
                "-m",
                "deepspeed.checkpoint.ds_to_universal",
                "--input_folder",
                str(ckpt_dir / tag),
                "--output_folder",
                str(tmp),
                "--inject_missing_state",
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(
                    f"converting {ckpt_dir / tag} to a universal checkpoint failed:\n{proc.stderr[-3000:]}"
                )
            shutil.copy(ckpt_dir / tag / STATE_FILE, tmp / STATE_FILE)  # our state travels with the weights
            (tmp / COMPLETE).write_text("")
    dist.barrier()
    return out_tag


def restore_rng(ckpt_dir: Path, tag: str, rank: int) -> bool:
    """Restore this rank's RNG states if the checkpoint has a file for this rank."""
    path = ckpt_dir / tag / f"rng_rank{rank}.pt"
    if not path.exists():
        return False
    rng = torch.load(path, weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return True


def export_checkpoint(
    run_dir: Path, out_dir: Path, *, tag: str | None = None, dtype: torch.dtype = torch.float32
) -> Path:
    """Consolidate a (possibly ZeRO-sharded) checkpoint of a run into an export folder, in this process."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from datapipe.tokenizers import get_tokenizer

    ckpt_dir = run_dir / "checkpoints" if (run_dir / "checkpoints").exists() else run_dir
    tag = tag or latest_tag(ckpt_dir)
    if tag is None or not (ckpt_dir / tag).exists():
        raise MissingError(
            f"{ckpt_dir}: no checkpoint{' ' + tag if tag else ''} to export; "
            "pass the --out folder of `dnafm pretrain`"
        )
    state = read_state(ckpt_dir, tag)
    full = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag)
    from trainer.families import FAMILIES
    from trainer.models.export import export_model

    inner = FAMILIES[state["config"].get("family", "dnagpt")].inner
    weights = {k.removeprefix(f"{inner}."): v for k, v in full.items()}
    cfg = state["config"]
    provenance = {
        "run_id": state.get("mlflow_run_id"),
        "tracking_uri": state.get("mlflow_tracking_uri"),
        "experiment": cfg.get("tracking", {}).get("experiment"),
        "recipe": cfg.get("recipe"),
        "step": state["step"],
        "tokens_seen": state.get("tokens_seen"),
    }
    return export_model(
        weights,
        out_dir,
        config=cfg,
        tokenizer=get_tokenizer(cfg["tokenizer"]),
        dtype=dtype,
        provenance={k: v for k, v in provenance.items() if v is not None},
    )
