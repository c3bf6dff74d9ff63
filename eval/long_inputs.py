"""Task inputs as model prompts, with sequences longer than the context read as overlapping windows.

A sequence whose tokens fit the context (after the prompt's own tokens) is one window. A longer one is, by
``pool``:

- ``off``: centre-cropped to what fits (``crop``), else an error;
- ``mean`` / ``max``: cut into windows of ``fit`` tokens, consecutive windows sharing ``overlap`` of them
  (a fraction; the last window is aligned to the sequence's end so every token is read), each window given
  the whole prompt. The head's read-out vector of every window (the hidden state at ``<=>`` / the last
  ``<M>`` for DNAGPT, [CLS] for DNABERT) is averaged (``mean``) or taken elementwise at its maximum
  (``max``) over the sequence's windows, and the task head reads that one vector (:func:`pool_windows`).

Windows are cut from the whole sequence's token ids, so every window keeps the token frame of the whole
(DNAGPT's non-overlapping 6-mers start at the same bases as when the sequence is read at once; a DNABERT
window of n overlapping k-mers covers n + k - 1 bases). Cost: a 10,500-bp promoter is 1,750 DNAGPT tokens,
so a 512-token model reads it as 5 windows at overlap 0.25 (1 window for a context of 1,760 or more), and a
128-token model as 20.

Prompts (``prompt='classify'``): DNAGPT ``<sp> + k-mers + <=>``; DNABERT ``[CLS] + k-mers + [SEP]``.
``prompt='regress'``: DNAGPT ``<sp> + k-mers + <+> + <M> x F + <=> + <M>`` (one ``<M>`` per numeric
feature, whose value enters through the number embedding; the target is read at the last ``<M>``; without
features ``<sp> + k-mers + <=> + <M>``); DNABERT as for classification (the features join at the head).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from datapipe.common.errors import UsageError
from datapipe.tokenizers import Tokenizer

Pool = Literal["off", "mean", "max"]


@dataclass(kw_only=True)
class Inputs:
    """Every window of every example, padded: rows ``starts[i]:starts[i + 1]`` are example i's windows."""

    ids: np.ndarray  # (M, T) int64, padded with the tokenizer's pad id
    read: np.ndarray  # (M,) int64: the position the head reads in each window
    starts: np.ndarray  # (N + 1,) int64 offsets into the M windows
    num_values: np.ndarray | None = None  # (M, T) float32: numbers at the feature <M> slots
    num_mask: np.ndarray | None = None  # (M, T) bool: where num_values enter
    features: np.ndarray | None = None  # (N, F) float32: per-example numbers a DNABERT head reads

    @property
    def windows_per_example(self) -> np.ndarray:
        return np.diff(self.starts)

    def batch(self, examples: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
        """The model's keyword inputs for ``examples``: their windows' rows, and ``counts`` (B,) windows each."""
        counts = self.starts[examples + 1] - self.starts[examples]
        rows = np.concatenate([np.arange(self.starts[i], self.starts[i + 1]) for i in examples])
        out = {
            "input_ids": torch.from_numpy(self.ids[rows]).to(device),
            "position": torch.from_numpy(self.read[rows]).to(device),
            "counts": torch.from_numpy(counts).to(device),
        }
        if self.num_values is not None:
            out["num_values"] = torch.from_numpy(self.num_values[rows]).to(device)
            out["num_mask"] = torch.from_numpy(self.num_mask[rows]).to(device)
        if self.features is not None:
            out["features"] = torch.from_numpy(self.features[examples]).to(device)
        return out


def _prompt(family: str, tok: Tokenizer, species_token: str, prompt: str, n_features: int):
    """(head ids, tail ids) around the k-mers."""
    if family != "dnagpt":
        return [tok.cls_id], [tok.sep_id]
    m = tok.token_to_id("<M>")
    tail = [tok.token_to_id("<=>")]
    if prompt == "regress":
        tail = ([tok.token_to_id("<+>")] + [m] * n_features if n_features else []) + tail + [m]
    return [tok.token_to_id(f"<{species_token}>")], tail


def window_starts(length: int, fit: int, overlap: float) -> list[int]:
    """Token offsets of the windows covering ``length`` tokens, ``fit`` each, the last ending at the end."""
    if length <= fit:
        return [0]
    stride = max(1, fit - int(round(overlap * fit)))
    return [*range(0, length - fit, stride), length - fit]


def encode(
    family: str,
    tok: Tokenizer,
    sequences: list[str],
    *,
    species_token: str,
    max_len: int,
    pool: Pool,
    overlap: float = 0.25,
    crop: bool = True,
    prompt: Literal["classify", "regress"] = "classify",
    features: np.ndarray | None = None,
) -> Inputs:
    """Every sequence as its prompt windows (module docstring). ``features`` (N, F): numbers for the
    DNAGPT regression prompt's ``<M>`` slots (standardised by the caller)."""
    n_features = 0 if features is None or family != "dnagpt" else features.shape[1]
    head, tail = _prompt(family, tok, species_token, prompt, n_features)
    fit = max_len - len(head) - len(tail)
    if fit < 1:
        raise UsageError(
            f"the prompt needs {len(head) + len(tail)} tokens besides the sequence; context {max_len}"
        )
    rows, owners = [], [0]
    for seq_ids in tok.encode_batch(sequences):
        if len(seq_ids) > fit and pool == "off":
            if not crop:
                raise UsageError(
                    f"a sequence needs {len(seq_ids) + len(head) + len(tail)} tokens but the model's context is "
                    f"{max_len}: set finetune.window_pool=mean (overlapping windows, pooled) or crop=true"
                )
            lo = (len(seq_ids) - fit) // 2
            seq_ids = seq_ids[lo : lo + fit]
        cuts = window_starts(len(seq_ids), fit, overlap)
        rows += [np.concatenate([head, seq_ids[s : s + fit], tail]) for s in cuts]
        owners.append(owners[-1] + len(cuts))
    longest = max(len(r) for r in rows)
    ids = np.full((len(rows), longest), tok.pad_id, dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    read = np.array([len(r) - 1 if family == "dnagpt" else 0 for r in rows], dtype=np.int64)
    out = Inputs(ids=ids, read=read, starts=np.asarray(owners, dtype=np.int64))
    if features is not None and family != "dnagpt" and features.shape[1]:
        out.features = np.asarray(features, dtype=np.float32)
    if n_features:
        out.num_values = np.zeros(ids.shape, dtype=np.float32)
        out.num_mask = np.zeros(ids.shape, dtype=bool)
        for i in range(len(sequences)):
            for w in range(out.starts[i], out.starts[i + 1]):
                slots = np.arange(read[w] - 1 - n_features, read[w] - 1)  # the <M>s between <+> and <=>
                out.num_values[w, slots] = features[i]
                out.num_mask[w, slots] = True
    return out


def pool_windows(x: torch.Tensor, counts: torch.Tensor | None, how: Pool) -> torch.Tensor:
    """(M, D) read-out vectors of M windows -> (B, D), one per example (``counts`` (B,) windows each, in
    order). One window each (or ``counts`` None): x itself."""
    if counts is None or len(counts) == len(x):
        return x
    seg = torch.repeat_interleave(
        torch.arange(len(counts), device=x.device), counts
    )  # (M,) example of each row
    if how == "max":
        idx = seg.unsqueeze(-1).expand_as(x)
        return torch.zeros(len(counts), x.shape[1], dtype=x.dtype, device=x.device).scatter_reduce(
            0, idx, x, reduce="amax", include_self=False
        )
    total = torch.zeros(len(counts), x.shape[1], dtype=x.dtype, device=x.device).index_add(0, seg, x)
    return total / counts.unsqueeze(-1).to(x.dtype)
