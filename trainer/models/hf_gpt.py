"""Our DNAGPT <-> a Hugging Face folder that ``transformers`` loads with ``trust_remote_code=True``.

``save_hf_gpt`` writes::

    config.json               DnaGptConfig fields + auto_map (AutoConfig, AutoModel, AutoModelForCausalLM)
    configuration_dnagpt.py   the config class      } from trainer/models/hf_remote/: torch + transformers
    modeling_dnagpt.py        the model classes     } only, so the folder works without dnafm
    model.safetensors         our weights under the names of DnaGptForCausalLM ("model." + ours, heads as ours)
    generation_config.json    stops at <0> (unknown) or <P> (padding), as the released DNAGPT generate does
    tokenizer.json            a ``tokenizers`` pipeline giving the ids of datapipe.tokenizers.DnaGptTokenizer
    tokenizer_config.json, special_tokens_map.json

The tokenizer: the 34 reserved tokens (``<R>``, ``<=>``, ...) are added tokens, matched in the raw text first;
each stretch between them is upper-cased and cut into non-overlapping 6-mers from its own left end, as
``DnaGptTokenizer.encode`` cuts it; a piece outside the vocabulary (a byte outside NAGCT, or a 1-5 base tail
with the 6-mer-only vocabulary) is ``<0>``, id 0. Decoding concatenates the tokens. Unlike ours, it does not
raise on unknown markup such as ``<r>``. Writing ``tokenizer.json`` needs the ``tokenizers`` package
(installed with transformers); reading the weights back (``load_hf_gpt``) needs neither.

The shipped code is written for transformers 4 and 5 alike (the cache is named ``past_key_values`` in 4 and
``cache`` in 5; it takes either). The tests run the installed transformers; logits, generate() with and
without the cache, left padding and the tokenizer ids were also checked by hand with 4.46.3 and 4.57.1.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from datapipe.common.errors import MissingError, UsageError
from datapipe.common.files import atomic_dir
from trainer.models.gpt import DNAGPT, GPTConfig

REMOTE_CODE = Path(__file__).parent / "hf_remote"
REMOTE_FILES = ("configuration_dnagpt.py", "modeling_dnagpt.py")
_HEADS = ("num_head.", "lm_head.")  # top-level modules of DnaGptForCausalLM; the rest lives under "model."
# The released DNAGPT generate stops at the unknown id or the padding id (its test.py: stop_ids=(unk, pad)).
STOP_IDS = (0, 20)


def hf_name(ours: str) -> str:
    return ours if ours.startswith(_HEADS) else f"model.{ours}"


def our_name(hf: str) -> str:
    return hf.removeprefix("model.")


def hf_config(cfg: GPTConfig, dtype: torch.dtype = torch.float32) -> dict:
    return {
        "architectures": ["DnaGptForCausalLM"],
        "model_type": "dnagpt",
        "auto_map": {
            "AutoConfig": "configuration_dnagpt.DnaGptConfig",
            "AutoModel": "modeling_dnagpt.DnaGptModel",
            "AutoModelForCausalLM": "modeling_dnagpt.DnaGptForCausalLM",
        },
        "vocab_size": cfg.vocab_size,
        "max_seq_len": cfg.max_seq_len,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "d_model": cfg.d_model,
        "lm_head": cfg.lm_head,
        "gelu": cfg.gelu,
        "layer_norm_eps": 1e-5,  # torch's LayerNorm default, as trainer.models.gpt uses
        "number_token_id": 18,
        "pad_token_id": 20,
        "tie_word_embeddings": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def hf_tokenizer_json(tok) -> str:
    """The ``tokenizers`` pipeline equal to ``tok`` (a DnaGptTokenizer), serialised."""
    try:
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    except ImportError:
        raise UsageError(
            "writing a DNAGPT Hugging Face folder needs the 'tokenizers' package: pip install 'dnafm[hf]'"
        ) from None

    vocab = {token: i for i, token in enumerate(tok.vocab)}
    out = Tokenizer(models.WordLevel(vocab=vocab, unk_token=tok.vocab[tok.unk_id]))
    # lower-case bases encode as upper case in ours (its byte table maps both)
    out.normalizer = normalizers.Sequence([normalizers.Replace(c, c.upper()) for c in tok.ALPHABET.lower()])
    # "[\s\S]", not ".": a newline or space is a byte like any other in ours, inside some 6-mer
    out.pre_tokenizer = pre_tokenizers.Split(Regex(rf"[\s\S]{{1,{tok.k}}}"), behavior="isolated")
    out.decoder = decoders.Fuse()
    reserved = [f"<{s}>" for s in tok.RESERVED_SYMBOLS]
    out.add_tokens([AddedToken(t, normalized=False, single_word=False) for t in reserved])
    return out.to_str(pretty=True)


def _tokenizer_files(tok, max_len: int) -> dict[str, str]:
    unk, pad = tok.vocab[tok.unk_id], tok.vocab[tok.pad_id]
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_len,
        "unk_token": unk,
        "pad_token": pad,
        "padding_side": "left",  # generate() wants left padding; the model counts positions of real tokens
        "clean_up_tokenization_spaces": False,
        "dnafm_tokenizer": tok.name,
    }
    return {
        "tokenizer.json": hf_tokenizer_json(tok),
        "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
        "special_tokens_map.json": json.dumps({"unk_token": unk, "pad_token": pad}, indent=2) + "\n",
    }


def save_hf_gpt(model: DNAGPT, folder: str | Path, *, tokenizer) -> Path:
    """Write ``model`` and its ``tokenizer`` (a DnaGptTokenizer) as a Hugging Face folder, atomically."""
    from safetensors.torch import save_file

    if tokenizer.family != "dnagpt" or tokenizer.vocab_size != model.cfg.vocab_size:
        raise UsageError(
            f"tokenizer {tokenizer.name} ({tokenizer.vocab_size} tokens) does not fit a DNAGPT with "
            f"vocab_size {model.cfg.vocab_size}"
        )
    tensors = {hf_name(k): v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    generation = {"pad_token_id": tokenizer.pad_id, "eos_token_id": list(STOP_IDS)}
    files = {
        "config.json": json.dumps(hf_config(model.cfg, model.wte.weight.dtype), indent=2) + "\n",
        "generation_config.json": json.dumps(generation, indent=2) + "\n",
        **_tokenizer_files(tokenizer, model.cfg.max_seq_len),
    }
    with atomic_dir(folder) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt", "producer": "dnafm"})
        for name, text in files.items():
            (tmp / name).write_text(text)
        for name in REMOTE_FILES:
            shutil.copy(REMOTE_CODE / name, tmp / name)
    return Path(folder)


def load_hf_gpt(folder: str | Path) -> tuple[DNAGPT, GPTConfig]:
    """A folder ``save_hf_gpt`` wrote -> (our DNAGPT in eval mode, its config). Needs no transformers."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_path, weights = folder / "config.json", folder / "model.safetensors"
    for path in (cfg_path, weights):
        if not path.exists():
            raise MissingError(
                f"{path} not found: a DNAGPT Hugging Face folder has config.json + model.safetensors"
            )
    hf = json.loads(cfg_path.read_text())
    if hf.get("model_type") != "dnagpt":
        raise UsageError(f"{cfg_path}: model_type is {hf.get('model_type')!r}, not 'dnagpt'")
    cfg = GPTConfig(
        vocab_size=hf["vocab_size"],
        max_seq_len=hf["max_seq_len"],
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        d_model=hf["d_model"],
        lm_head=hf.get("lm_head", "tied"),
        gelu=hf.get("gelu", "exact"),
    )
    model = DNAGPT(cfg)
    state = {our_name(k): v.float() for k, v in load_file(str(weights)).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UsageError(
            f"{weights} does not fit {cfg_path}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.eval(), cfg
