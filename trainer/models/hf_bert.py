"""Hugging Face BERT checkpoints <-> our DNABERT, so released DNABERT models load and ours can be shared.

Reads a folder with ``config.json`` and ``model.safetensors`` or ``pytorch_model.bin`` (BertForMaskedLM /
BertForSequenceClassification / BertModel key names, as the released DNABERT checkpoints use). A ``.bin``
file is read with ``torch.load(weights_only=True)``: tensors only, never arbitrary pickled objects.
Does not need ``transformers`` installed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from datapipe.common.errors import MissingError, UnknownNameError, UsageError
from datapipe.common.files import atomic_dir
from trainer.models.bert import DNABERT, BertConfig

_LAYER = {
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attn_out",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "ff_in",
    "output.dense": "ff_out",
    "output.LayerNorm": "ff_norm",
}
_TOP = {
    "bert.embeddings.word_embeddings": "word",
    "bert.embeddings.position_embeddings": "position",
    "bert.embeddings.token_type_embeddings": "token_type",
    "bert.embeddings.LayerNorm": "emb_norm",
    "bert.pooler.dense": "pooler",
    "cls.predictions.transform.dense": "mlm_dense",
    "cls.predictions.transform.LayerNorm": "mlm_norm",
    "classifier": "classifier",
}


def _ours(hf_key: str) -> str | None:
    """HF parameter name -> ours; None for tied or unused tensors."""
    key = hf_key.replace(".gamma", ".weight").replace(".beta", ".bias")  # transformers 2.x LayerNorm names
    if not key.startswith(("bert.", "cls.", "classifier")):
        key = "bert." + key  # a bare BertModel checkpoint
    if key in ("cls.predictions.bias", "cls.predictions.decoder.bias"):
        return "mlm_bias"
    if key.startswith("cls.predictions.decoder.") or key.endswith("position_ids"):
        return None  # decoder weight is tied to the word embeddings; position_ids is a buffer
    module, _, leaf = key.rpartition(".")
    if module in _TOP:
        return f"{_TOP[module]}.{leaf}"
    if module.startswith("bert.encoder.layer."):
        rest = module.removeprefix("bert.encoder.layer.")
        idx, _, sub = rest.partition(".")
        if sub in _LAYER:
            return f"layers.{idx}.{_LAYER[sub]}.{leaf}"
    raise UnknownNameError(f"unrecognised BERT parameter '{hf_key}'")


def config_from_hf(hf: dict) -> BertConfig:
    if hf.get("hidden_act", "gelu") != "gelu":
        raise UsageError(f"hidden_act={hf['hidden_act']!r}: only 'gelu' BERT checkpoints are supported")
    return BertConfig(
        vocab_size=hf["vocab_size"],
        max_seq_len=hf.get("max_position_embeddings", 512),
        n_layer=hf["num_hidden_layers"],
        n_head=hf["num_attention_heads"],
        d_model=hf["hidden_size"],
        d_ff=hf["intermediate_size"],
        dropout=hf.get("hidden_dropout_prob", 0.1),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        type_vocab_size=hf.get("type_vocab_size", 2),
        num_labels=max(int(hf.get("num_labels", len(hf.get("id2label", {})) or 2)), 2),
    )


def load_hf_bert(folder: str | Path) -> tuple[DNABERT, BertConfig]:
    """-> (DNABERT with the checkpoint's weights, in eval mode; its config). Heads absent from the
    checkpoint (pooler/classifier of a BertForMaskedLM, MLM head of a classifier) keep their fresh init."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise MissingError(f"{cfg_path} not found: a Hugging Face BERT folder has config.json and weights")
    cfg = config_from_hf(json.loads(cfg_path.read_text()))
    if (folder / "model.safetensors").exists():
        from safetensors.torch import load_file

        hf_state = load_file(str(folder / "model.safetensors"))
    elif (folder / "pytorch_model.bin").exists():
        hf_state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise MissingError(f"{folder}: neither model.safetensors nor pytorch_model.bin")
    state = {}
    for key, value in hf_state.items():
        ours = _ours(key)
        if ours is not None:
            state[ours] = value.float()
    model = DNABERT(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    heads = ("pooler.", "classifier.", "mlm_")
    if unexpected or [m for m in missing if not m.startswith(heads)]:
        raise UsageError(
            f"{folder}: weights do not fit a BERT of this config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    return model.eval(), cfg


def save_hf_bert(model: DNABERT, folder: str | Path, *, vocab_file: str | Path | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (+ ``vocab.txt``) in BertForMaskedLM layout, atomically."""
    from safetensors.torch import save_file

    folder = Path(folder)
    inverse = {}
    for hf_top, ours in _TOP.items():
        inverse[ours] = hf_top
    out = {}
    for name, tensor in model.state_dict().items():
        module, _, leaf = name.rpartition(".")
        if name == "mlm_bias":
            out["cls.predictions.bias"] = tensor
        elif module in inverse:
            out[f"{inverse[module]}.{leaf}"] = tensor
        elif module.startswith("layers."):
            _, idx, sub = module.split(".", 2)
            hf_sub = next(k for k, v in _LAYER.items() if v == sub)
            out[f"bert.encoder.layer.{idx}.{hf_sub}.{leaf}"] = tensor
    c = model.cfg
    config = {
        "architectures": ["BertForMaskedLM"],
        "model_type": "bert",
        "vocab_size": c.vocab_size,
        "hidden_size": c.d_model,
        "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head,
        "intermediate_size": c.d_ff,
        "hidden_act": "gelu",
        "hidden_dropout_prob": c.dropout,
        "attention_probs_dropout_prob": c.dropout,
        "max_position_embeddings": c.max_seq_len,
        "type_vocab_size": c.type_vocab_size,
        "layer_norm_eps": c.layer_norm_eps,
        "pad_token_id": 0,
        "tie_word_embeddings": True,
    }
    with atomic_dir(folder) as tmp:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in out.items()},
            str(tmp / "model.safetensors"),
            metadata={"format": "pt"},
        )
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if vocab_file is not None:
            shutil.copy(vocab_file, tmp / "vocab.txt")
    return folder
