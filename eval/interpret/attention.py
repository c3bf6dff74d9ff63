"""Per-base attention scores (DNABERT-viz, Ji et al. 2021, Bioinformatics btab083, section 2.5).

DNABERT: the last layer's attention from ``[CLS]`` to each k-mer token, summed over heads; a base's score is
the mean over the (up to k) k-mers that cover it. DNAGPT: the same read from the answer position ``<=>`` of
the classification prompt ``<sp> + k-mers + <=>``; its k-mers do not overlap, so a base takes its k-mer's
score. Special tokens ([CLS], [SEP], the species token, ``<=>``) and padding get no score. Each sequence's
scores are then divided by their L2 norm, as DNABERT's released code did, so sequences compare on one scale.

The probabilities come from ``model.attention_probs`` (an explicit softmax(QK^T) of one layer); the
training path's fused attention never forms them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from datapipe.common.config import Config, check
from datapipe.common.logs import progress
from eval.heads import encode_inputs

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class AttentionConfig(Config):
    layer: int = -1
    """Encoder layer whose attention is read (negative counts from the end; DNABERT-viz: the last)."""
    normalize: Literal["l2", "none"] = "l2"
    """Divide each sequence's per-base scores by their L2 norm (DNABERT's released code does)."""
    batch_size: int = 64
    """Sequences per forward pass; memory grows as batch x heads x T^2 for the probabilities."""
    plot_rows: int = 200
    """Sequences drawn in the heatmap (the most confident of each class first)."""
    plot_tracks: int = 8
    """Sequences drawn as score tracks (the highest predicted probability of the positive class)."""
    positive_class: int = 1
    """Class whose probability orders the plots and the tracks."""

    def __post_init__(self) -> None:
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.plot_rows >= 1 and self.plot_tracks >= 0, "plot_rows", "plot_rows >= 1, plot_tracks >= 0")
        check(self.positive_class >= 0, "positive_class", "must be a class id >= 0")


@dataclass(kw_only=True)
class AttentionResult:
    scores: list[np.ndarray]
    """Per sequence, (L,) float32 per-base scores."""
    prob: np.ndarray | None
    """(N, C) class probabilities of the fine-tuned classifier; None for a pretrained model."""

    def padded(self) -> np.ndarray:
        """(N, L_max) float32, NaN past each sequence's end."""
        out = np.full((len(self.scores), max(len(s) for s in self.scores)), np.nan, dtype=np.float32)
        for i, s in enumerate(self.scores):
            out[i, : len(s)] = s
        return out


def token_to_base(token_scores: np.ndarray, family: str, k: int, length: int) -> np.ndarray:
    """(n,) k-mer token scores -> (length,) per-base scores.

    DNABERT (n = length - k + 1 overlapping k-mers): base j is the mean over the k-mers i with
    i <= j < i + k. DNAGPT (n = ceil(length / k) disjoint k-mers, a short tail is one token): base j takes
    k-mer j // k."""
    if family == "dnabert":
        assert len(token_scores) == length - k + 1, (len(token_scores), length, k)
        window = np.ones(k)
        sums = np.convolve(token_scores, window)  # (length,): sum over the covering k-mers
        counts = np.convolve(np.ones(len(token_scores)), window)
        return (sums / counts).astype(np.float32)
    assert len(token_scores) == -(-length // k), (len(token_scores), length, k)
    return np.repeat(token_scores, k)[:length].astype(np.float32)


@torch.no_grad()
def attention_scores(loaded, sequences: list[str], cfg: AttentionConfig) -> AttentionResult:
    """Per-base scores for every sequence (and class probabilities when ``loaded`` is fine-tuned).

    ``loaded``: an ``eval.saved_model.Loaded``. Sequences are batched by length (less padding); each batch
    costs one forward up to the layer plus (B, heads, T, T) probabilities, and one classifier forward."""
    family, tok, model = loaded.family, loaded.tokenizer, loaded.model
    k = tok.k
    order = np.argsort([len(s) for s in sequences], kind="stable")
    scores: list[np.ndarray | None] = [None] * len(sequences)
    probs: list[np.ndarray | None] = [None] * len(sequences)
    batches = range(0, len(order), cfg.batch_size)
    for lo in progress(batches, total=len(batches), desc="attention", unit="batch"):
        idx = order[lo : lo + cfg.batch_size]
        batch = [sequences[i] for i in idx]
        ids, ask = encode_inputs(
            family, tok, batch, species_token=loaded.species_token, max_len=model.cfg.max_seq_len
        )
        x = torch.from_numpy(ids)
        if family == "dnabert":
            att = model.attention_probs(x, x != tok.pad_id, layer=cfg.layer)  # (B, nh, T, T)
            rows = att[:, :, 0, :].sum(1)  # (B, T): [CLS] row, summed over heads
        else:
            att = model.attention_probs(x, layer=cfg.layer)
            rows = att[torch.arange(len(idx)), :, torch.from_numpy(ask), :].sum(1)  # (B, T): <=> row
        rows = rows.float().numpy()
        for j, i in enumerate(idx):
            n = len(tok.encode(batch[j]))  # k-mer tokens sit at positions 1..n in both prompts
            base = token_to_base(rows[j, 1 : n + 1], family, k, len(batch[j]))
            if cfg.normalize == "l2":
                base = base / max(float(np.linalg.norm(base)), 1e-12)
            scores[i] = base
        if loaded.classifier is not None:
            p = torch.softmax(loaded.classifier(x, torch.from_numpy(ask)), -1).numpy()
            for j, i in enumerate(idx):
                probs[i] = p[j]
    prob = np.stack(probs) if loaded.classifier is not None else None
    return AttentionResult(scores=scores, prob=prob)  # type: ignore[arg-type]


SCORES = "scores.npy"
META = "attention.json"


def write_attention(out_dir, result: AttentionResult, data, loaded, cfg: AttentionConfig) -> None:
    """Into ``out_dir`` (atomically): scores.npy (N, L_max) float32 NaN-padded, scores.tsv (one row per
    sequence: id, label, predicted probabilities, length, sequence, comma-separated scores),
    attention.json (what was read, from which checkpoint and file), heatmap.png, tracks.png."""
    import csv
    import io
    import json
    from pathlib import Path

    from datapipe.common.files import atomic_dir
    from eval.interpret.plots import attention_heatmap, score_tracks

    padded = result.padded()
    prob = result.prob
    n_classes = prob.shape[1] if prob is not None else 0
    with atomic_dir(Path(out_dir)) as tmp:
        np.save(tmp / SCORES, padded)
        buf = io.StringIO()
        w = csv.writer(buf, delimiter="\t", lineterminator="\n")
        w.writerow(["id", "label", *(f"prob_{c}" for c in range(n_classes)), "length", "sequence", "scores"])
        for i, seq in enumerate(data.sequences):
            label = "" if data.labels is None else int(data.labels[i])
            probs = [f"{v:.5f}" for v in prob[i]] if prob is not None else []
            cells = ",".join(f"{v:.5g}" for v in result.scores[i])
            w.writerow([data.ids[i], label, *probs, len(seq), seq, cells])
        (tmp / "scores.tsv").write_text(buf.getvalue())
        meta = {
            "checkpoint": str(loaded.path),
            "family": loaded.family,
            "k": loaded.tokenizer.k,
            "fine_tuned": loaded.classifier is not None,
            "read_from": "[CLS] row" if loaded.family == "dnabert" else "<=> (answer) row",
            "data": str(data.path),
            "data_sha256": data.sha256(),
            "n_sequences": len(data),
            "classes": list(data.classes) if data.classes else None,
            "config": cfg.to_dict(),
        }
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
        pos = prob[:, cfg.positive_class] if prob is not None and cfg.positive_class < n_classes else None
        names = list(data.classes) if data.classes else None
        if names is None and data.labels is not None:
            names = [str(c) for c in range(int(data.labels.max()) + 1)]
        attention_heatmap(
            padded, data.labels, pos, tmp / "heatmap.png", max_rows=cfg.plot_rows, class_names=names
        )
        top = np.argsort(-pos, kind="stable") if pos is not None else np.arange(len(data))
        top = top[: cfg.plot_tracks]
        titles = [
            f"{data.ids[i]}"
            + ("" if pos is None else f"  P(class {cfg.positive_class}) = {pos[i]:.3f}")
            + ("" if data.labels is None else f"  label {int(data.labels[i])}")
            for i in top
        ]
        if len(top):
            score_tracks(
                [result.scores[i] for i in top], [data.sequences[i] for i in top], titles, tmp / "tracks.png"
            )
