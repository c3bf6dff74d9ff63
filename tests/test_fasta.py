"""Tests for datapipe.fasta: parity with a line-by-line reference parser, exact error lines, real genomes."""

from __future__ import annotations

import gzip
import lzma
import pickle
import zlib
from pathlib import Path

import numpy as np
import pytest

from datapipe.fasta import (
    BLOCK_SIZE,
    FastaFormatError,
    fasta_summary,
    open_maybe_compressed,
    read_fasta,
)
from tests.helpers import DATA_ROOT, needs_data

GENOMES = DATA_ROOT / "genomes"
KINDS = ["plain", "gzip", "bgzip"]


def write_fasta(tmp_path: Path, data: bytes, kind: str, name: str = "x.fa", member: int = 37) -> Path:
    """Write ``data`` plain, as one gzip member, or bgzip-like: many gzip members split at arbitrary
    byte offsets (mid-line, mid-header), ending with an empty member like bgzip's EOF block."""
    path = tmp_path / name
    if kind == "plain":
        path.write_bytes(data)
    elif kind == "gzip":
        path.write_bytes(gzip.compress(data))
    else:
        members = [gzip.compress(data[i : i + member]) for i in range(0, len(data), member)]
        path.write_bytes(b"".join(members) + gzip.compress(b""))
    return path


_REF_NORM = str.maketrans({**{c: "N" for c in "RYKMSWBDHV"}, "U": "T"})


def ref_parse(text: bytes) -> list[tuple[str, str, str, list[bool]]]:
    """Deliberately naive reference: (name, description, SEQ, lowercase mask) per record, line by line."""
    records: list[tuple[str, str, list[str]]] = []
    for line in text.decode().split("\n"):
        line = line.rstrip(" \t\r")
        if line.startswith(">"):
            name, _, desc = line[1:].strip().partition(" ")
            records.append((name, desc.strip(), []))
        elif line:
            records[-1][2].append(line)
    out = []
    for name, desc, lines in records:
        raw = "".join(lines)
        out.append((name, desc, raw.upper().translate(_REF_NORM), [c.islower() for c in raw]))
    return out


def random_fasta(rng: np.random.Generator, n_records: int, max_len: int) -> bytes:
    """Random records with random wrapping (fixed or ragged), CRLF/LF, trailing blanks, blank lines."""
    alphabet = list("ACGTNacgtnRYKMSWBDHVryk" + "U" + "u") + list("ACGTacgt") * 6
    chunks = []
    for r in range(n_records):
        seq = "".join(rng.choice(alphabet, size=int(rng.integers(1, max_len))))
        eol = "\r\n" if rng.random() < 0.3 else "\n"
        width = int(rng.integers(1, 120))
        chunks.append(f">rec{r} some description {r}{' ' if rng.random() < 0.3 else ''}{eol}")
        pos = 0
        while pos < len(seq):
            w = width if rng.random() < 0.7 else int(rng.integers(1, 200))  # ragged lines too
            tail = rng.choice(["", "", "", " ", "\t", " \t "])
            chunks.append(seq[pos : pos + w] + tail + eol)
            pos += w
        if rng.random() < 0.3:
            chunks.append(eol * int(rng.integers(1, 3)))  # blank lines between records
    text = "".join(chunks)
    return (text.rstrip("\r\n") if rng.random() < 0.5 else text).encode()  # maybe no final newline


def as_tuples(records) -> list[tuple[str, str, str, list[bool]]]:
    return [(r.name, r.description, r.seq.tobytes().decode(), r.mask.tolist()) for r in records]


@pytest.mark.parametrize("kind", KINDS)
def test_line_width_does_not_change_the_record(tmp_path: Path, kind: str) -> None:
    seq = "".join(np.random.default_rng(0).choice(list("ACGT"), size=1823))
    results = []
    for width in (1, 7, 60, 61, 80, len(seq)):
        body = "\n".join(seq[i : i + width] for i in range(0, len(seq), width))
        path = write_fasta(tmp_path, f">chr1 test\n{body}\n".encode(), kind, name=f"w{width}.fa")
        (rec,) = read_fasta(path)
        results.append(rec.seq.tobytes().decode())
        assert (rec.name, rec.description, rec.line, rec.path) == ("chr1", "test", 1, str(path))
    assert results == [seq] * len(results)


@pytest.mark.parametrize("kind", KINDS)
def test_messy_formatting(tmp_path: Path, kind: str) -> None:
    """CRLF, trailing spaces/tabs, blank lines around records, no final newline, lenient '> name'."""
    data = b"\r\n>a  first one \t\r\nAC GT\t\r\nGG \r\n\r\n\r\n>b\r\nTTTT\r\n\n> c x\nA\nC"
    recs = list(read_fasta(write_fasta(tmp_path, data, kind)))
    got = [(r.name, r.description, r.seq.tobytes(), r.line) for r in recs]
    assert got == [("a", "first one", b"ACGTGG", 2), ("b", "", b"TTTT", 7), ("c", "x", b"AC", 10)]


def test_case_iupac_and_mask(tmp_path: Path) -> None:
    path = write_fasta(tmp_path, b">s\nACgtN\nnRYkmswbdhvUu\nacgT\n", "plain")
    (rec,) = read_fasta(path, soft_mask="mask")
    assert rec.seq.tobytes() == b"ACGTNNNNNNNNNNNNTTACGT"
    assert rec.seq.dtype == np.uint8 and rec.mask.dtype == np.bool_
    assert np.flatnonzero(rec.mask).tolist() == [2, 3, 5, 8, 9, 10, 11, 12, 13, 14, 15, 17, 18, 19, 20]
    (upper,) = read_fasta(path)
    assert upper.mask is None and upper.seq.tobytes() == rec.seq.tobytes()


def test_sequence_is_not_copied(tmp_path: Path) -> None:
    """The array must view the parse buffer (np.frombuffer), or a chromosome would be held twice."""
    (rec,) = read_fasta(write_fasta(tmp_path, b">s\nACGT\nAC\n", "plain"))
    assert not rec.seq.flags.owndata and isinstance(rec.seq.base, memoryview)
    assert isinstance(rec.seq.base.obj, bytearray)


@pytest.mark.parametrize("block_size", [1, 2, 7, 64, 4096, BLOCK_SIZE])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_files_match_reference(tmp_path: Path, seed: int, block_size: int) -> None:
    """Records spanning many blocks, headers and CRLFs split across block boundaries."""
    rng = np.random.default_rng(seed)
    data = random_fasta(rng, n_records=int(rng.integers(1, 6)), max_len=3000)
    kind = KINDS[seed % 3]
    path = write_fasta(tmp_path, data, kind)
    expected = ref_parse(data)
    assert as_tuples(read_fasta(path, soft_mask="mask", block_size=block_size)) == expected
    assert fasta_summary(path, block_size=block_size) == [(n, len(s)) for n, _, s, _ in expected]


def test_many_records_and_summary(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    lengths = rng.integers(1, 300, size=500).tolist()
    data = b"".join(b">r%d\n%s\n" % (i, b"A" * n) for i, n in enumerate(lengths))
    path = write_fasta(tmp_path, data, "bgzip")
    assert fasta_summary(path) == [(f"r{i}", n) for i, n in enumerate(lengths)]
    assert [len(r.seq) for r in read_fasta(path, block_size=100)] == lengths


MALFORMED = [
    # (id, file content, line in the message, fragment of the message)
    ("data-before-header", b"ACGT\n>a\nACGT\n", 1, "sequence data before the first '>' header; a FASTA file"),
    ("data-after-blank-lines", b"\n \n\nACGT\n>a\nAC\n", 4, "sequence data before the first '>' header"),
    ("gap", b">a\nACGT\nACGT\nAC-T\n>b\nAC\n", 4, "character '-' is an alignment gap"),
    ("stop", b">a desc\nACGT\n>b\nACGT\nAC*T\n", 5, "character '*' is not a nucleotide code"),
    ("digit", b">a\nACGT\n  1 ACGT\n", 3, "character '1' is not sequence"),
    ("protein", b">p\nMKLV\n", 2, "character 'L' is not a nucleotide code"),
    ("gt-mid-line", b">a\nAC>GT\n", 2, "'>' in the middle of a line"),
    ("crlf-gap", b">a\r\nAC\r\nA-\r\n", 3, "character '-'"),
    ("empty-record", b">a\n>b\nACGT\n", 1, "record 'a' has no sequence; remove the header"),
    ("empty-last-record", b">a\nAC\n\n>b\n\n", 4, "record 'b' has no sequence"),
    ("header-at-eof", b">a\nAC\n>b", 3, "record 'b' has no sequence"),
    ("nul-in-seq", b">a\nACGT\nAC\x00GT\n", 3, "byte 0x00 is not text: this looks like a binary file"),
    ("non-ascii-in-seq", b">a\nAC\xc3\xa9GT\n", 2, "byte 0xc3 is not text: this looks like a binary file"),
    ("binary-file", b"\x89PNG\r\n\x1a\n\x00\x00", 1, "byte 0x89 is not text: this looks like a binary file"),
    ("nul-in-header", b">a\x00b\nACGT\n", 1, "this looks like a binary file"),
    ("empty-name", b">\nACGT\n", 1, "header has an empty name; put the record name right after '>'"),
    ("blank-name", b">a\nAC\n>  \t\nAC\n", 3, "header has an empty name"),
]


@pytest.mark.parametrize("block_size", [1, 5, BLOCK_SIZE])
@pytest.mark.parametrize(
    ("data", "line", "fragment"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED]
)
def test_malformed_names_file_and_exact_line(
    tmp_path: Path, data: bytes, line: int, fragment: str, block_size: int
) -> None:
    path = write_fasta(tmp_path, data, "plain")
    with pytest.raises(FastaFormatError) as info:
        list(read_fasta(path, block_size=block_size))
    err = info.value
    assert (err.path, err.line) == (str(path), line)
    assert str(err).startswith(f"{path}:{line}: ") and fragment in str(err)


@pytest.mark.parametrize(
    ("data", "fragment"), [(b"", "file is empty;"), (b"\n \r\n\t\n", "file has no FASTA records")]
)
def test_file_without_records(tmp_path: Path, data: bytes, fragment: str) -> None:
    path = write_fasta(tmp_path, data, "gzip")
    with pytest.raises(FastaFormatError, match="a FASTA file holds '>name' header lines") as info:
        fasta_summary(path)
    assert info.value.line is None and str(info.value).startswith(f"{path}: {fragment}")


def test_earlier_records_are_yielded_before_the_error(tmp_path: Path) -> None:
    path = write_fasta(tmp_path, b">a\nAC\n>b\nGG\n>c\nA!\n", "plain")
    records = read_fasta(path)
    assert [next(records).name, next(records).name] == ["a", "b"]
    with pytest.raises(FastaFormatError, match=r":6: character '!'"):
        next(records)


def decodable_prefix(data: bytes) -> bytes:
    """Everything zlib can inflate from a damaged (multi-member) gzip file before the damage."""
    out = []
    while data:
        d = zlib.decompressobj(wbits=31)
        out.append(d.decompress(data))
        if not d.eof:
            break
        data = d.unused_data
    return b"".join(out)


@pytest.mark.parametrize("block_size", [64, BLOCK_SIZE])
@pytest.mark.parametrize("kind", ["gzip", "bgzip"])
def test_truncated_gzip(tmp_path: Path, kind: str, block_size: int) -> None:
    data = random_fasta(np.random.default_rng(7), n_records=40, max_len=2000)
    whole = write_fasta(tmp_path, data, kind, member=1000).read_bytes()
    cut = len(whole) * 2 // 3
    path = tmp_path / "cut.fa.gz"
    path.write_bytes(whole[:cut])
    prefix = decodable_prefix(whole[:cut])
    assert 0 < len(prefix) < len(data)
    last_line = prefix.count(b"\n") + (0 if prefix.endswith(b"\n") else 1)
    # A record is yielded once the next header line is complete, so that many (minus one) came out.
    n_complete = sum(line.startswith(b">") for line in prefix.split(b"\n")[:-1]) - 1
    got = []
    with pytest.raises(FastaFormatError, match="truncated or corrupt") as info:
        got.extend(read_fasta(path, soft_mask="mask", block_size=block_size))
    assert info.value.line == last_line and str(info.value).startswith(f"{path}:{last_line}: ")
    assert "re-download the file or re-compress it" in str(info.value)
    assert as_tuples(got) == ref_parse(data)[:n_complete]


def test_corrupt_gzip(tmp_path: Path) -> None:
    data = b">a\nACGT\n>b\nGGCC\n"
    good = gzip.compress(data)
    bad_crc = tmp_path / "crc.fa.gz"  # all data inflates, then the CRC32 trailer does not match
    bad_crc.write_bytes(good[:-8] + bytes([good[-8] ^ 0xFF]) + good[-7:])
    with pytest.raises(FastaFormatError, match=r"crc\.fa\.gz:4: compressed data is truncated or corrupt"):
        list(read_fasta(bad_crc))
    bad_block = tmp_path / "block.fa.gz"  # first deflate byte: final block of reserved type 3
    bad_block.write_bytes(good[:10] + b"\xff" + good[11:])
    with pytest.raises(FastaFormatError, match=r"block\.fa\.gz:1: compressed data is truncated or corrupt"):
        list(read_fasta(bad_block))


def test_compression_detected_by_magic_not_extension(tmp_path: Path) -> None:
    data = b">a\nACGT\n"
    gz_named_fa = write_fasta(tmp_path, data, "gzip", name="really_gzip.fa")
    plain_named_gz = write_fasta(tmp_path, data, "plain", name="really_plain.fa.gz")
    with open_maybe_compressed(gz_named_fa) as fh:
        assert fh.read() == data
    assert fasta_summary(gz_named_fa) == fasta_summary(plain_named_gz) == [("a", 4)]
    xz = tmp_path / "x.fa.xz"
    xz.write_bytes(lzma.compress(data))
    with pytest.raises(FastaFormatError, match=r"x\.fa\.xz: file is xz-compressed; decompress it"):
        read_fasta(xz).__next__()


def test_bad_arguments_fail_at_call_time(tmp_path: Path) -> None:
    path = write_fasta(tmp_path, b">a\nA\n", "plain")
    with pytest.raises(ValueError, match="soft_mask must be 'upper' or 'mask', got 'lower'"):
        read_fasta(path, soft_mask="lower")  # type: ignore[arg-type]  # no next(): must raise eagerly
    with pytest.raises(ValueError, match="block_size must be a positive number of bytes, got 0"):
        read_fasta(path, block_size=0)
    with pytest.raises(ValueError, match="block_size must be a positive number of bytes, got -1"):
        fasta_summary(path, block_size=-1)


def test_error_pickles() -> None:
    err = pickle.loads(pickle.dumps(FastaFormatError("g.fa", 3, "bad; fix")))
    assert (str(err), err.path, err.line) == ("g.fa:3: bad; fix", "g.fa", 3)


@needs_data("genomes/Ecoli_K12_MG1655.fasta.gz")
def test_real_ecoli() -> None:
    (rec,) = read_fasta(GENOMES / "Ecoli_K12_MG1655.fasta.gz", soft_mask="mask")
    assert (rec.name, len(rec.seq), rec.line) == ("K-12-MG1655", 4_639_675, 1)
    assert set(np.unique(rec.seq).tobytes()) == set(b"ACGT") and not rec.mask.any()


@needs_data("genomes/Pfalciparum_genome_MAL1-14.fa.gz")
def test_real_pfalciparum_summary() -> None:
    # Reference lengths from `zcat | awk` (header lines excluded, whitespace removed).
    lengths = [643380, 947102, 1060087, 1204112, 1343552, 1418244, 1501717, 1419563, 1541723, 1687655,
               2038337, 2271477, 2895605, 3291871]  # fmt: skip
    summary = fasta_summary(GENOMES / "Pfalciparum_genome_MAL1-14.fa.gz")
    assert summary == [(f"MAL{i}", n) for i, n in enumerate(lengths, start=1)]
