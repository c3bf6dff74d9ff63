"""Fuzzing the FASTA readers: datapipe.fasta (read_fasta, fasta_summary) and the prepare path's streaming
reader (ChunkReader + FastaStream), on plain, gzip, bgzip and damaged compressed input."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from datapipe.fasta import fasta_summary, read_fasta
from datapipe.fasta_chunks import FastaStream
from datapipe.io import ChunkReader, sniff
from tests.fuzz import REPO, fuzz, mutated, outcome, packed, seed_lines, write

SEEDS = [
    seed_lines(REPO / "data/genomes/ecoli_k12_mg1655.fa.gz", 12),
    seed_lines(REPO / "data/genomes/grch37_chr20_44-46Mb.fa.gz", 8),
    seed_lines(REPO / "data/pas/hs_ATTAAA_pos.fa.gz", 12),
    b">a desc\nACGTNacgtn\nRYKM\n>b\nUUUU\n\n>c x y\nA\n",
]


def _records(path: Path) -> list[tuple[str, bytes]]:
    return [(r.name, r.seq.tobytes()) for r in read_fasta(path, block_size=4096)]


def _masked(path: Path) -> list[tuple[str, bytes, bytes]]:
    return [(r.name, r.seq.tobytes(), r.mask.tobytes()) for r in read_fasta(path, soft_mask="mask")]


def _stream(path: Path) -> list[tuple[str, bytes]]:
    """What `prepare` reads from a FASTA (pieces of 1 KiB so records and lines cross pieces)."""
    stream = FastaStream(str(path), keep_mask=False)
    out: list[tuple[str, bytes]] = []

    def take(events):
        for event in events:
            if event[0] == "record":
                out.append((event[2], b""))
            else:
                out[-1] = (out[-1][0], out[-1][1] + bytes(event[1]))

    for _, piece in ChunkReader(sniff(str(path)), 1024).pieces(0):
        take(stream.feed(piece))
    take(stream.finish())
    return out


@st.composite
def fasta_inputs(draw) -> bytes:
    return draw(packed(draw(mutated(SEEDS))))


@fuzz(2)
@given(data=fasta_inputs())
def test_read_fasta_any_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), "in.fa", data)
        outcome("fasta.read_fasta", _records, path)
        outcome("fasta.read_fasta(mask)", _masked, path)
        outcome("fasta.fasta_summary", fasta_summary, path)


@fuzz()
@given(data=fasta_inputs())
def test_prepare_stream_any_bytes(data: bytes) -> None:
    """Where both the prepare path and read_fasta accept a file, they return the same records."""
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), "in.fa", data)
        streamed = outcome("fasta.prepare_stream", _stream, path)
        records = outcome("fasta.read_fasta", _records, path)
        if streamed is not None and records is not None:
            assert streamed == records


# ----------------------------------------------------------------------------- same content, same result

_NAME = st.text(
    st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=">"), min_size=1, max_size=8
)


@st.composite
def clean_fasta(draw) -> tuple[bytes, list[tuple[str, bytes]]]:
    """A valid FASTA text and its records as read_fasta must return them."""
    records = draw(
        st.lists(st.tuples(_NAME, st.binary(min_size=1, max_size=300).map(_bases)), min_size=1, max_size=5)
    )
    width = draw(st.integers(1, 80))
    text = b"".join(
        b">" + name.encode() + b"\n" + b"".join(seq[i : i + width] + b"\n" for i in range(0, len(seq), width))
        for name, seq in records
    )
    return text, [(name, seq.upper()) for name, seq in records]


def _bases(raw: bytes) -> bytes:
    return bytes(b"ACGTNacgtn"[c % 10] for c in raw)


@fuzz()
@given(clean=clean_fasta(), crlf=st.booleans(), blank=st.booleans(), pack=st.data())
def test_same_content_same_records(clean, crlf: bool, blank: bool, pack) -> None:
    """CRLF line ends, blank lines, a missing final newline, gzip or bgzip: the same records."""
    text, want = clean
    if blank:
        text = b"\n" + text.replace(b"\n>", b"\n\n>") + b"\n"
    else:
        text = text.rstrip(b"\n")
    if crlf:
        text = text.replace(b"\n", b"\r\n")
    data = pack.draw(packed(text, truncate=False))
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), "in.fa.gz", data)
        assert _records(path) == want
        assert _stream(path) == want
        assert fasta_summary(path) == [(n, len(s)) for n, s in want]
