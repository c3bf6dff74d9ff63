"""Small builders shared by test modules (not fixtures: each module decides its own scope)."""

from __future__ import annotations

import gzip
from pathlib import Path

from datapipe.fasta import read_fasta

REPO = Path(__file__).resolve().parents[1]


def chr20_shards(
    out: Path,
    *,
    bases: int = 400_000,
    window_tokens: int = 60,
    shard_max_samples: int = 32,
    tokenizer: str = "dnagpt-6mer",
) -> Path:
    """Shards of the first ``bases`` of the shipped human chr20 slice, made by the real `prepare` (the Ray
    instance it starts in this process is reused by the rest of the test session)."""
    from datapipe.prepare import InputSpec, PrepareConfig, run_prepare

    out.mkdir(parents=True, exist_ok=True)
    seq = next(read_fasta(REPO / "data/genomes/grch37_chr20_44-46Mb.fa.gz")).seq[:bases].tobytes()
    fasta = out / "chr20_slice.fa.gz"
    with gzip.open(fasta, "wb") as f:
        f.write(b">20 slice\n" + b"\n".join(seq[i : i + 80] for i in range(0, len(seq), 80)) + b"\n")
    cfg = PrepareConfig(
        window_tokens=window_tokens, shard_max_samples=shard_max_samples, tokenizer=tokenizer, num_workers=2
    )
    run_prepare([InputSpec(path=str(fasta), species="human")], out / "data", cfg)
    return out / "data"
