"""Small builders shared by test modules (not fixtures: each module decides its own scope)."""

from __future__ import annotations

import json
from pathlib import Path

from datapipe.fasta import read_fasta
from datapipe.prepare import PrepareConfig, process_unit
from datapipe.shards import FORMAT_VERSION

REPO = Path(__file__).resolve().parents[1]


def chr20_shards(
    out: Path, *, bases: int = 400_000, window_tokens: int = 60, shard_max_samples: int = 32
) -> Path:
    """Shards of the shipped human chr20 slice, written by prepare's unit task directly (no Ray: Ray is tested
    in the prepare tests; this keeps trainer tests quick)."""
    (out / "shards").mkdir(parents=True)
    (out / "units").mkdir()
    cfg = PrepareConfig(window_tokens=window_tokens, shard_max_samples=shard_max_samples)
    seq = next(read_fasta(REPO / "data/genomes/grch37_chr20_44-46Mb.fa.gz")).seq[:bases]
    shards = []
    step = 100_000
    for u, lo in enumerate(range(0, len(seq), step)):
        unit = {
            "id": u,
            "path": "chr20",
            "species": "human",
            "token": "R",
            "assembly": "GRCh37",
            "record": "20",
            "start": lo,
            "end": lo + step,
        }
        shards += process_unit(unit, seq[lo : lo + step], None, cfg.to_dict(), str(out))["shards"]
    manifest = {
        "format_version": FORMAT_VERSION,
        "tokenizer": cfg.tokenizer,
        "config": cfg.to_dict(),
        "shards": shards,
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out
