"""DNABERT pretraining batches: [CLS] + k-mers + [SEP], padded, span-masked in the loader worker."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from datapipe.masking import MaskingConfig, apply_replacement, span_mask
from datapipe.shards import Sample
from datapipe.tokenizers import Tokenizer

IGNORE = -100


@dataclass(kw_only=True)
class BertSampleBuilder:
    tokenizer: Tokenizer
    max_seq_len: int
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    wants_batch_index = (
        True  # class attribute, not a field: the loader passes batch_index for the rate schedule
    )

    def __call__(
        self, samples: list[Sample], rng: np.random.Generator, batch_index: int = 0
    ) -> dict[str, torch.Tensor]:
        """B samples -> (B, T_max) tensors; T_max = longest piece + 2 ([CLS], [SEP])."""
        tok = self.tokenizer
        rate = self.masking.rate_at(batch_index)
        rows, labels = [], []
        masked_total = maskable_total = 0
        for s in samples:
            ids = s.ids.astype(np.int64)
            if len(ids) + 2 > self.max_seq_len:
                raise ValueError(
                    f"sample {s.key} has {len(ids)} k-mers; with [CLS] and [SEP] it exceeds "
                    f"max_seq_len={self.max_seq_len}: prepare shorter pieces"
                )
            masked, _ = span_mask(len(ids), k=tok.k, rate=rate, rng=rng)
            inputs = apply_replacement(
                ids, masked, cfg=self.masking, mask_id=tok.mask_id, kmer_ids=tok.kmer_ids, rng=rng
            )
            rows.append(np.concatenate([[tok.cls_id], inputs, [tok.sep_id]]))
            labels.append(np.concatenate([[IGNORE], np.where(masked, ids, IGNORE), [IGNORE]]))
            masked_total += int(masked.sum())
            maskable_total += len(ids)
        b, t = len(rows), max(len(r) for r in rows)
        input_ids = np.full((b, t), tok.pad_id, dtype=np.int64)
        mlm_labels = np.full((b, t), IGNORE, dtype=np.int64)
        attention = np.zeros((b, t), dtype=bool)
        for i, (r, lab) in enumerate(zip(rows, labels, strict=True)):
            input_ids[i, : len(r)] = r
            mlm_labels[i, : len(lab)] = lab
            attention[i, : len(r)] = True
        return {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention),
            "mlm_labels": torch.from_numpy(mlm_labels),
            "num_tokens": torch.tensor(int(attention.sum())),
            "num_masked": torch.tensor(masked_total),
            "num_maskable": torch.tensor(maskable_total),
        }
