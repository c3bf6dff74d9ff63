"""The fused input path of pretraining (``model.embedding = "fused"``): raw bases in, embeddings out.

The loader's batch builders ship, instead of ``input_ids``, the bases of each sample and the reserved
tokens around them, in the sample layout of ``kernels.kmer_embedding`` (its module docstring)::

    bases       (B, L) uint8     each row's bases, left-aligned; bytes past num_bases are ignored
    num_bases   (B,)   int64     bases of each row
    reverse     (B,)   bool      DNAGPT order task: the row's k-mers are embedded last first
    prefix_ids  (B, P) int64     DNAGPT: <species>; DNABERT: [CLS]
    suffix_ids  (B, S) int64     DNAGPT: <=> <0|1> <M>; DNABERT: [SEP]
    replace_ids (B, T) int64     DNABERT: [MASK] / random k-mer at masked positions, -1 elsewhere

The op returns the embeddings and the ids it embedded, which equal the id path's ``input_ids`` exactly
(the targets are then built from them as before), so both paths train the same model on the same data.
Shards hold ids (2 bytes per 6-mer, a third of the bases' size), so the builders turn them back into
bases with ``Tokenizer.to_bases_batch`` in the loader workers (DNAGPT: one gather per micro-batch; DNABERT:
one per sample, ~14 us for a 515-base piece on one core of the 2-core dev box).
"""

from __future__ import annotations

import torch

import kernels

BASES_KEYS = ("bases", "num_bases", "reverse", "prefix_ids", "suffix_ids", "replace_ids")


def embed_bases(
    batch: dict[str, torch.Tensor], weight: torch.Tensor, tokenizer: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (token embeddings (B, T, D), the ids embedded (B, T) int64) for a fused-path batch.

    The backward is deterministic (sorted, two-pass) when torch's deterministic mode is on, as
    ``F.embedding``'s is; otherwise the Triton kernel accumulates with atomic adds."""
    if "bases" not in batch:
        raise ValueError(
            "model.embedding is 'fused' but the batch holds token ids, not bases: build the loader with "
            "the same config (trainer.families picks the batch builder from model.embedding)"
        )
    return kernels.kmer_embedding(
        batch["bases"],
        weight,
        tokenizer=tokenizer,
        num_bases=batch["num_bases"],
        reverse=batch.get("reverse"),
        prefix_ids=batch.get("prefix_ids"),
        suffix_ids=batch.get("suffix_ids"),
        replace_ids=batch.get("replace_ids"),
        deterministic=torch.are_deterministic_algorithms_enabled(),
        return_ids=True,
    )
