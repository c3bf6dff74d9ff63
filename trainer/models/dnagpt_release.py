"""The checkpoints the DNAGPT authors released (``dna_gpt0.1b_h.pth``, ``dna_gpt0.1b_m.pth``, ``dna_gpt3b_m.pth``
and their fine-tuned ``regression.pth`` / ``classification.pth``) <-> our DNAGPT.

The layout follows the authors' public model code, github.com/TencentAILabHealthcare/DNAGPT at commit
9b6c0931e3b2011ee5bbb4b988be3e19d62953ae (2023-09-13): ``dna_gpt/model/gpt.py`` (``GPT``: ``transformer.wte``,
``transformer.wpe``, ``transformer.h.<i>`` blocks of ``ln_1``, ``attn.c_attn``, ``attn.c_proj``, ``ln_2``,
``mlp.c_fc``, ``mlp.c_proj``, then ``transformer.ln_f``; GELU with the tanh approximation; built with
``include_head=False``, so no ``lm_head``) and ``dna_gpt/model/dna_gpt.py`` (``DNAGPT``: ``number_embedding``,
``mlm_head`` and ``num_regression``, each Linear, SiLU, LayerNorm, Linear; ``DNAGPT.from_name`` gives the three
released configurations below, all with ``bias=False``). Names and shapes are read from there; the code here is
ours.

That architecture is ours with two options set (``GPTConfig(lm_head='mlp', gelu='tanh')``): the same pre-LN
blocks without biases, learned positions, q/k/v in one projection in that order, LayerNorm eps 1e-5. Our number
MLPs and the MLP head carry biases the release does not have; they are zero after an import, so the function is
the same. One difference in use, not in weights: the released regression code inserts each number embedding as
an extra position with no token embedding, where ours adds it to an ``<M>`` slot's token embedding; to reproduce
theirs, give those positions a zero token embedding (``DNAGPT.forward(..., token_embeds=...)``).

Files are read with ``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary
pickled objects.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from datapipe.common.errors import MissingError, UsageError
from trainer.models.gpt import DNAGPT, GPTConfig

SOURCE = "github.com/TencentAILabHealthcare/DNAGPT@9b6c0931e3b2011ee5bbb4b988be3e19d62953ae"


@dataclass(frozen=True, kw_only=True)
class Variant:
    tokenizer: str
    max_seq_len: int
    n_layer: int
    n_head: int
    d_model: int


# DNAGPT.from_name in dna_gpt/model/dna_gpt.py; the tokenizer follows test.py (6-mers only for 0.1b_h, 1- to
# 6-mers otherwise), which fixes the vocabulary size.
VARIANTS: dict[str, Variant] = {
    "dna_gpt0.1b_h": Variant(tokenizer="dnagpt-6mer", max_seq_len=4096, n_layer=12, n_head=12, d_model=768),
    "dna_gpt0.1b_m": Variant(tokenizer="dnagpt-1to6mer", max_seq_len=512, n_layer=12, n_head=12, d_model=768),
    "dna_gpt3b_m": Variant(tokenizer="dnagpt-1to6mer", max_seq_len=512, n_layer=60, n_head=64, d_model=2048),
}
VOCAB_TOKENIZER = {15659: "dnagpt-6mer", 19564: "dnagpt-1to6mer"}

_BLOCK = {"ln1": "ln_1", "attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj", "ln2": "ln_2"}
_BLOCK.update({"mlp.0": "mlp.c_fc", "mlp.2": "mlp.c_proj"})
_TOP = {"wte": "transformer.wte", "wpe": "transformer.wpe", "ln_f": "transformer.ln_f"}
_TOP.update({"num_embed": "number_embedding", "num_head": "num_regression", "lm_head": "mlm_head"})
_NO_BIAS_IN_RELEASE = ("num_embed.", "num_head.", "lm_head.")  # ours has biases there; theirs bias=False
_WRAPPERS = ("module.", "_orig_mod.")  # DistributedDataParallel / torch.compile prefixes


def release_name(ours: str) -> str | None:
    """Our parameter name -> theirs; None for our biases, which the release does not have."""
    module, _, leaf = ours.rpartition(".")
    if leaf == "bias" and ours.startswith(_NO_BIAS_IN_RELEASE):
        return None
    if module.startswith("blocks."):
        _, idx, sub = module.split(".", 2)
        return f"transformer.h.{idx}.{_BLOCK[sub]}.{leaf}"
    head, _, rest = module.partition(".")
    return ".".join(p for p in (_TOP[head], rest, leaf) if p)


def release_config(variant: str) -> GPTConfig:
    v = VARIANTS[variant]
    return _gpt_config(
        vocab_size=_vocab_size(v.tokenizer),
        max_seq_len=v.max_seq_len,
        n_layer=v.n_layer,
        n_head=v.n_head,
        d_model=v.d_model,
    )


def _gpt_config(**shape: int) -> GPTConfig:
    return GPTConfig(**shape, lm_head="mlp", gelu="tanh")


def _vocab_size(tokenizer: str) -> int:
    from datapipe.tokenizers import get_tokenizer

    return get_tokenizer(tokenizer).vocab_size


def expected_layout(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Their parameter names -> shapes for a model of ``cfg``, built on the meta device (no memory, even 3B)."""
    with torch.device("meta"):
        model = DNAGPT(cfg)
    out = {}
    for name, p in model.state_dict().items():
        theirs = release_name(name)
        if theirs is not None:
            out[theirs] = tuple(p.shape)
    return out


def read_release(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a released ``.pth`` (bare, or under 'model' / 'state_dict'), wrapper prefixes removed."""
    path = Path(path)
    if not path.is_file():
        raise MissingError(f"{path}: no such checkpoint file")
    try:
        obj = _load_tensors(path)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if found is None:  # not a pickle of tensors at all
            raise UsageError(
                f"{path}: not a readable PyTorch checkpoint (torch.load: {_first_line(err)})"
            ) from err
        raise UsageError(
            f"{path}: holds Python objects besides tensors (a {found.group(1)}), which dnafm does not unpickle "
            "(torch.load weights_only=True); if you trust the file, save its state dict alone with "
            "torch.save(torch.load(FILE, weights_only=False)['model'], 'weights.pth') and import that"
        ) from err
    except (RuntimeError, EOFError, ValueError) as err:
        raise UsageError(
            f"{path}: not a readable PyTorch checkpoint (torch.load: {_first_line(err)})"
        ) from err
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UsageError(
            f"{path}: expected a state dict of tensors (or one under 'model'), got {type(obj).__name__}"
        )
    state = {}
    for name, tensor in obj.items():
        for prefix in _WRAPPERS:
            name = name.removeprefix(prefix)
        state[name] = tensor
    return state


def _first_line(err: Exception) -> str:
    """The informative line of a torch.load error (after 'WeightsUnpickler error:' when there is one)."""
    text = str(err).split("WeightsUnpickler error:", 1)[-1]
    return next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)


def _load_tensors(path: Path):
    """torch.load, tensors only; memory-mapped (a 3B file is not read into memory twice) when the file has the
    zip format of torch >= 1.6, else read whole."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def infer_config(
    state: dict[str, torch.Tensor], *, variant: str = "auto", n_head: int | None = None, path=""
) -> tuple[str, GPTConfig]:
    """-> (variant name or 'custom', our config) for a release-layout state dict.

    ``variant='auto'``: the released variant whose shapes these are; other shapes need ``n_head`` (the only
    size a state dict does not show). A named variant is taken as given (``check_layout`` then lists what
    differs)."""
    if variant != "auto":
        if variant not in VARIANTS:
            raise UsageError(f"unknown variant {variant!r}; valid: auto, {', '.join(VARIANTS)}")
        return variant, release_config(variant)
    need = ("transformer.wte.weight", "transformer.wpe.weight")
    absent = [k for k in need if k not in state]
    if absent:
        raise UsageError(
            f"{path}: not a DNAGPT release checkpoint: no {', '.join(absent)} ({_sample(state)})"
        )
    vocab, d_model = state["transformer.wte.weight"].shape
    max_len = state["transformer.wpe.weight"].shape[0]
    layers = {int(m.group(1)) for k in state if (m := re.match(r"transformer\.h\.(\d+)\.", k))}
    n_layer = max(layers) + 1 if layers else 0
    if vocab not in VOCAB_TOKENIZER:
        raise UsageError(
            f"{path}: vocabulary of {vocab} tokens; the DNAGPT tokenizers have "
            f"{' or '.join(map(str, VOCAB_TOKENIZER))}"
        )
    shape = dict(vocab_size=vocab, max_seq_len=max_len, n_layer=n_layer, d_model=d_model)
    for name, v in VARIANTS.items():
        if (v.max_seq_len, v.n_layer, v.d_model, VOCAB_TOKENIZER[vocab]) == (
            max_len,
            n_layer,
            d_model,
            v.tokenizer,
        ):
            return name, _gpt_config(**shape, n_head=n_head or v.n_head)
    if n_head is None:
        raise UsageError(
            f"{path}: {n_layer} layers x d_model {d_model}, {max_len} positions, {vocab} tokens match none of "
            f"the released variants ({', '.join(VARIANTS)}); give the head count (--n-head)"
        )
    if n_layer == 0 or d_model % n_head:
        raise UsageError(
            f"{path}: {n_layer} layers, d_model {d_model}: cannot be a DNAGPT with {n_head} heads"
        )
    return "custom", _gpt_config(**shape, n_head=n_head)


def _sample(state: dict) -> str:
    names = sorted(state)
    return f"its {len(names)} tensors start {', '.join(names[:3])}" if names else "it holds no tensors"


def check_layout(state: dict[str, torch.Tensor], cfg: GPTConfig, *, path="", what="") -> None:
    """Raise one UsageError listing every missing, unexpected and wrongly shaped tensor."""
    expected = expected_layout(cfg)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} (expected {expected[k]})"
        for k in set(expected) & set(state)
        if tuple(state[k].shape) != expected[k]
    )
    if missing or unexpected or shapes:
        parts = [
            f"{label} {len(items)}: {', '.join(items[:12])}{' ...' if len(items) > 12 else ''}"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes))
            if items
        ]
        raise UsageError(
            f"{path}: does not match the released DNAGPT layout{' of ' + what if what else ''} "
            f"({SOURCE}): {'; '.join(parts)}"
        )


def to_ours(state: dict[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """A checked release state dict -> ours (fp32), with zeros for our biases the release lacks."""
    with torch.device("meta"):
        ref = DNAGPT(cfg).state_dict()
    out = {}
    for name, p in ref.items():
        theirs = release_name(name)
        out[name] = torch.zeros(p.shape) if theirs is None else state[theirs].float()
    return out


def to_release(model: DNAGPT) -> dict[str, torch.Tensor]:
    """Our model -> the released layout. It must have the released head and activation, and zero biases
    where the release has none (an imported model has); otherwise the file could not hold the same function."""
    cfg = model.cfg
    if cfg.lm_head != "mlp" or cfg.gelu != "tanh":
        raise UsageError(
            f"the released layout has an untied MLP head and tanh GELU; this model has lm_head={cfg.lm_head!r}, "
            f"gelu={cfg.gelu!r}"
        )
    out, nonzero = {}, []
    for name, p in model.state_dict().items():
        theirs = release_name(name)
        if theirs is None:
            if p.any():
                nonzero.append(name)
            continue
        out[theirs] = p.detach().cpu().clone()
    if nonzero:
        raise UsageError(
            f"the released layout has no biases here, but these are not zero: {', '.join(nonzero)}"
        )
    return out


def import_release(
    path: str | Path,
    out_dir: str | Path,
    *,
    variant: str = "auto",
    n_head: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Path, str]:
    """A released checkpoint -> our export folder (``trainer.models.export``: what ``dnafm eval`` and
    ``dnafm export`` read) -> (folder, variant). Nothing is written unless the whole layout fits."""
    from datapipe.tokenizers import get_tokenizer
    from trainer.config import PretrainConfig
    from trainer.models.export import export_model

    state = read_release(path)
    name, cfg = infer_config(state, variant=variant, n_head=n_head, path=str(path))
    check_layout(state, cfg, path=str(path), what=name)
    tokenizer = VOCAB_TOKENIZER[cfg.vocab_size]
    config = PretrainConfig(recipe=f"release-{name}", family="dnagpt", tokenizer=tokenizer, model=cfg)
    source = {"imported_from": Path(path).name, "variant": name, "layout": SOURCE}
    out = export_model(
        to_ours(state, cfg),
        Path(out_dir),
        config=config.to_dict(),
        tokenizer=get_tokenizer(tokenizer),
        dtype=dtype,
        extra_json={"source.json": source},
    )
    return out, name
