"""The DNAGPT pretraining sample: all three objectives in one sequence of the released token language.

Template (T = n + 4 tokens for a window of n k-mer tokens)::

    position  0      1 .. n          n+1    n+2        n+3
    token     <sp>   k_1 .. k_n      <=>    <0>|<1>    <M>
              species  k-mers        ask    order      GC output slot
                       (reversed                answer
                        with p=0.5)

- next-token loss: positions 0..n-1 predict k_1..k_n (template tokens are not LM targets);
- order loss: the hidden state at ``<=>`` predicts the answer token, ``<0>`` = forward,
  ``<1>`` = reversed; as in the released classification prompt, the answer is the token after
  ``<=>``;
- GC loss: the regression head reads the hidden state at the final ``<M>`` (an output number
  slot) and is trained against the window's GC content with MSE.

"Reversed" reverses the order of the k-mer tokens, not the bases inside each k-mer: the two
orientations then have identical k-mer composition, so the order task cannot be solved from
composition alone and the model must read order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from datapipe.common.errors import UsageError
from datapipe.shards.format import Sample
from datapipe.tokenizers import Tokenizer

IGNORE = -100  # torch cross_entropy's ignore_index
TEMPLATE_TOKENS = 4


@dataclass(kw_only=True)
class GptSampleBuilder:
    """Turns shard samples into padded training batches; runs inside loader worker processes."""

    tokenizer: Tokenizer
    max_seq_len: int
    reverse_prob: float = 0.5
    ship_bases: bool = False
    """Ship bases and the template tokens beside them (``trainer.fused``) instead of input_ids."""

    def __post_init__(self) -> None:
        tok = self.tokenizer
        self.pad = tok.pad_id
        self.ask = tok.token_to_id("<=>")
        self.slot = tok.token_to_id("<M>")
        self.answer = (tok.token_to_id("<0>"), tok.token_to_id("<1>"))

    def _check_length(self, sample: Sample) -> None:
        if len(sample.ids) + TEMPLATE_TOKENS > self.max_seq_len:
            raise UsageError(
                f"sample {sample.key} has {len(sample.ids)} k-mer tokens; with the {TEMPLATE_TOKENS} template "
                f"tokens it exceeds max_seq_len={self.max_seq_len}: prepare with --window-tokens "
                f"{self.max_seq_len - TEMPLATE_TOKENS} or less"
            )

    def encode(self, sample: Sample, reverse: bool) -> np.ndarray:
        self._check_length(sample)
        kmers = sample.ids.astype(np.int64)
        if reverse:
            kmers = kmers[::-1]
        species = self.tokenizer.token_to_id(f"<{sample.meta['token']}>")
        return np.concatenate([[species], kmers, [self.ask, self.answer[int(reverse)], self.slot]])

    def __call__(self, samples: list[Sample], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Batch of B samples -> input_ids (B, T_max) padded with <P>, n_kmers (B,), gc (B,).

        The targets are not built here: they follow from input_ids and n_kmers (``gpt_targets``, on the
        training device), so only the ids cross from the loader workers (the per-position target tensors
        would quadruple the bytes on the wire, which bounds the loader's throughput).
        """
        reverse = rng.random(len(samples)) < self.reverse_prob
        if self.ship_bases:
            return self._bases_batch(samples, reverse)
        seqs = [self.encode(s, bool(r)) for s, r in zip(samples, reverse, strict=True)]
        b, t = len(seqs), max(len(s) for s in seqs)
        input_ids = np.full((b, t), self.pad, dtype=np.int64)
        for i, seq in enumerate(seqs):
            input_ids[i, : len(seq)] = seq
        return {
            "input_ids": torch.from_numpy(input_ids),
            "n_kmers": torch.tensor([len(s) - TEMPLATE_TOKENS for s in seqs], dtype=torch.int64),
            "gc": torch.tensor([float(s.meta["gc"]) for s in samples], dtype=torch.float32),
            "num_tokens": torch.tensor(int(sum(len(s) for s in seqs))),
        }

    def _bases_batch(self, samples: list[Sample], reverse: np.ndarray) -> dict[str, torch.Tensor]:
        """The same batch in the fused layout: bases (B, L) uint8, num_bases, reverse, prefix_ids (B, 1)
        = <sp>, suffix_ids (B, 3) = <=> <0|1> <M>, plus n_kmers, gc, num_tokens as above."""
        for s in samples:
            self._check_length(s)
        bases, num_bases = (
            torch.from_numpy(x) for x in self.tokenizer.to_bases_batch([s.ids for s in samples])
        )
        species = [self.tokenizer.token_to_id(f"<{s.meta['token']}>") for s in samples]
        answer = np.asarray(self.answer)[reverse.astype(np.int64)]
        n_kmers = [len(s.ids) for s in samples]
        return {
            "bases": bases,
            "num_bases": num_bases,
            "reverse": torch.from_numpy(reverse),
            "prefix_ids": torch.tensor(species, dtype=torch.int64)[:, None],
            "suffix_ids": torch.from_numpy(
                np.stack([np.full(len(samples), self.ask), answer, np.full(len(samples), self.slot)], 1)
            ).long(),
            "n_kmers": torch.tensor(n_kmers, dtype=torch.int64),
            "gc": torch.tensor([float(s.meta["gc"]) for s in samples], dtype=torch.float32),
            "num_tokens": torch.tensor(int(sum(n_kmers)) + TEMPLATE_TOKENS * len(samples)),
        }


def gpt_targets(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-position targets of a GptSampleBuilder batch, all (B, T), built with a few vectorised ops.

    lm_targets: the next token at positions 0..n-1 (the k-mers), IGNORE elsewhere; order_targets: the answer
    token at the ``<=>`` position n+1; gc_mask / gc_targets: the ``<M>`` output slot at n+3 and the GC there.
    """
    ids, n = batch["input_ids"], batch["n_kmers"][:, None]  # (B, T), (B, 1)
    pos = torch.arange(ids.shape[1], device=ids.device)[None]  # (1, T)
    nxt = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], IGNORE)], dim=1)  # token at t+1
    gc_mask = pos == n + 3
    return {
        "lm_targets": torch.where(pos < n, nxt, IGNORE),
        "order_targets": torch.where(pos == n + 1, nxt, IGNORE),
        "gc_mask": gc_mask,
        "gc_targets": gc_mask * batch["gc"][:, None],
    }


def render(tokenizer: Tokenizer, ids: np.ndarray) -> list[str]:
    """Token texts of a sample, for the README's worked example and for debugging."""
    return [tokenizer.vocab[int(i)] for i in ids]
