"""Synthetic corpora of a chosen size for the scale benchmark and the resume drill: copies of public genomes.

A corpus of ~N bp is built from three public genomes of the data collection (GRCh37 chr20, P. falciparum
3D7, E. coli K-12), 70 / 20 / 10% of the bases, each copied as often as needed. Every copy's records get
names of their own (``20_c00007``), the copies are split into bgzip files of at most ~1 Gbp, and each
file gets a species label in rotation over the DNAGPT species tokens. The labels do not match the
genomes and the copies repeat the same sequence: the corpus measures cost (bytes, files, records,
units, shards), not biology.

Writing is cheap whatever the size: each record's sequence is BGZF-compressed once, and a copy is a
freshly compressed header block followed by those blocks, byte for byte (BGZF blocks are independent
gzip members), so a 10 Gbp corpus (~3 GB) is written at disk speed.
"""

from __future__ import annotations

import gzip
import shutil
from dataclasses import dataclass
from pathlib import Path

from datapipe.io import bgzf_compress

# (file in <data root>/genomes, share of the corpus's bases)
GENOMES = (
    ("GRCh37_chr20.fa.gz", 0.7),
    ("Pfalciparum_genome_MAL1-14.fa.gz", 0.2),
    ("Ecoli_K12_MG1655.fasta.gz", 0.1),
)
SPECIES = ("human", "mouse", "bovine", "zebrafish", "fruitfly", "ecoli", "arabidopsis", "celegans", "yeast")
FILE_BP = 1_000_000_000  # at most ~this many bases per corpus file
EOF_BLOCK = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")
NOTE = (
    "synthetic corpus: copies of GRCh37 chr20, P. falciparum and E. coli under distinct record names, "
    "species labels assigned in rotation (not the genomes' own); it measures cost, not biology"
)


@dataclass
class Template:
    """One genome, ready to copy: per record its name and its sequence lines as BGZF blocks (no EOF)."""

    name: str
    bases: int
    records: list[tuple[str, bytes]]


@dataclass
class Corpus:
    files: list[Path]
    species: list[str]
    bases: int
    records: int
    bytes: int


def load_template(path: Path) -> Template:
    """Read a genome (gzip or bgzip FASTA) and compress each record's lines once."""
    text = gzip.decompress(path.read_bytes())
    records, bases = [], 0
    for part in text.split(b"\n>"):
        head, _, body = part.lstrip(b">").partition(b"\n")
        name = head.split()[0].decode()
        bases += len(body) - body.count(b"\n")
        records.append(
            (name, bgzf_compress(body if body.endswith(b"\n") else body + b"\n")[: -len(EOF_BLOCK)])
        )
    return Template(name=path.name, bases=bases, records=records)


def plan(target_bp: int, templates: list[Template]) -> list[tuple[Template, range]]:
    """(genome, copy numbers) of each file of a corpus of ~``target_bp`` bases."""
    out = []
    for template, (_, share) in zip(templates, GENOMES, strict=True):
        copies = max(1, round(share * target_bp / template.bases))
        per_file = max(1, FILE_BP // template.bases)
        for lo in range(0, copies, per_file):
            out.append((template, range(lo, min(copies, lo + per_file))))
    return out


def build_corpus(target_bp: int, folder: Path, data_root: Path) -> Corpus:
    """Write the corpus files into ``folder`` (created); returns them with their species labels."""
    folder.mkdir(parents=True, exist_ok=True)
    templates = [load_template(data_root / "genomes" / name) for name, _ in GENOMES]
    files, species, bases, records = [], [], 0, 0
    for j, (template, copies) in enumerate(plan(target_bp, templates)):
        stem = template.name.split(".")[0]
        path = folder / f"{j:02d}-{stem}-c{copies.start:05d}-{copies.stop - 1:05d}.fa.gz"
        with open(path, "wb") as f:
            for k in copies:
                for name, blocks in template.records:
                    header = f">{name}_c{k:05d} copy {k} of {name} (scale benchmark)\n".encode()
                    f.write(bgzf_compress(header)[: -len(EOF_BLOCK)])
                    f.write(blocks)
            f.write(EOF_BLOCK)
        files.append(path)
        species.append(SPECIES[j % len(SPECIES)])
        bases += template.bases * len(copies)
        records += len(template.records) * len(copies)
    return Corpus(
        files=files, species=species, bases=bases, records=records, bytes=sum(p.stat().st_size for p in files)
    )


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
