"""DNAGPT: architecture only (no DeepSpeed, no checkpoints, no precision policy).

GPT-2-style pre-LayerNorm decoder without biases, learned absolute positions, GELU MLP (4x),
causal attention through ``kernels.fused_attention``, token embedding through
``kernels.token_embedding``. Numbers enter through a number embedding added at number slots
(``<M>`` tokens) and leave through a regression head read at output number slots (Zhang et al. 2023,
DNAGPT, arXiv:2307.05628, section 2).
The language-model head shares the token-embedding matrix (GPT-2 weight tying).

Incremental decoding: ``forward(..., cache=model.new_cache(B))`` appends each call's keys and values to a
:class:`KVCache`, so that sampling token t costs one position instead of recomputing all t (the sampler is
``trainer.generate``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

import kernels
from datapipe.common.config import Config, check


@dataclass(kw_only=True)
class GPTConfig(Config):
    vocab_size: int = 15659
    """Token vocabulary (15,659 for dnagpt-6mer, 19,564 for dnagpt-1to6mer)."""
    max_seq_len: int = 512
    """Context length in tokens (learned positions)."""
    n_layer: int = 12
    n_head: int = 12
    d_model: int = 768
    dropout: float = 0.0
    attention: Literal["auto", "torch", "triton"] = "auto"
    """kernels.fused_attention implementation: 'auto' chooses per device (Triton on CUDA), 'torch' forces
    PyTorch SDPA, 'triton' requires the Triton kernel."""
    embedding: Literal["ids", "fused"] = "ids"
    """Pretraining input path. 'ids': the loader ships token ids, embedded with F.embedding. 'fused': the
    loader ships raw bases (1 byte per base) and ``kernels.kmer_embedding`` cuts the k-mers and gathers
    their rows in one op (Triton on CUDA, torch reference on CPU); the model sees the same ids either way."""
    lm_head: Literal["tied", "mlp"] = "tied"
    """'tied': logits through the token-embedding matrix (GPT-2). 'mlp': the released DNAGPT checkpoints'
    untied head, Linear(d -> d), SiLU, LayerNorm, Linear(d -> vocab) (``trainer.models.dnagpt_release``)."""
    gelu: Literal["exact", "tanh"] = "exact"
    """MLP activation: exact erf GELU, or the tanh approximation the released DNAGPT checkpoints use."""

    def __post_init__(self) -> None:
        check(self.vocab_size > 0, "vocab_size", "must be > 0")
        check(self.max_seq_len > 0, "max_seq_len", "must be > 0")
        check(self.n_layer > 0, "n_layer", "must be > 0")
        check(self.n_head > 0, "n_head", "must be > 0")
        check(self.d_model > 0, "d_model", "must be > 0")
        check(self.d_model % self.n_head == 0, "d_model", f"must be divisible by n_head ({self.n_head})")
        check(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")


class KVCache:
    """Keys and values of every layer for the positions decoded so far, for incremental decoding.

    Preallocated per layer as (B, nh, max_len, hs): appending is a slice copy. Concatenating instead would
    copy the whole cache at every step (O(T^2) memory traffic over a generation). ``length`` is the number
    of positions already held; the model advances it after each forward.
    """

    def __init__(
        self,
        *,
        n_layer: int,
        batch_size: int,
        n_head: int,
        head_dim: int,
        max_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        shape = (batch_size, n_head, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.max_len = max_len
        self.length = 0

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, nh, t, hs) new keys/values of ``layer``; return all of its keys/values so far."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {end} were asked for")
        self.k[layer][:, :, self.length : end] = k
        self.v[layer][:, :, self.length : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.impl = cfg.attention
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        # (B, T, D) -> (B, nh, T, hs)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        past = 0 if cache is None else cache.length
        if cache is not None:
            k, v = cache.append(layer, k, v)  # (B, nh, past + t, hs)
        if past == 0:  # training, or the prompt of a generation: the same op, hence the same logits
            y = kernels.fused_attention(q, k, v, causal=True, impl=self.impl)
        else:
            # Query i of the t new ones sits at position past + i and sees keys 0 .. past + i: a causal mask
            # aligned bottom-right. SDPA's is_causal aligns top-left when t < past + t, so pass the mask (one
            # new token sees every key: no mask). The flash kernel takes self-attention shapes only.
            mask = None
            if t > 1:
                mask = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.dropout(self.proj(y.transpose(1, 2).reshape(b, t, d)))

    def attention_probs(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) normed block input -> (B, nh, T, T) causal attention probabilities through the
        explicit torch softmax (``forward``'s fused op never forms them). For interpretation only."""
        b, t, d = x.shape
        q, k, _ = self.qkv(x).split(d, dim=2)
        q, k = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k))
        return kernels.attention_probs(q, k, causal=True)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model, bias=False)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model, bias=False)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, 4 * cfg.d_model, bias=False),
            nn.GELU(approximate="tanh" if cfg.gelu == "tanh" else "none"),
            nn.Linear(4 * cfg.d_model, cfg.d_model, bias=False),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache, layer)
        return x + self.mlp(self.ln2(x))


class NumberMLP(nn.Sequential):
    """Linear(d_in -> d) -> SiLU -> LayerNorm -> Linear(d -> d_out), as DNAGPT's number embedding/head.

    These two small MLPs keep their biases: a regression output needs an intercept, and a number
    embedding without one maps 0 to the zero vector.
    """

    def __init__(self, d_in: int, d: int, d_out: int):
        super().__init__(nn.Linear(d_in, d), nn.SiLU(), nn.LayerNorm(d), nn.Linear(d, d_out))


class DNAGPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.num_embed = NumberMLP(1, cfg.d_model, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=False)
        self.num_head = NumberMLP(cfg.d_model, cfg.d_model, 1)
        self.lm_head = NumberMLP(cfg.d_model, cfg.d_model, cfg.vocab_size) if cfg.lm_head == "mlp" else None
        self.apply(self._init_weights)
        # GPT-2: scale residual projections by 1/sqrt(2 * n_layer) so the residual stream's variance
        # does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def forward(
        self,
        input_ids: torch.Tensor,
        num_values: torch.Tensor | None = None,
        num_in_mask: torch.Tensor | None = None,
        *,
        token_embeds: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """input_ids (B, T) -> final hidden states (B, T, D).

        ``num_values`` (B, T) float and ``num_in_mask`` (B, T) bool: where the mask is True, the
        number embedding of the value is added to that slot's token embedding. ``token_embeds``
        (B, T, D): the rows of ``wte`` for ``input_ids`` when the caller already gathered them (the
        fused k-mer embedding, ``trainer.fused``). ``cache``: the tokens are the next ``T`` positions after
        the ``cache.length`` already decoded (keys and values of those are read from the cache, these are
        appended to it); without one they are positions 0 .. T-1.
        """
        b, t = input_ids.shape
        past = 0 if cache is None else cache.length
        if past + t > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {past + t} tokens exceeds max_seq_len={self.cfg.max_seq_len}")
        pos = torch.arange(past, past + t, device=input_ids.device)
        if token_embeds is None:
            token_embeds = kernels.token_embedding(input_ids, self.wte.weight)
        x = token_embeds + self.wpe(pos)  # (B, T, D)
        if num_in_mask is not None and num_values is not None:
            emb = self.num_embed(num_values.unsqueeze(-1).to(x.dtype))  # (B, T, D), cheap: 2 small matmuls
            x = x + emb * num_in_mask.unsqueeze(-1).to(x.dtype)
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x) if cache is None else block(x, cache, i)
        if cache is not None:
            cache.length += t
        return self.ln_f(x)

    def new_cache(
        self, batch_size: int, *, max_len: int | None = None, device=None, dtype: torch.dtype | None = None
    ) -> KVCache:
        """An empty KVCache for ``batch_size`` rows of up to ``max_len`` positions (default: the context).
        Memory: 2 x n_layer x B x max_len x d_model values."""
        w = self.wte.weight
        cfg = self.cfg
        return KVCache(
            n_layer=cfg.n_layer,
            batch_size=batch_size,
            n_head=cfg.n_head,
            head_dim=cfg.d_model // cfg.n_head,
            max_len=min(max_len or cfg.max_seq_len, cfg.max_seq_len),
            device=device or w.device,
            dtype=dtype or w.dtype,
        )

    def lm_logits(self, hidden: torch.Tensor, only: torch.Tensor | None = None) -> torch.Tensor:
        """(..., D) -> (..., V) through the tied embedding matrix (or the untied MLP head, ``lm_head='mlp'``).
        ``only`` (K,) token ids: the logits of just those tokens, (..., K), at K x D per row instead of V x D
        (the same values as ``lm_logits(hidden)[..., only]``)."""
        if self.lm_head is None:
            return F.linear(hidden, self.wte.weight if only is None else self.wte.weight[only])
        if only is None:
            return self.lm_head(hidden)
        *body, out = self.lm_head  # Linear, SiLU, LayerNorm; then Linear(d -> V), of which ``only``'s rows
        for layer in body:
            hidden = layer(hidden)
        return F.linear(hidden, out.weight[only], out.bias[only])

    def regress(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (...,) number read at output number slots."""
        return self.num_head(hidden).squeeze(-1)

    def attention_probs(self, input_ids: torch.Tensor, *, layer: int = -1) -> torch.Tensor:
        """(B, nh, T, T) attention probabilities of block ``layer`` (negative counts from the end) for a
        prompt without number slots (the classification prompt): blocks below it run as in ``forward``."""
        index = range(self.cfg.n_layer)[layer]  # IndexError names an out-of-range layer
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.drop(self.wte(input_ids) + self.wpe(pos))
        for block in self.blocks[:index]:
            x = block(x)
        block = self.blocks[index]
        return block.attn.attention_probs(block.ln1(x))
