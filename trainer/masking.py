"""DNABERT span masking over overlapping k-mers, done on the fly in the loader workers.

With overlapping k-mers (stride 1) a single masked token leaks: its k bases are all visible in its
neighbours. DNABERT therefore masks contiguous spans: it picks centres and masks every k-mer that covers
the same base. We pick centre *bases*: base m is covered by tokens m-k+1 .. m, and masking all of them
(k tokens; for k = 6 these are offsets -2..+3 around token m-3, as in DNABERT) leaves no unmasked token
that shows base m. Each base is a centre with probability rate / k, so about ``rate`` of the tokens are
masked (0.025 x 6 = 15% for k = 6; overlapping spans make it slightly less).

Of the masked positions, 80% become [MASK], 10% a random k-mer, 10% stay unchanged (BERT's rule).
Everything is drawn from the generator the caller passes, so a batch is a function of (seed, batch index).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datapipe.common.config import Config, check


@dataclass(kw_only=True)
class MaskingConfig(Config):
    mask_rate: float = 0.15
    """Expected fraction of k-mer tokens masked."""
    late_mask_rate: float = 0.20
    """Rate used from ``late_after_batches`` on (DNABERT raised 15% to 20% for its last 20k steps)."""
    late_after_batches: int = 0
    """Micro-batches (per rank) after which ``late_mask_rate`` applies; 0 = never."""
    mask_token_prob: float = 0.8
    random_token_prob: float = 0.1
    """The rest of the masked positions keep their token."""

    def __post_init__(self) -> None:
        check(0 < self.mask_rate < 1, "mask_rate", "must be in (0, 1)")
        check(0 < self.late_mask_rate < 1, "late_mask_rate", "must be in (0, 1)")
        check(self.late_after_batches >= 0, "late_after_batches", "must be >= 0")
        check(
            0 <= self.mask_token_prob
            and 0 <= self.random_token_prob
            and self.mask_token_prob + self.random_token_prob <= 1,
            "mask_token_prob",
            "mask_token_prob + random_token_prob must be <= 1",
        )

    def rate_at(self, batch_index: int) -> float:
        if self.late_after_batches and batch_index >= self.late_after_batches:
            return self.late_mask_rate
        return self.mask_rate


def span_mask(
    n_tokens: int, *, k: int, rate: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """-> (masked (n_tokens,) bool, centres (n_tokens + k - 1,) bool over bases)."""
    n_bases = n_tokens + k - 1
    if n_tokens <= 0:
        return np.zeros(0, dtype=bool), np.zeros(max(n_bases, 0), dtype=bool)
    centres = rng.random(n_bases) < rate / k
    # Token i covers bases i .. i+k-1: it is masked if any of them is a centre (prefix sums: O(n)).
    cs = np.concatenate([[0], np.cumsum(centres)])
    masked = (cs[k : k + n_tokens] - cs[:n_tokens]) > 0
    return masked, centres


def apply_replacement(
    ids: np.ndarray,
    masked: np.ndarray,
    *,
    cfg: MaskingConfig,
    mask_id: int,
    kmer_ids: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Copy of ``ids`` with masked positions replaced by [MASK] / a random k-mer / left as they are."""
    out = ids.copy()
    idx = np.flatnonzero(masked)
    u = rng.random(len(idx))
    to_mask = idx[u < cfg.mask_token_prob]
    to_random = idx[(u >= cfg.mask_token_prob) & (u < cfg.mask_token_prob + cfg.random_token_prob)]
    out[to_mask] = mask_id
    out[to_random] = rng.choice(kmer_ids, size=len(to_random))
    return out
