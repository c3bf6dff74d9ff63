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

from datapipe.common.errors import InputError, MissingError
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


# What DeepSpeed's own checkpoint files pickle besides tensors and containers (ZeRO-1/2 optimizer states).
# DeepSpeed loads its files with torch.load(weights_only=False), i.e. it would run any code a pickle holds:
# check_pickles refuses every other global before DeepSpeed opens a checkpoint.
DEEPSPEED_GLOBALS = frozenset(
    {
        "deepspeed.runtime.fp16.loss_scaler.LossScaler",
        "deepspeed.runtime.zero.config.ZeroStageEnum",
        "deepspeed.utils.tensor_fragment.fragment_address",
    }
)


def check_pickles(folder: Path) -> None:
    """Refuse a checkpoint whose ``.pt`` files pickle anything but tensors, containers and
    :data:`DEEPSPEED_GLOBALS` (e.g. a file from elsewhere that would run code when loaded). Reads only each
    file's pickle stream, not its tensor data: ~ms per file."""
    for path in sorted(folder.rglob("*.pt")):
        try:
            names = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception as err:  # zip, pickle and torch format errors of a damaged file; none are bugs here
            raise InputError(
                path, None, f"not a readable torch checkpoint file ({err}); restore it"
            ) from None
        if names - DEEPSPEED_GLOBALS:
            raise InputError(
                path,
                None,
                f"pickles {', '.join(sorted(names - DEEPSPEED_GLOBALS))}, which a checkpoint written by dnafm "
                "never holds; refused, because loading it would run that code (weights_only)",
            )


def _plain_tag(tag: str, path: Path) -> str:
    if not tag or tag in (".", "..") or len(tag) > 200 or any(c in tag for c in "/\\\0"):
        raise InputError(path, 1, f"{tag[:60]!r} is not a checkpoint tag (a folder name like step0000300)")
    return tag


def latest_tag(ckpt_dir: Path) -> str | None:
    """Tag named by ``latest`` if that checkpoint is complete; None when there is none."""
    path = ckpt_dir / "latest"
    if not path.exists():
        return None
    try:
        tag = _plain_tag(path.read_text(encoding="utf-8").strip(), path)
    except UnicodeDecodeError as err:
        raise InputError(path, 1, f"not a checkpoint tag ({err}); delete the file or restore it") from None
    if not (ckpt_dir / tag / COMPLETE).exists():
        raise MissingError(
            f"{path} names {tag}, which is not a complete checkpoint; "
            "delete the folder's 'latest' file or restore the checkpoint"
        )
    return tag


def read_state(ckpt_dir: Path, tag: str) -> dict[str, Any]:
    """The checkpoint's dnafm_state.json, with the fields resume and export read checked for type."""
    path = ckpt_dir / _plain_tag(tag, ckpt_dir / "latest") / STATE_FILE
    try:
        state = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise MissingError(
            f"{path} is missing: the checkpoint is incomplete; restore it or delete it"
        ) from None
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError, nesting too deep
        raise InputError(
            path, None, f"not valid JSON ({err}); restore the file or delete the checkpoint"
        ) from None
    problem = None
    if not isinstance(state, dict):
        problem = "not a JSON object"
    elif not (isinstance(state.get("step"), int) and state["step"] >= 0):
        problem = "field 'step' must be a count"
    elif not (isinstance(state.get("world_size"), int) and state["world_size"] >= 1):
        problem = "field 'world_size' must be a positive count"
    elif not isinstance(state.get("config"), dict) or not isinstance(state.get("loader"), dict):
        problem = "fields 'config' and 'loader' must be objects"
    if problem:
        raise InputError(
            path, None, f"{problem}; the checkpoint state is damaged, restore it or delete the checkpoint"
        )
    return state


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
    try:
        rng = torch.load(path, weights_only=True)
    except Exception as err:  # pickle.UnpicklingError for a non-tensor payload, zip/format errors
        raise InputError(
            path, None, f"refused: not a tensors-only file ({err}); delete it to resume"
        ) from None
    if not isinstance(rng, dict) or not isinstance(rng.get("torch"), torch.Tensor):
        raise InputError(path, None, "refused: expected {'torch': <RNG state tensor>}; delete it to resume")
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
    check_pickles(ckpt_dir / tag)  # DeepSpeed unpickles with weights_only=False
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
