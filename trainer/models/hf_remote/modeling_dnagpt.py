"""DNAGPT for Hugging Face transformers (written by dnafm; imports only torch and transformers).

The forward is dnafm's ``trainer.models.gpt.DNAGPT`` operation for operation: pre-LayerNorm blocks without
biases, learned absolute positions, GELU MLP (4x), causal attention through
``F.scaled_dot_product_attention``; numbers enter through the number embedding (Linear 1->d, SiLU,
LayerNorm, Linear d->d) added to the token embedding where ``num_in_mask`` is True, and leave through the
regression head (same shape, d->1) read at output ``<M>`` slots (Zhang et al. 2023, DNAGPT,
arXiv:2307.05628). The LM head is tied to the token embedding (``lm_head='tied'``) or, for the released
DNAGPT checkpoints, an untied MLP (``lm_head='mlp'``).

``generate()`` keeps keys and values in a ``transformers`` ``DynamicCache``; with an ``attention_mask``
that has zeros (left padding), positions count real tokens only, so a padded row gives the logits of the
same row unpadded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_dnagpt import DnaGptConfig


@dataclass
class DnaGptCausalLMOutput(CausalLMOutputWithPast):
    """Adds ``numbers`` (B, T): the regression head at every position (meaningful at output ``<M>`` slots),
    and ``last_hidden_state`` (B, T, D), after the final LayerNorm. The cache field is the parent's
    (``past_key_values`` in transformers 4, ``cache`` in 5, which accepts the old name)."""

    numbers: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None


# transformers 5 renamed the field to `cache` (the old name still works, with a warning on every call)
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def _number_mlp(d_in: int, d: int, d_out: int) -> nn.Sequential:
    # indices 0, 2, 3 carry weights: the same names as dnafm's NumberMLP
    return nn.Sequential(nn.Linear(d_in, d), nn.SiLU(), nn.LayerNorm(d), nn.Linear(d, d_out))


class DnaGptAttention(nn.Module):
    def __init__(self, config: DnaGptConfig, layer_idx: int):
        super().__init__()
        self.n_head = config.n_head
        self.layer_idx = layer_idx
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, x, attn_mask, is_causal, cache):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        # (B, T, D) -> (B, nh, T, hs)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # (B, nh, past + T, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class DnaGptBlock(nn.Module):
    def __init__(self, config: DnaGptConfig, layer_idx: int):
        super().__init__()
        d = config.d_model
        self.ln1 = nn.LayerNorm(d, eps=config.layer_norm_eps, bias=False)
        self.attn = DnaGptAttention(config, layer_idx)
        self.ln2 = nn.LayerNorm(d, eps=config.layer_norm_eps, bias=False)
        approximate = "tanh" if config.gelu == "tanh" else "none"
        self.mlp = nn.Sequential(
            nn.Linear(d, 4 * d, bias=False), nn.GELU(approximate=approximate), nn.Linear(4 * d, d, bias=False)
        )

    def forward(self, x, attn_mask, is_causal, cache):
        x = x + self.attn(self.ln1(x), attn_mask, is_causal, cache)
        return x + self.mlp(self.ln2(x))


class DnaGptPreTrainedModel(PreTrainedModel):
    config_class = DnaGptConfig
    base_model_prefix = "model"
    _no_split_modules = ["DnaGptBlock"]

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def _attention_mask(attention_mask, past: int, t: int, device):
    """-> (mask or None, is_causal) for SDPA. Without padding: the causal flag (prefill) or nothing (one new
    token sees every cached one). With padding: a bool (B, 1, T, past + T) mask; each query also sees itself,
    so a padding row is not all False (SDPA would give NaN there; real tokens never read padding)."""
    padded = attention_mask is not None and not bool(attention_mask.all())
    if not padded and (past == 0 or t == 1):
        return None, past == 0 and t > 1
    s = past + t
    q_pos = torch.arange(past, s, device=device)[:, None]
    k_pos = torch.arange(s, device=device)[None, :]
    allowed = (k_pos <= q_pos)[None, None]  # (1, 1, T, S)
    if padded:
        if attention_mask.shape[1] != s:
            raise ValueError(
                f"attention_mask covers {attention_mask.shape[1]} tokens, expected past + new = {s}"
            )
        allowed = (allowed & attention_mask.bool()[:, None, None, :]) | (k_pos == q_pos)[None, None]
    return allowed, False


class DnaGptModel(DnaGptPreTrainedModel):
    """The decoder: token ids (+ numbers at number slots) -> final hidden states (B, T, D)."""

    def __init__(self, config: DnaGptConfig):
        super().__init__(config)
        d = config.d_model
        self.wte = nn.Embedding(config.vocab_size, d)
        self.wpe = nn.Embedding(config.max_seq_len, d)
        self.num_embed = _number_mlp(1, d, d)
        self.blocks = nn.ModuleList(DnaGptBlock(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(d, eps=config.layer_norm_eps, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, value):
        self.wte = value

    def forward(
        self,
        input_ids,
        num_values=None,
        num_in_mask=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        use_cache=False,
    ):
        """-> (hidden (B, T, D), cache or None). ``num_values`` (B, T) float, ``num_in_mask`` (B, T) bool."""
        b, t = input_ids.shape
        if use_cache and cache is None:
            cache = DynamicCache()
        past = cache.get_seq_length() if cache is not None else 0
        if past + t > self.config.max_seq_len:
            raise ValueError(f"{past + t} tokens exceed max_seq_len={self.config.max_seq_len}")
        if position_ids is None:
            if attention_mask is not None and not bool(attention_mask.all()):
                # left padding: real tokens count from 0, as in the unpadded row
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -t:]
            else:
                position_ids = torch.arange(past, past + t, device=input_ids.device)[None]
        x = self.wte(input_ids) + self.wpe(position_ids)  # (B, T, D)
        if num_values is not None and num_in_mask is not None:
            emb = self.num_embed(num_values.unsqueeze(-1).to(x.dtype))  # (B, T, D)
            x = x + emb * num_in_mask.unsqueeze(-1).to(x.dtype)
        attn_mask, is_causal = _attention_mask(attention_mask, past, t, x.device)
        for block in self.blocks:
            x = block(x, attn_mask, is_causal, cache)
        return self.ln_f(x), cache


class DnaGptForCausalLM(DnaGptPreTrainedModel, GenerationMixin):
    def __init__(self, config: DnaGptConfig):
        super().__init__(config)
        d = config.d_model
        self.model = DnaGptModel(config)
        self.num_head = _number_mlp(d, d, 1)
        self.lm_head = _number_mlp(d, d, config.vocab_size) if config.lm_head == "mlp" else None
        self.post_init()

    def get_input_embeddings(self):
        return self.model.wte

    def set_input_embeddings(self, value):
        self.model.wte = value

    def get_output_embeddings(self):
        return None  # the tied head reads model.wte directly; the MLP head is not an embedding

    def forward(
        self,
        input_ids=None,
        num_values=None,
        num_in_mask=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        use_cache=None,
        labels=None,
        logits_to_keep=0,
        return_dict=None,
        cache=None,
        **kwargs,
    ):
        """``labels`` (B, T): next-token cross-entropy over positions whose label is not -100 (shifted
        inside, as every transformers causal LM). ``logits_to_keep`` > 0: logits and numbers of the last
        positions only (generate asks for 1)."""
        cache = cache if cache is not None else past_key_values
        hidden, cache = self.model(
            input_ids,
            num_values=num_values,
            num_in_mask=num_in_mask,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=bool(use_cache) or cache is not None,
        )
        h = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
        logits = self.lm_head(h) if self.lm_head is not None else F.linear(h, self.model.wte.weight)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                labels[:, 1:].reshape(-1),
                ignore_index=-100,
            )
        return DnaGptCausalLMOutput(
            loss=loss,
            logits=logits,
            numbers=self.num_head(h).squeeze(-1),
            last_hidden_state=hidden,
            **{_CACHE_FIELD: cache},
        )

    def prepare_inputs_for_generation(
        self,
        input_ids,
        past_key_values=None,
        cache=None,
        attention_mask=None,
        use_cache=True,
        num_values=None,
        num_in_mask=None,
        **kwargs,
    ):
        """Only the tokens the cache has not seen; numbers belong to the prompt (generated tokens carry
        none)."""
        cache = cache if cache is not None else past_key_values
        past = cache.get_seq_length() if cache is not None else 0
        if num_values is not None and num_in_mask is not None:
            extra = input_ids.shape[1] - num_values.shape[1]
            if extra > 0:
                num_values = F.pad(num_values, (0, extra))
                num_in_mask = F.pad(num_in_mask.bool(), (0, extra))
            num_values, num_in_mask = num_values[:, past:], num_in_mask[:, past:]
        inputs = {
            "input_ids": input_ids[:, past:],
            "attention_mask": attention_mask,
            "past_key_values": cache,
            "use_cache": use_cache,
            "num_values": num_values,
            "num_in_mask": num_in_mask,
        }
        if "logits_to_keep" in kwargs:
            inputs["logits_to_keep"] = kwargs["logits_to_keep"]
        return inputs
