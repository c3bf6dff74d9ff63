"""Fuzzing the MAF reader as `prepare` runs it: ChunkReader pieces into MafStream, from the file's start and
from a chunk boundary (how a parallel task enters the file), plain, gzip and bgzip."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from datapipe.io import ChunkReader, sniff
from datapipe.maf import MafStream, split_source
from tests.fuzz import fuzz, mutated, outcome, packed, write

MAF = [
    b"##maf version=1 scoring=tba.v8\n# tba.v8 (((human chimp) baboon) (mouse rat))\n\n"
    b"a score=23262.0\n"
    b"s hg19.chr22     1000 13 + 51304566 GTAAACTAAGTga\n"
    b"s panTro4.chr22  1010 13 - 50000000 GTAA-CTAAGTgaG\n"[:-2]
    + b"\n"
    b"i panTro4.chr22 C 0 C 0\n"
    b"q panTro4.chr22 99999-9999999\n\n"
    b"a score=5\ns hg19.chr22 2000 6 + 51304566 ACGTNN\ne mm10.chr1 100 50 + 1000 I\n\n",
]


def _blocks(path: Path, first: int = 0):
    stream = MafStream(str(path), keep_mask=True, first_chunk=first, at_file_start=first == 0)
    out = []
    file = sniff(str(path))
    reader = ChunkReader(file, 64)
    if not file.splittable:
        first = 0
    for chunk, piece in reader.pieces(first):
        out += [
            (c, [(r.src, r.start, r.size, r.strand, bytes(r.bases)) for r in rows])
            for c, rows in stream.feed(chunk, piece)
        ]
    out += [(c, [(r.src, r.start, r.size) for r in rows]) for c, rows in stream.finish()]
    for _, rows in out:
        for row in rows:
            split_source(row[0])
    return out


@fuzz(2)
@given(data=mutated(MAF), pack=st.data(), first=st.integers(0, 3))
def test_maf(data: bytes, pack, first: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), "aln.maf", pack.draw(packed(data)))
        outcome("maf", lambda p: _blocks(p, first), path)
