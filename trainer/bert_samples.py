"""DNABERT pretraining batches: [CLS] + k-mers + [SEP], padded, span-masked in the loader worker."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from datapipe.common.errors import UsageError
from datapipe.shards.format import Sample
from datapipe.tokenizers import Tokenizer
from trainer.masking import MaskingConfig, apply_replacement, span_mask

IGNORE = -100


@dataclass(kw_only=True)
class BertSampleBuilder:
    tokenizer: Tokenizer
    max_seq_len: int
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    ship_bases: bool = False
    """Ship bases, [CLS]/[SEP] and the replacements (``trainer.fused``) instead of input_ids."""
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
                raise UsageError(
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
        if self.ship_bases:
            return self._bases_batch(samples, rows, labels, masked_total, maskable_total)
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

    def _bases_batch(self, samples, rows, labels, masked_total, maskable_total) -> dict[str, torch.Tensor]:
        """The same batch in the fused layout: bases (B, L) uint8, num_bases, prefix [CLS], suffix [SEP],
        replace_ids (B, T) = the masked inputs where they differ from the k-mer at that position (-1
        elsewhere; T = the op's output length), mlm_labels (B, T). The attention mask is not shipped: it
        is ``ids != [PAD]`` of the op's ids (no row holds [PAD] before its end)."""
        tok = self.tokenizer
        bases, num_bases = (torch.from_numpy(x) for x in tok.to_bases_batch([s.ids for s in samples]))
        b = len(samples)
        t = 2 + max(bases.shape[1] - tok.k + 1, 0)  # the op's T_out: [CLS] + L - k + 1 k-mers + [SEP]
        replace = np.full((b, t), -1, dtype=np.int64)
        mlm_labels = np.full((b, t), IGNORE, dtype=np.int64)
        for i, (s, r, lab) in enumerate(zip(samples, rows, labels, strict=True)):
            n = len(s.ids)
            changed = np.flatnonzero(r[1 : n + 1] != s.ids) + 1  # positions 1..n hold the k-mers
            replace[i, changed] = r[changed]
            mlm_labels[i, : len(lab)] = lab
        col = lambda v: torch.full((b, 1), v, dtype=torch.int64)  # noqa: E731
        return {
            "bases": bases,
            "num_bases": num_bases,
            "prefix_ids": col(tok.cls_id),
            "suffix_ids": col(tok.sep_id),
            "replace_ids": torch.from_numpy(replace),
            "mlm_labels": torch.from_numpy(mlm_labels),
            "num_tokens": torch.tensor(int(sum(len(r) for r in rows))),
            "num_masked": torch.tensor(masked_total),
            "num_maskable": torch.tensor(maskable_total),
        }
