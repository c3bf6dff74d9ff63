"""Regressors built on a pretrained model: (windows' inputs) -> (B,) one number per example.

- DNAGPT, fine-tune: the released DNAGPT regression prompt (eval/long_inputs.py): the numeric features enter
  at their ``<M>`` slots through the number embedding, and the pretrained regression head (``num_head``, the
  one GC content trained in pretraining) reads the hidden state at the last ``<M>``. No new parameters.
- DNAGPT, probe: the encoder is frozen; a new ``LinearProbe(d, 1)`` reads that hidden state.
- DNABERT: [CLS] through the model's pooler (tanh dense), then Linear(d + F, 1) on that vector and the F
  standardised features side by side (fine-tune); probe: the encoder frozen, a ``LinearProbe(d + F, 1)``.

Windows of one example (long inputs) are pooled (``eval.long_inputs.pool_windows``) before the head, so the
head sees one vector per example whatever its length. Targets are standardised by the caller (train mean and
standard deviation), so the head predicts z-scores.
"""

from __future__ import annotations

import torch

from eval.heads import LinearProbe
from eval.long_inputs import Pool, pool_windows


class GptPromptRegressor(torch.nn.Module):
    def __init__(self, gpt, *, probe: bool, pool: Pool):
        super().__init__()
        self.gpt, self.pool = gpt, pool
        self.probe = LinearProbe(gpt.cfg.d_model, 1) if probe else None
        if probe:
            gpt.requires_grad_(False)

    def forward(
        self,
        input_ids: torch.Tensor,
        position: torch.Tensor,
        counts: torch.Tensor | None = None,
        num_values: torch.Tensor | None = None,
        num_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        with torch.set_grad_enabled(self.probe is None and torch.is_grad_enabled()):
            hidden = self.gpt(input_ids, num_values, num_mask)  # (M, T, D)
        at = hidden[torch.arange(len(position), device=hidden.device), position]  # (M, D) at the last <M>
        pooled = pool_windows(at, counts, self.pool)  # (B, D)
        if self.probe is not None:
            return self.probe(pooled).squeeze(-1).float()
        return self.gpt.regress(pooled).float()  # (B,)


class BertClsRegressor(torch.nn.Module):
    def __init__(self, bert, pad_id: int, *, n_features: int, probe: bool, pool: Pool):
        super().__init__()
        self.bert, self.pad_id, self.pool, self.frozen = bert, pad_id, pool, probe
        d = bert.cfg.d_model + n_features
        self.head = LinearProbe(d, 1) if probe else torch.nn.Linear(d, 1)
        if probe:
            bert.requires_grad_(False)

    def forward(
        self,
        input_ids: torch.Tensor,
        position: torch.Tensor,
        counts: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        with torch.set_grad_enabled(not self.frozen and torch.is_grad_enabled()):
            hidden = self.bert(input_ids, input_ids != self.pad_id)  # (M, T, D)
            cls = torch.tanh(self.bert.pooler(hidden[:, 0]))  # (M, D): [CLS] through the pretrained pooler
        pooled = pool_windows(cls, counts, self.pool)  # (B, D)
        if features is not None:
            pooled = torch.cat([pooled, features.to(pooled.dtype)], dim=-1)  # (B, D + F)
        return self.head(pooled).squeeze(-1).float()


def build_regressor(family: str, model, tok, *, n_features: int, probe: bool, pool: Pool) -> torch.nn.Module:
    if family == "dnagpt":
        return GptPromptRegressor(model, probe=probe, pool=pool)
    return BertClsRegressor(model, tok.pad_id, n_features=n_features, probe=probe, pool=pool)
