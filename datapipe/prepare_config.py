"""The prepare recipe (:class:`PrepareConfig`) and its inputs (:class:`InputSpec`).

Kept apart from ``prepare.py`` so that the Ray task bodies (``units.py``, ``windows.py``) can build
their window recipe without importing the driver.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from datapipe.common.config import Config, check
from datapipe.common.errors import UsageError
from datapipe.species import UNSPECIFIED, species_token
from datapipe.tokenizers import TOKENIZER_NAMES, get_tokenizer

# Fields that may differ between a run and its resume, and never change a byte of output.
RUNTIME_FIELDS = frozenset({"num_workers", "ray_address", "fsync"})


@dataclass(kw_only=True)
class PrepareConfig(Config):
    tokenizer: str = "dnagpt-6mer"
    """Tokenizer name from the registry (datapipe.tokenizers.TOKENIZER_NAMES)."""
    window_tokens: int = 508
    """DNAGPT: k-mer tokens per window (4 template tokens are added: 508 fills a 512-token context).
    DNABERT: the longest piece in tokens (510 with [CLS] and [SEP] fills 512)."""
    min_window_tokens: int = 16
    """DNAGPT: a record's last, shorter window is kept only with at least this many tokens.
    DNABERT: the shortest random piece (DNABERT: 5)."""
    max_n_frac: float = 0.05
    """Windows with a larger fraction of N are dropped (DNAGPT: 5%)."""
    full_length_frac: float = 0.5
    """DNABERT only: fraction of pieces at full length; the others have a uniform random length in
    [min_window_tokens, window_tokens] tokens (DNABERT: half and half)."""
    reverse_complement: bool = False
    """Also write the reverse complement of every kept window (strand '-' in its metadata)."""
    soft_mask: Literal["upper", "mask"] = "upper"
    """'upper': lower-case (soft-masked) bases are upper-cased; 'mask': also store a per-base mask."""
    region_bp: int = 8_000_000
    """Approximate bases per work unit. Plain-text inputs are cut every region_bp bytes, gzip and
    bgzip ones every region_bp / 4 compressed bytes (DNA text gzips ~4x). A task holds about
    10 bytes per base of its unit in memory, whatever the genome size. Each unit also costs ~15 ms of
    CPU (two Ray tasks, the object-store hand-over, its shard files; measured from 1, 2 and 4 Mb units
    on GRCh37 chr20), ~10% of an 8 Mb unit's work; larger units balance worse over few workers."""
    shard_max_samples: int = 1024
    """Samples per shard at most (each work unit writes its own shards)."""
    seed: int = 0
    """Seeds DNABERT's random piece lengths (DNAGPT windows are a fixed grid)."""
    num_workers: int = 2
    """Ray tasks in flight (and CPUs of the local Ray instance when no address is given)."""
    ray_address: str | None = None
    """Address of an existing Ray cluster; a local instance is started when None."""
    fsync: bool = True
    """fsync each shard before its unit is marked done (~3 ms per shard), so a machine crash never
    leaves a unit marked done whose shards were lost."""

    def __post_init__(self) -> None:
        check(self.tokenizer in TOKENIZER_NAMES, "tokenizer", f"must be one of {', '.join(TOKENIZER_NAMES)}")
        check(self.window_tokens >= 1, "window_tokens", "must be >= 1")
        check(
            1 <= self.min_window_tokens <= self.window_tokens,
            "min_window_tokens",
            "must be between 1 and window_tokens",
        )
        check(self.window_bp() <= 60_000, "window_tokens", "windows are limited to 60,000 bases")
        check(0.0 <= self.max_n_frac <= 1.0, "max_n_frac", "must be a fraction in [0, 1]")
        check(0.0 <= self.full_length_frac <= 1.0, "full_length_frac", "must be a fraction in [0, 1]")
        check(self.shard_max_samples >= 1, "shard_max_samples", "must be >= 1")
        check(self.num_workers >= 1, "num_workers", "must be >= 1")
        check(self.region_bp >= 4096, "region_bp", "must be >= 4096 (bases per work unit)")

    @property
    def family(self) -> str:
        return get_tokenizer(self.tokenizer).family

    def window_bp(self) -> int:
        return self.tokens_to_bp(self.window_tokens)

    def min_window_bp(self) -> int:
        return self.tokens_to_bp(self.min_window_tokens)

    def tokens_to_bp(self, tokens: int) -> int:
        tok = get_tokenizer(self.tokenizer)
        return tokens * tok.k if tok.family == "dnagpt" else tokens + tok.k - 1

    def output_dict(self) -> dict[str, Any]:
        """The fields that decide the output bytes (no runtime fields): what the manifest records."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}


@dataclass(kw_only=True)
class InputSpec:
    """One input file (path or fsspec URL) and what it holds.

    FASTA: ``species`` (a DNAGPT species name, or any name with an explicit ``token``) applies to
    every record. MAF: ``sources`` maps each alignment source prefix (``Hsap`` of ``Hsap.chr22``)
    to ``[species, token]``; a prefix missing from it stops the run with an error.
    """

    path: str
    species: str = ""
    token: str = field(default="")
    assembly: str = field(default="")
    sources: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.path = os.fspath(self.path)
        if self.token or (self.species and self.species != UNSPECIFIED):
            self.token = species_token(self.token or self.species)
        if not self.species and not self.sources and not _is_maf_name(self.path):
            raise UsageError(
                f"input {self.path}: no species given; pass --species (or a --species-table line)"
            )
        self.assembly = self.assembly or assembly_name(self.path)
        self.sources = {
            k: [v[0], species_token(v[1] if len(v) > 1 and v[1] else v[0])] for k, v in self.sources.items()
        }


def assembly_name(path: str) -> str:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    for ext in (".gz", ".bgz", ".fa", ".fasta", ".fna", ".maf"):
        name = name.removesuffix(ext)
    return name


def _is_maf_name(path: str) -> bool:
    return any(path.lower().endswith(e) for e in (".maf", ".maf.gz", ".maf.bgz"))
