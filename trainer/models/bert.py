"""DNABERT: architecture only. BERT-base encoder (post-LayerNorm, as in BERT), an MLM head and a
sequence-classification head on [CLS].

Shapes: input_ids (B, T), attention_mask (B, T) bool (True = real token). Attention goes through
``kernels.fused_attention(causal=False, key_padding_mask=...)``. Parameter names follow the structure
of Hugging Face's ``BertForMaskedLM`` closely enough that ``trainer/hf_bert.py`` maps them one to one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

import kernels
from datapipe.common.config import Config, check


@dataclass(kw_only=True)
class BertConfig(Config):
    vocab_size: int = 4101
    """69 / 261 / 1,029 / 4,101 for dnabert-3 .. dnabert-6."""
    max_seq_len: int = 512
    """Positions, including [CLS] and [SEP]."""
    n_layer: int = 12
    n_head: int = 12
    d_model: int = 768
    d_ff: int = 3072
    dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    type_vocab_size: int = 2
    """Token-type (segment) embeddings, kept for checkpoint compatibility with BERT; DNABERT uses type 0."""
    init_std: float = 0.02
    """Standard deviation of the normal init of every linear and embedding weight. BERT's 0.02 suits d=768;
    narrow models can stall on it (a 64-wide one does on bench/bench_copy_task.py; BENCHMARKS.md, #23)."""
    num_labels: int = 2
    """Classes of the sequence-classification head."""
    attention: Literal["auto", "torch", "triton"] = "auto"
    """kernels.fused_attention implementation (see GPTConfig.attention)."""
    embedding: Literal["ids", "fused"] = "ids"
    """Pretraining input path: token ids, or raw bases through ``kernels.kmer_embedding`` (see
    GPTConfig.embedding)."""

    def __post_init__(self) -> None:
        check(self.vocab_size > 0, "vocab_size", "must be > 0")
        check(self.n_head > 0, "n_head", "must be > 0")
        check(self.d_model > 0, "d_model", "must be > 0")
        check(self.d_model % self.n_head == 0, "d_model", f"must be divisible by n_head ({self.n_head})")
        check(self.n_layer > 0 and self.d_ff > 0, "n_layer", "n_layer and d_ff must be > 0")
        check(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        check(self.num_labels >= 2, "num_labels", "must be >= 2")
        check(self.init_std > 0, "init_std", "must be > 0")


class BertLayer(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        d = cfg.d_model
        self.n_head = cfg.n_head
        self.impl = cfg.attention
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.attn_out = nn.Linear(d, d)
        self.attn_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.ff_in = nn.Linear(d, cfg.d_ff)
        self.ff_out = nn.Linear(cfg.d_ff, d)
        self.ff_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        # (B, T, D) -> (B, nh, T, hs)
        q, k, v = (
            proj(x).view(b, t, self.n_head, d // self.n_head).transpose(1, 2)
            for proj in (self.query, self.key, self.value)
        )
        y = kernels.fused_attention(q, k, v, causal=False, key_padding_mask=keep, impl=self.impl)
        y = self.attn_out(y.transpose(1, 2).reshape(b, t, d))
        x = self.attn_norm(x + self.dropout(y))  # post-LN, as in BERT
        h = self.ff_out(F.gelu(self.ff_in(x)))
        return self.ff_norm(x + self.dropout(h))

    def attention_probs(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """(B, T, D) layer input -> (B, nh, T, T) attention probabilities, through the explicit torch
        softmax (``forward`` goes through the fused op, which never forms them). For interpretation."""
        b, t, d = x.shape
        q, k = (
            p(x).view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for p in (self.query, self.key)
        )
        return kernels.attention_probs(q, k, causal=False, key_padding_mask=keep)


class DNABERT(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.word = nn.Embedding(cfg.vocab_size, d)
        self.position = nn.Embedding(cfg.max_seq_len, d)
        self.token_type = nn.Embedding(cfg.type_vocab_size, d)
        self.emb_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.n_layer))
        # MLM head: transform (dense, GELU, LayerNorm), then the tied word embeddings plus a bias.
        self.mlm_dense = nn.Linear(d, d)
        self.mlm_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.mlm_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        # Classification head on [CLS]: BERT's pooler (dense + tanh), dropout, linear.
        self.pooler = nn.Linear(d, d)
        self.classifier = nn.Linear(d, cfg.num_labels)
        self.apply(self._init_weights)

    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=self.cfg.init_std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        token_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """-> hidden states (B, T, D). ``token_embeds`` (B, T, D): the rows of ``word`` for ``input_ids``
        when the caller already gathered them (the fused k-mer embedding)."""
        b, t = input_ids.shape
        if t > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {t} tokens exceeds max_seq_len={self.cfg.max_seq_len}")
        x, keep = self._embed(input_ids, attention_mask, token_embeds)
        for layer in self.layers:
            x = layer(x, keep)
        return x

    def _embed(self, input_ids, attention_mask, token_embeds) -> tuple[torch.Tensor, torch.Tensor]:
        """-> the first layer's input (B, T, D) and the key mask (B, T) bool."""
        keep = (
            attention_mask.to(torch.bool)
            if attention_mask is not None
            else torch.ones_like(input_ids, dtype=torch.bool)
        )
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        if token_embeds is None:
            token_embeds = kernels.token_embedding(input_ids, self.word.weight)
        x = token_embeds + self.position(pos) + self.token_type(torch.zeros_like(input_ids))
        return self.dropout(self.emb_norm(x)), keep

    def attention_probs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *, layer: int = -1
    ) -> torch.Tensor:
        """(B, nh, T, T) attention probabilities of encoder layer ``layer`` (negative counts from the
        end): the layers below it run as in ``forward``, the layer's own softmax(QK^T) through the torch
        path. Costs one forward up to that layer plus a (B, nh, T, T) tensor."""
        index = range(self.cfg.n_layer)[layer]  # IndexError names an out-of-range layer
        x, keep = self._embed(input_ids, attention_mask, None)
        for block in self.layers[:index]:
            x = block(x, keep)
        return self.layers[index].attention_probs(x, keep)

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., V)."""
        h = self.mlm_norm(F.gelu(self.mlm_dense(hidden)))
        return F.linear(h, self.word.weight, self.mlm_bias)

    def classify(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, num_labels) from the [CLS] position."""
        pooled = torch.tanh(self.pooler(hidden[:, 0]))
        return self.classifier(self.dropout(pooled))
