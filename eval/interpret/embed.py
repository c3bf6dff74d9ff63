"""Sequence embeddings from a DNAGPT or DNABERT checkpoint, pooled over the sequence's k-mer tokens.

Inputs: DNABERT ``[CLS] + k-mers + [SEP]`` with padding masked out of attention; DNAGPT ``<sp> + k-mers``
(causal, so padding after a sequence never reaches it). A sequence's embedding is therefore the same
alone or in a padded batch (to float rounding; tested for both families).

Pooling (``pooling``):

- ``mean``: the mean of the final hidden states over the k-mer tokens (special tokens and padding left out);
- ``cls``: DNABERT's ``[CLS]`` hidden state (DNAGPT has no such token: an error);
- ``last``: the hidden state of the last k-mer token (for DNAGPT, the causal summary of the whole input).

A sequence longer than the context is cut into consecutive windows that together hold each of its k-mer
tokens exactly once (DNABERT: windows of ``max_seq_len - 2`` k-mers overlapping by k - 1 bases; DNAGPT:
windows of ``max_seq_len - 1`` k-mers, cut at multiples of k, so the tokens are those of the whole
sequence). ``mean`` is then the mean over all the windows' k-mer tokens, ``cls`` the mean of the windows'
``[CLS]`` states, ``last`` the last window's. Each window sees only its own context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from datapipe.common.config import Config, check
from datapipe.common.errors import UsageError
from datapipe.common.logs import progress

Pooling = Literal["mean", "cls", "last"]


@dataclass(kw_only=True)
class EmbedConfig(Config):
    pooling: Pooling = "mean"
    batch_size: int = 32
    """Windows per forward pass."""
    species_token: str = "R"
    """DNAGPT's first prompt token (a letter, as `dnafm eval --species-token`); ignored by DNABERT."""

    def __post_init__(self) -> None:
        check(self.batch_size >= 1, "batch_size", "must be >= 1")


def windows(seq: str, family: str, k: int, max_len: int) -> list[str]:
    """Consecutive pieces of ``seq`` that each fit the context and together hold each k-mer token once."""
    if family == "dnabert":
        n_tok = max_len - 2  # [CLS], [SEP]
        span = n_tok + k - 1  # bases of n_tok overlapping k-mers
        starts = range(0, max(len(seq) - k + 1, 1), n_tok)
        return [seq[s : s + span] for s in starts]
    span = (max_len - 1) * k  # <sp> + disjoint k-mers
    return [seq[s : s + span] for s in range(0, max(len(seq), 1), span)]


def _encode(family: str, tok, piece: str, species_id: int) -> np.ndarray:
    ids = tok.encode(piece)
    if family == "dnabert":
        return np.concatenate([[tok.cls_id], ids, [tok.sep_id]])
    return np.concatenate([[species_id], ids])


@torch.no_grad()
def embed_sequences(model, family: str, tok, sequences: list[str], cfg: EmbedConfig) -> np.ndarray:
    """(N, d_model) float32 embeddings of ``sequences`` (``model``: the bare DNAGPT / DNABERT)."""
    if cfg.pooling == "cls" and family != "dnabert":
        raise UsageError("pooling 'cls' reads DNABERT's [CLS] token; DNAGPT has none: use mean or last")
    k, max_len = tok.k, model.cfg.max_seq_len
    species_id = tok.token_to_id(f"<{cfg.species_token}>") if family == "dnagpt" else -1
    pieces: list[tuple[int, int, np.ndarray]] = []  # (sequence, window index, token ids)
    for i, seq in enumerate(sequences):
        if len(seq) < k:
            raise UsageError(f"sequence {i + 1} has {len(seq)} bases, fewer than one {k}-mer")
        for j, piece in enumerate(windows(seq, family, k, max_len)):
            pieces.append((i, j, _encode(family, tok, piece, species_id)))
    d = model.cfg.d_model
    sums = np.zeros((len(sequences), d), dtype=np.float64)  # mean: sum over tokens; cls: sum over windows
    counts = np.zeros(len(sequences), dtype=np.int64)
    last = np.zeros((len(sequences), d), dtype=np.float32)
    last_window = np.full(len(sequences), -1)
    order = np.argsort([len(p[2]) for p in pieces], kind="stable")  # similar lengths together: less padding
    batches = range(0, len(order), cfg.batch_size)
    for lo in progress(batches, total=len(batches), desc="embed", unit="batch"):
        batch = [pieces[o] for o in order[lo : lo + cfg.batch_size]]
        lengths = np.array([len(p[2]) for p in batch])
        ids = np.full((len(batch), lengths.max()), tok.pad_id, dtype=np.int64)
        for r, (_, _, row) in enumerate(batch):
            ids[r, : len(row)] = row
        x = torch.from_numpy(ids)
        hidden = (model(x, x != tok.pad_id) if family == "dnabert" else model(x)).float().numpy()  # (B, T, D)
        for r, (i, j, _) in enumerate(batch):
            n = lengths[r]
            kmers = hidden[r, 1 : n - 1] if family == "dnabert" else hidden[r, 1:n]  # k-mer tokens only
            if cfg.pooling == "mean":
                sums[i] += kmers.sum(0)
                counts[i] += len(kmers)
            elif cfg.pooling == "cls":
                sums[i] += hidden[r, 0]
                counts[i] += 1
            elif j > last_window[i]:
                last[i], last_window[i] = kmers[-1], j
    if cfg.pooling == "last":
        return last
    return (sums / counts[:, None]).astype(np.float32)


def write_embeddings(path, emb: np.ndarray, ids: list[str]) -> None:
    """``.npy``: the (N, D) float32 array, rows in input order. ``.parquet``: a column ``id`` and one
    float32 column per dimension, ``e0`` .. ``e{D-1}``. Written to a temporary name, then renamed."""
    import io
    from pathlib import Path

    from datapipe.common.files import write_atomic

    path = Path(path)
    buf = io.BytesIO()
    if path.suffix == ".npy":
        np.save(buf, emb)
    elif path.suffix == ".parquet":
        import pandas as pd

        frame = pd.DataFrame(emb, columns=[f"e{i}" for i in range(emb.shape[1])])
        frame.insert(0, "id", ids)
        frame.to_parquet(buf, index=False)
    else:
        raise UsageError(f"{path}: --out must end in .npy or .parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buf.getvalue())
