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
        init_std=hf.get("initializer_range", 0.02),
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


HEADS = {"mlm": "BertForMaskedLM", "classifier": "BertForSequenceClassification"}


def save_hf_bert(
    model: DNABERT, folder: str | Path, *, vocab_file: str | Path | None = None, head: str = "mlm"
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (+ the tokenizer files) atomically, in the layout of
    ``BertForMaskedLM`` (``head='mlm'``: encoder + MLM head; our pooler and classifier, untrained by MLM
    pretraining, are left out) or ``BertForSequenceClassification`` (``head='classifier'``: encoder, pooler and
    classifier), so that class loads it with no missing or unexpected weights.

    With ``vocab_file``: ``vocab.txt`` and what the released DNABERT folders carry beside it,
    ``tokenizer_config.json`` (``do_lower_case`` false: without it transformers' BertTokenizer lower-cases and
    every k-mer becomes [UNK]) and ``special_tokens_map.json``; ``AutoTokenizer`` then gives our ids for
    space-separated k-mers (``"ACGTAC CGTACG ..."`` -> [CLS] ids [SEP])."""
    from safetensors.torch import save_file

    if head not in HEADS:
        raise UsageError(f"head {head!r}: must be one of {', '.join(HEADS)}")
    folder = Path(folder)
    skip = ("pooler.", "classifier.") if head == "mlm" else ("mlm_",)
    inverse = {ours: hf_top for hf_top, ours in _TOP.items()}
    out = {}
    for name, tensor in model.state_dict().items():
        module, _, leaf = name.rpartition(".")
        if name.startswith(skip):
            continue
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
        "architectures": [HEADS[head]],
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
        "initializer_range": c.init_std,
        "pad_token_id": 0,
        "tie_word_embeddings": True,
    }
    if head == "classifier":
        labels = model.classifier.out_features
        config["id2label"] = {str(i): f"LABEL_{i}" for i in range(labels)}
        config["label2id"] = {f"LABEL_{i}": i for i in range(labels)}
    with atomic_dir(folder) as tmp:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in out.items()},
            str(tmp / "model.safetensors"),
            metadata={"format": "pt"},
        )
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if vocab_file is not None:
            shutil.copy(vocab_file, tmp / "vocab.txt")
            for name, content in tokenizer_files(c.max_seq_len).items():
                (tmp / name).write_text(json.dumps(content, indent=2) + "\n")
    return folder


SPECIAL_TOKENS = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}


def tokenizer_files(max_len: int) -> dict[str, dict]:
    """``tokenizer_config.json`` and ``special_tokens_map.json`` of a DNABERT folder (k-mers are upper case)."""
    config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": False,
        "strip_accents": False,
        "model_max_length": max_len,
        "clean_up_tokenization_spaces": False,
        **SPECIAL_TOKENS,
    }
    return {"tokenizer_config.json": config, "special_tokens_map.json": dict(SPECIAL_TOKENS)}


def import_hf_bert(folder: str | Path, out_dir: str | Path, *, dtype: torch.dtype = torch.float32) -> Path:
    """A Hugging Face DNABERT folder (e.g. a released DNABERT) -> our export folder, which ``dnafm eval`` and
    ``dnafm export`` read. Its ``vocab.txt``, when present, must be DNABERT's (else its ids are not ours)."""
    from datapipe.tokenizers import DNABERT_SPECIALS, get_tokenizer
    from trainer.config import PretrainConfig
    from trainer.models.export import export_model

    folder = Path(folder)
    model, cfg = load_hf_bert(folder)
    k = next((k for k in (3, 4, 5, 6) if cfg.vocab_size == 4**k + len(DNABERT_SPECIALS)), None)
    if k is None:
        raise UsageError(
            f"{folder}/config.json: vocab_size {cfg.vocab_size} is no DNABERT k-mer vocabulary (4^k + 5)"
        )
    tok = get_tokenizer(f"dnabert-{k}")
    vocab = folder / "vocab.txt"
    if vocab.exists() and vocab.read_text().splitlines() != tok.vocab:
        raise UsageError(
            f"{vocab}: not DNABERT's {k}-mer vocabulary in DNABERT's order; its ids would not be ours"
        )
    config = PretrainConfig(recipe=f"import-dnabert-{k}", family="dnabert", tokenizer=tok.name, model=cfg)
    return export_model(
        model.state_dict(),
        Path(out_dir),
        config=config.to_dict(),
        tokenizer=tok,
        dtype=dtype,
        extra_json={"source.json": {"imported_from": str(folder.resolve()), "format": "hf-bert"}},
    )
