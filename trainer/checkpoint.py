"""Checkpoints (DeepSpeed, resumable) and exports (consolidated safetensors, for eval and sharing).

Export layout (``OUT/final`` of a pretraining run)::

    model.safetensors   DNAGPT state dict (fp32 unless asked otherwise)
    config.json         the resolved PretrainConfig of the run
    tokenizer/          the tokenizer, as datapipe.tokenizers.load_tokenizer reads it
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def save_checkpoint(engine: Any, ckpt_dir: Path, *, step: int, client_state: dict[str, Any]) -> str:
    """DeepSpeed checkpoint of every rank's shard under tag ``stepNNNNNNN``; DeepSpeed updates ``latest``."""
    tag = f"step{step:07d}"
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state)
    log.info("checkpoint saved: %s", ckpt_dir / tag)
    return tag


def export_model(
    state_dict: dict[str, torch.Tensor],
    out_dir: Path,
    *,
    config: dict[str, Any],
    tokenizer: Any,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write model.safetensors + config.json + tokenizer/ into out_dir atomically (temp dir, then rename)."""
    from safetensors.torch import save_file

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt", "producer": "dnafm"})
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer.save(tmp / "tokenizer")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def find_export(path: str | Path) -> Path:
    """Accept an export folder or a pretraining run folder (uses its ``final/``)."""
    path = Path(path)
    for cand in (path, path / "final"):
        if (cand / "model.safetensors").exists() and (cand / "config.json").exists():
            return cand
    raise FileNotFoundError(
        f"{path}: no model.safetensors + config.json here or in {path / 'final'}; "
        "pass the --out folder of `dnafm pretrain` or an export folder"
    )


def load_export(path: str | Path):
    """-> (DNAGPT model in eval mode on CPU, PretrainConfig, tokenizer). Reads no pickle."""
    from safetensors.torch import load_file

    from datapipe.tokenizers import load_tokenizer
    from trainer.config import PretrainConfig
    from trainer.gpt import DNAGPT

    folder = find_export(path)
    cfg = PretrainConfig.from_dict(json.loads((folder / "config.json").read_text()))
    model = DNAGPT(cfg.model)
    state = load_file(str(folder / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{folder / 'model.safetensors'} does not fit the model in config.json: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.eval(), cfg, load_tokenizer(folder / "tokenizer")
