"""A fine-tuned classifier on disk, and one loader for every checkpoint the interpretation commands take.

``dnafm eval --set save_model=true`` writes, per task, ``OUT/models/<task>/`` in the export layout
(``trainer/models/export.py``) plus what the head needs::

    model.safetensors   the fine-tuned bare model (DNABERT: with its pooler and C-label classifier)
    config.json         the pretraining config, with model.num_labels = C for DNABERT
    tokenizer/
    classifier.json     family, mode, C, class names, species token, the training sequences' lengths
    head.safetensors    probe only (both families): the ``eval.heads.LinearProbe`` on the frozen encoder,
                        its BatchNorm running statistics included

Any export folder still loads as a pretrained model (``load_export`` ignores the extra files), and
:func:`load_checkpoint` rebuilds the classifier when ``classifier.json`` is there. No pickle is read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datapipe.common.errors import UsageError
from datapipe.common.files import write_atomic

CLASSIFIER = "classifier.json"
HEAD = "head.safetensors"
FORMAT_VERSION = 1


@dataclass(kw_only=True)
class Loaded:
    """A checkpoint ready for interpretation: the bare model, and the classifier when it was fine-tuned."""

    model: torch.nn.Module
    """The bare DNAGPT / DNABERT (eval mode, CPU, fp32)."""
    family: str
    config: Any
    """The run's PretrainConfig."""
    tokenizer: Any
    classifier: torch.nn.Module | None
    """(input_ids (B, T), position (B,)) -> (B, C) logits; None for a pretrained (not fine-tuned) model."""
    info: dict[str, Any]
    """classifier.json ({} when not fine-tuned)."""
    path: Path

    @property
    def species_token(self) -> str:
        return self.info.get("species_token", "R")

    @property
    def sequence_bp(self) -> int | None:
        """Median length of the sequences the classifier was trained on (None: not fine-tuned)."""
        return self.info.get("sequence_bp")


def save_classifier(
    classifier: torch.nn.Module,
    out_dir: Path,
    *,
    family: str,
    pretrain_config: dict[str, Any],
    tokenizer: Any,
    info: dict[str, Any],
) -> Path:
    """Write a fine-tuned classifier (``eval.heads``) as an export folder plus classifier.json, atomically."""
    from safetensors.torch import save_file

    from datapipe.common.files import atomic_dir
    from trainer.models.export import export_model

    bare = classifier.bert if family == "dnabert" else classifier.gpt
    config = json.loads(json.dumps(pretrain_config))  # a deep copy
    if family == "dnabert":
        config["model"]["num_labels"] = int(bare.classifier.out_features)
    with atomic_dir(out_dir) as tmp:
        export_model(bare.state_dict(), tmp / "export", config=config, tokenizer=tokenizer)
        for item in (tmp / "export").iterdir():
            item.rename(tmp / item.name)
        (tmp / "export").rmdir()
        probe = getattr(classifier, "probe", None)
        if probe is not None:  # BatchNorm buffers (running mean/var) travel with the Linear's weights
            state = {k: v.detach().cpu().contiguous() for k, v in probe.state_dict().items()}
            save_file(state, str(tmp / HEAD))
        write_atomic(
            tmp / CLASSIFIER,
            json.dumps({"format_version": FORMAT_VERSION, "family": family, **info}, indent=2) + "\n",
        )
    return out_dir


def classifier_info(
    data: Any, *, mode: str, species_token: str, crop: bool, source: str, best_val_mcc: float
) -> dict[str, Any]:
    """classifier.json's fields for a classifier fine-tuned on ``data`` (a LabelledSet)."""
    lengths = np.fromiter((len(s) for s in data.sequences), dtype=np.int64, count=len(data.sequences))
    return {
        "task": data.name,
        "mode": mode,
        "num_classes": int(data.num_classes),
        "class_names": list(data.class_names),
        "species_token": species_token,
        "crop": crop,
        "sequence_bp": int(np.median(lengths)),
        "source": source,
        "best_val_mcc": float(best_val_mcc),
    }


def load_checkpoint(path: str | Path) -> Loaded:
    """A fine-tuned classifier folder (with classifier.json), an export folder or a pretraining run."""
    from safetensors.torch import load_file

    from eval.heads import build_classifier
    from trainer.models.export import find_export, load_export

    folder = find_export(path)
    model, cfg, tok = load_export(folder)
    info: dict[str, Any] = {}
    classifier = None
    if (folder / CLASSIFIER).exists():
        info = json.loads((folder / CLASSIFIER).read_text())
        if info.get("format_version") != FORMAT_VERSION or info.get("family") != cfg.family:
            raise UsageError(
                f"{folder / CLASSIFIER}: format {info.get('format_version')} / family {info.get('family')} "
                f"does not fit this dnafm (format {FORMAT_VERSION}, config family {cfg.family}); "
                "re-run `dnafm eval --set save_model=true`"
            )
        probe = info["mode"] == "probe"
        classifier = build_classifier(cfg.family, model, tok, num_classes=info["num_classes"], probe=probe)
        if probe:
            classifier.probe.load_state_dict(load_file(str(folder / HEAD)))
        classifier.eval()
    return Loaded(
        model=model,
        family=cfg.family,
        config=cfg,
        tokenizer=tok,
        classifier=classifier,
        info=info,
        path=folder,
    )
