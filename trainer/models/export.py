"""Exported weights: one folder a model can be rebuilt from without the training code.

Layout (``OUT/final`` of a pretraining run, or ``dnafm export --out``)::

    model.safetensors   the bare model's state dict (DNAGPT or DNABERT; fp32 unless asked otherwise)
    config.json         the resolved PretrainConfig of the run
    tokenizer/          the tokenizer, as datapipe.tokenizers.load_tokenizer reads it
    provenance.json     the pretraining run (MLflow run id, store, experiment), recipe, step, tokens seen
    source.json         (imported weights only) where they came from

Nothing here reads pickle or imports DeepSpeed (consolidating a ZeRO checkpoint into this layout is
``trainer.checkpoint.export_checkpoint``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from datapipe.common.errors import MissingError, UsageError
from datapipe.common.files import atomic_dir
from trainer.models import build_model

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
PROVENANCE = "provenance.json"


def export_model(
    state_dict: dict[str, torch.Tensor],
    out_dir: Path,
    *,
    config: dict[str, Any],
    tokenizer: Any,
    dtype: torch.dtype = torch.float32,
    provenance: dict[str, Any] | None = None,
    extra_json: dict[str, Any] | None = None,
) -> Path:
    """Write model.safetensors + config.json + tokenizer/ (+ provenance.json, + ``extra_json``: file name ->
    JSON-able object) into out_dir atomically (temp dir, then rename)."""
    from safetensors.torch import save_file

    with atomic_dir(out_dir) as tmp:
        tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in state_dict.items()}
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt", "producer": "dnafm"})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        tokenizer.save(tmp / "tokenizer")
        if provenance:
            (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
        for name, obj in (extra_json or {}).items():
            (tmp / name).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    return out_dir


def read_provenance(path: str | Path) -> dict[str, Any]:
    """The export's ``provenance.json`` (the pretraining run it came from: id, store, experiment, recipe,
    step, tokens seen); {} for exports without one (made by hand, or by an older dnafm)."""
    try:
        data = json.loads((find_export(path) / PROVENANCE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def find_export(path: str | Path) -> Path:
    """Accept an export folder or a pretraining run folder (uses its ``final/``)."""
    path = Path(path)
    for cand in (path, path / "final"):
        if (cand / WEIGHTS).exists() and (cand / CONFIG).exists():
            return cand
    raise MissingError(
        f"{path}: no {WEIGHTS} + {CONFIG} here or in {path / 'final'}; "
        "pass the --out folder of `dnafm pretrain` or an export folder"
    )


def load_export(path: str | Path):
    """-> (bare model in eval mode on CPU, PretrainConfig, tokenizer). Reads no pickle."""
    from safetensors.torch import load_file

    from datapipe.tokenizers import load_tokenizer
    from trainer.config import PretrainConfig

    folder = find_export(path)
    cfg = PretrainConfig.from_dict(json.loads((folder / CONFIG).read_text()))
    model = build_model(cfg.family, cfg.model)
    state = {k: v.float() for k, v in load_file(str(folder / WEIGHTS)).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UsageError(
            f"{folder / WEIGHTS} does not fit the model in {CONFIG}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.eval(), cfg, load_tokenizer(folder / "tokenizer")
