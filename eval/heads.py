"""Classifiers built on a pretrained model, one per family, each with a fine-tune and a probe variant.

Every classifier maps (input_ids (B, T), position (B,)) -> (B, C) logits for C classes; ``position`` is the
index the head reads (the ``<=>`` slot for DNAGPT, 0 = [CLS] for DNABERT), and padding is ``pad_id``.

- DNAGPT, fine-tune: the released models' prompt, ``<sp> + k-mers + <=>``, answer read at ``<=>`` as the
  logits of the tokens ``<0>`` .. ``<C-1>`` through the (tied) LM head: no new parameters. The vocabulary
  has ``<0>``..``<9>``, so this works for up to 10 classes.
- DNAGPT, probe: the encoder is frozen; a new linear head (``LinearProbe``) reads the hidden state at ``<=>``
  (any C).
- DNABERT: ``[CLS] + k-mers + [SEP]``; the model's pooler + classifier read [CLS]. A checkpoint whose
  classifier has another number of labels than C (pretraining exports have 2) gets a fresh Linear(d, C) in its
  place. Probe: the encoder (pooler and classifier included) is frozen and a new ``LinearProbe`` reads [CLS].

Long inputs (``finetune.window_pool``, eval/long_inputs.py): the rows are windows, ``counts`` (B,) says how
many belong to each example, and the read-out vectors are pooled per example before the head.

The probe standardises each feature (BatchNorm without affine parameters, as MAE's linear probe) before its
Linear: a frozen encoder's read-out vector is nearly the same for every sequence (measured: 99% of its
second moment is common to all sequences for a random tiny DNAGPT at ``<=>``), so an unnormalised head sees
logits that differ by ~0.06 between sequences and, at fine-tuning learning rates, ends predicting one class.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from datapipe.common.errors import UsageError
from datapipe.tokenizers import Tokenizer
from eval.long_inputs import Pool, pool_windows

log = logging.getLogger(__name__)

MAX_PROMPT_CLASSES = 10  # DNAGPT's reserved answer tokens <0>..<9>


class LinearProbe(torch.nn.Sequential):
    """BatchNorm1d(d, affine=False) -> Linear(d, C): a linear map of the standardised features (the batch
    statistics while training, their running means in eval mode; no learned scale or shift)."""

    def __init__(self, d: int, num_classes: int):
        super().__init__(torch.nn.BatchNorm1d(d, affine=False, eps=1e-6), torch.nn.Linear(d, num_classes))

    @property
    def out_features(self) -> int:
        return self[1].out_features


class GptPromptClassifier(torch.nn.Module):
    """``answer_ids``: the C answer tokens read through the LM head (fine-tune); None: probe, a new
    Linear(d_model, C) on the frozen encoder."""

    def __init__(self, gpt, num_classes: int, *, answer_ids: tuple[int, ...] | None, pool: Pool = "mean"):
        super().__init__()
        self.gpt, self.pool = gpt, pool
        probe = answer_ids is None
        if not probe:
            assert len(answer_ids) == num_classes
            self.register_buffer("answer_ids", torch.tensor(answer_ids), persistent=False)  # (C,)
        self.probe = LinearProbe(gpt.cfg.d_model, num_classes) if probe else None
        if probe:
            gpt.requires_grad_(False)

    def forward(
        self, input_ids: torch.Tensor, position: torch.Tensor, counts: torch.Tensor | None = None
    ) -> torch.Tensor:
        """input_ids (M, T) windows, position (M,); ``counts`` (B,): windows per example (None: one each)."""
        with torch.set_grad_enabled(
            self.probe is None and torch.is_grad_enabled()
        ):  # probe: no encoder graph
            hidden = self.gpt(input_ids)  # (M, T, D)
        at = hidden[torch.arange(len(position), device=hidden.device), position]  # (M, D)
        at = pool_windows(at, counts, self.pool)  # (B, D)
        if self.probe is not None:
            return self.probe(at).float()
        return self.gpt.lm_logits(at)[:, self.answer_ids].float()  # (B, V) -> (B, C)


class BertClsClassifier(torch.nn.Module):
    def __init__(self, bert, pad_id: int, *, num_classes: int, probe: bool, pool: Pool = "mean"):
        super().__init__()
        self.pool = pool
        if bert.classifier.out_features != num_classes:
            log.info(
                "DNABERT classifier has %d labels, the task %d: a new Linear(%d, %d) replaces it",
                bert.classifier.out_features,
                num_classes,
                bert.classifier.in_features,
                num_classes,
            )
            bert.classifier = torch.nn.Linear(bert.classifier.in_features, num_classes)
        self.bert = bert
        self.pad_id = pad_id
        self.frozen = probe
        self.probe = LinearProbe(bert.cfg.d_model, num_classes) if probe else None
        if probe:
            bert.requires_grad_(False)

    def forward(
        self, input_ids: torch.Tensor, position: torch.Tensor, counts: torch.Tensor | None = None
    ) -> torch.Tensor:
        """input_ids (M, T) windows; ``counts`` (B,): windows per example (None: one each)."""
        with torch.set_grad_enabled(not self.frozen and torch.is_grad_enabled()):
            hidden = self.bert(input_ids, input_ids != self.pad_id)  # (M, T, D)
        if self.probe is not None:
            return self.probe(pool_windows(hidden[:, 0], counts, self.pool)).float()  # (B, C) from [CLS]
        if counts is None or len(counts) == len(input_ids):
            return self.bert.classify(hidden).float()  # (B, C) from [CLS] at position 0
        # windows: pool the pooler's [CLS] vectors, then the classifier (bert.classify, split in two)
        cls = pool_windows(torch.tanh(self.bert.pooler(hidden[:, 0])), counts, self.pool)  # (B, D)
        return self.bert.classifier(self.bert.dropout(cls)).float()


def build_classifier(
    family: str, model, tok: Tokenizer, *, num_classes: int = 2, probe: bool, pool: Pool = "mean"
) -> torch.nn.Module:
    """A (B, C) classifier over ``model`` for ``num_classes`` = C >= 2 classes; ``pool``: how the windows of
    one long input are pooled (eval/long_inputs.py)."""
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    if family == "dnagpt":
        if num_classes > MAX_PROMPT_CLASSES and not probe:
            raise UsageError(
                f"{num_classes} classes: the DNAGPT prompt answers with the tokens <0>..<9>, so at most "
                f"{MAX_PROMPT_CLASSES} classes; use --set finetune.mode=probe (a new linear head) for more"
            )
        answers = None if probe else tuple(tok.token_to_id(f"<{c}>") for c in range(num_classes))
        return GptPromptClassifier(model, num_classes, answer_ids=answers, pool=pool)
    return BertClsClassifier(model, tok.pad_id, num_classes=num_classes, probe=probe, pool=pool)


def center_crop(sequences: list[str], family: str, k: int, max_len: int) -> list[str]:
    """Cut each sequence to the central bases that fit the context (2 special tokens): task sets centre
    their signal (a PAS hexamer, a TSS, an ATG), so the middle is what to keep."""
    fit = (max_len - 2) * k if family == "dnagpt" else max_len - 2 + k - 1
    out = []
    for s in sequences:
        if len(s) > fit:
            lo = (len(s) - fit) // 2
            s = s[lo : lo + fit]
        out.append(s)
    return out


def encode_inputs(
    family: str, tok: Tokenizer, sequences: list[str], *, species_token: str, max_len: int, crop: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """-> input_ids (N, T) padded with the tokenizer's pad id, position (N,) the index the head reads."""
    if crop:
        sequences = center_crop(sequences, family, tok.k, max_len)
    encoded = tok.encode_batch(sequences)
    if family == "dnagpt":
        head, ask = tok.token_to_id(f"<{species_token}>"), tok.token_to_id("<=>")
        rows = [np.concatenate([[head], ids, [ask]]) for ids in encoded]
        positions = np.array([len(r) - 1 for r in rows], dtype=np.int64)
    else:
        rows = [np.concatenate([[tok.cls_id], ids, [tok.sep_id]]) for ids in encoded]
        positions = np.zeros(len(rows), dtype=np.int64)
    longest = max(len(r) for r in rows)
    if longest > max_len:
        raise UsageError(
            f"a sequence needs {longest} tokens but the model's context is {max_len}: "
            "use --set finetune.crop=true (keeps the central bases), a longer-context model, "
            "or shorter sequences"
        )
    ids = np.full((len(rows), longest), tok.pad_id, dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    return ids, positions
