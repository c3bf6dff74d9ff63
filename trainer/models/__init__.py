"""The model architectures, apart from the training machinery (no DeepSpeed, no loader, no loop).

- ``gpt``      DNAGPT (decoder over non-overlapping k-mers, number embedding, regression head)
- ``bert``     DNABERT (BERT encoder over overlapping k-mers, MLM and [CLS] heads)
- ``hf_bert``  DNABERT <-> Hugging Face ``BertFor*`` folders
- ``hf_gpt``   DNAGPT -> a Hugging Face folder with its own modeling code (``hf_remote/``), and back
- ``dnagpt_release``  the DNAGPT authors' released checkpoint layout -> our DNAGPT
- ``export``   exported weights (``model.safetensors`` + ``config.json`` + ``tokenizer/``): write, find, load

``eval`` and other users load models through this package only; importing it does not import DeepSpeed.
"""

from __future__ import annotations

import torch

from trainer.models.bert import DNABERT, BertConfig
from trainer.models.gpt import DNAGPT, GPTConfig

ARCHITECTURES: dict[str, type[torch.nn.Module]] = {"dnagpt": DNAGPT, "dnabert": DNABERT}


def build_model(family: str, model_cfg: GPTConfig | BertConfig) -> torch.nn.Module:
    """The bare model of ``family`` ('dnagpt' or 'dnabert') for its config section."""
    return ARCHITECTURES[family](model_cfg)


def count_params(family: str, model_cfg: GPTConfig | BertConfig) -> int:
    """Exact parameter count, built on the meta device: no memory, even for 3B."""
    with torch.device("meta"):
        model = build_model(family, model_cfg)
    return sum(p.numel() for p in model.parameters())


__all__ = ["ARCHITECTURES", "BertConfig", "DNABERT", "DNAGPT", "GPTConfig", "build_model", "count_params"]
