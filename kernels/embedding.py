"""Token embedding op. The fused raw-bases k-mer kernel (issue 7) slots in beside this reference."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.dispatch import announce


def token_embedding(ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """ids (B, T) int64, weight (V, D) -> (B, T, D)."""
    announce("token_embedding", "torch F.embedding", "reference path; no fused kernel selected")
    return F.embedding(ids, weight)
