"""Classifiers built on a pretrained model, one per family, each with a fine-tune and a probe variant.

Every classifier maps (input_ids (B, T), position (B,)) -> (B, 2) logits; ``position`` is the index the
head reads (the ``<=>`` slot for DNAGPT, 0 = [CLS] for DNABERT), and padding is ``pad_id``.

- DNAGPT, fine-tune: the released models' prompt, ``<sp> + k-mers + <=>``, answer read at ``<=>`` as the
  logits of the tokens ``<0>`` / ``<1>`` through the (tied) LM head: no new parameters.
- DNAGPT, probe: the encoder is frozen; a new linear layer reads the hidden state at ``<=>``.
- DNABERT: ``[CLS] + k-mers + [SEP]``; the model's pooler + classifier read [CLS]; probe freezes the encoder
  and trains only those two layers.
"""

from __future__ import annotations

import numpy as np
import torch

from datapipe.tokenizers import Tokenizer


class GptPromptClassifier(torch.nn.Module):
    def __init__(self, gpt, answer_ids: tuple[int, int], *, probe: bool):
        super().__init__()
        self.gpt = gpt
        self.register_buffer("answer_ids", torch.tensor(answer_ids), persistent=False)
        self.probe = torch.nn.Linear(gpt.cfg.d_model, 2) if probe else None
        if probe:
            gpt.requires_grad_(False)

    def forward(self, input_ids: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(
            self.probe is None and torch.is_grad_enabled()
        ):  # probe: no encoder graph
            hidden = self.gpt(input_ids)  # (B, T, D)
        at = hidden[torch.arange(len(position), device=hidden.device), position]  # (B, D)
        if self.probe is not None:
            return self.probe(at).float()
        return self.gpt.lm_logits(at)[:, self.answer_ids].float()


class BertClsClassifier(torch.nn.Module):
    def __init__(self, bert, pad_id: int, *, probe: bool):
        super().__init__()
        self.bert = bert
        self.pad_id = pad_id
        self.frozen = probe
        if probe:
            bert.requires_grad_(False)
            bert.pooler.requires_grad_(True)
            bert.classifier.requires_grad_(True)

    def forward(self, input_ids: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(not self.frozen and torch.is_grad_enabled()):
            hidden = self.bert(input_ids, input_ids != self.pad_id)
        return self.bert.classify(hidden).float()  # [CLS] at position 0


def build_classifier(family: str, model, tok: Tokenizer, *, probe: bool) -> torch.nn.Module:
    if family == "dnagpt":
        return GptPromptClassifier(model, (tok.token_to_id("<0>"), tok.token_to_id("<1>")), probe=probe)
    return BertClsClassifier(model, tok.pad_id, probe=probe)


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
        raise ValueError(
            f"a sequence needs {longest} tokens but the model's context is {max_len}: "
            "use --set finetune.crop=true (keeps the central bases), a longer-context model, "
            "or shorter sequences"
        )
    ids = np.full((len(rows), longest), tok.pad_id, dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    return ids, positions
