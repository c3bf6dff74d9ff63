"""Reading inputs in independent chunks gives exactly what the sequential reader gives (no Ray here).

Random FASTA files (wrapped lines, CRLF, blank lines, soft-masked and IUPAC bases, injected errors)
are cut into tiny chunks (a few bytes, or BGZF blocks of a few bytes) and read through the chunked
path (scan -> stitch -> segments) and the stream path; records, bases, masks, and the first error
with its line must equal ``datapipe.fasta.read_fasta``'s.
"""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from datapipe.fasta import FastaFormatError, read_fasta
from datapipe.fasta_chunks import FastaStream, Stitcher, scan_chunk
from datapipe.io import ChunkReader, bgzf_compress, sniff
from datapipe.maf import MafFormatError, MafStream


def random_fasta(rng: np.random.Generator) -> bytes:
    parts = ["\n" * int(rng.integers(0, 3))] if rng.random() < 0.2 else []
    for r in range(int(rng.integers(1, 5))):
        parts.append(f">rec{r}{' some description' if rng.random() < 0.5 else ''}\n")
        length, width = int(rng.integers(1, 300)), int(rng.integers(1, 80))
        seq = "".join(rng.choice(list("ACGTNacgtnRY"), length))
        sep = "\r\n" if rng.random() < 0.1 else "\n"
        parts.append(
            sep.join(seq[i : i + width] for i in range(0, length, width))
            + (sep if rng.random() < 0.9 else "")
        )
    text = "".join(parts)
    if rng.random() < 0.3:
        i = int(rng.integers(0, len(text)))
        text = text[:i] + str(rng.choice(["-", "1", "\x00", ">", "\n>\n", "\n>x\n>y\n", "\xff"])) + text[i:]
    return text.encode("latin-1")


def reference(path, keep_mask):
    try:
        recs = read_fasta(path, soft_mask="mask" if keep_mask else "upper")
        return [(r.name, r.seq.tobytes(), r.mask.tobytes() if keep_mask else None) for r in recs], None
    except FastaFormatError as err:
        return None, (err.line, err.message)


def chunked(path, cb, keep_mask):
    """The prepare path for a splittable file: scans per chunk, stitch, then bases by segment."""
    file = sniff(str(path))
    texts = {}
    for c, piece in ChunkReader(file, cb).pieces(0):
        texts[c] = texts.get(c, b"") + piece
    stitcher = Stitcher(str(path))
    out: dict[int, list[bytes]] = {}
    try:
        for c in range(ChunkReader(file, cb).num_chunks()):
            scan, bases, mask = scan_chunk(texts.get(c, b""), keep_mask)
            for record, offset, pos, n in stitcher.add(scan):
                got = out.setdefault(record, [b"", b""])
                assert len(got[0]) == offset
                got[0] += bases[pos : pos + n]
                got[1] += mask[pos : pos + n]
        records = stitcher.finish()
    except FastaFormatError as err:
        return None, (err.line, err.message)
    return [(name, out[i][0], out[i][1] if keep_mask else None) for i, (name, _) in enumerate(records)], None


def streamed(path, cb, keep_mask):
    stream = FastaStream(str(path), keep_mask=keep_mask)
    out: list[list] = []

    def take(events):
        for event in events:
            if event[0] == "record":
                out.append([event[2], b"", b""])
            else:
                out[-1][1] += event[1]
                out[-1][2] += event[2] or b""

    try:
        for _, piece in ChunkReader(sniff(str(path)), cb).pieces(0):
            take(stream.feed(piece))
        take(stream.finish())
    except FastaFormatError as err:
        return None, (err.line, err.message)
    return [(a, b, c if keep_mask else None) for a, b, c in out], None


@pytest.mark.parametrize("seed", [0, 1])
def test_chunked_and_streamed_reads_equal_read_fasta(tmp_path, seed):
    rng = np.random.default_rng(seed)
    errors = 0
    for trial in range(120):
        text = random_fasta(rng)
        keep_mask = bool(rng.random() < 0.5)
        kind = ("plain", "bgzf", "gzip")[trial % 3]
        path = tmp_path / f"t{trial}.fa"
        data = {
            "plain": text,
            "bgzf": bgzf_compress(text, block=int(rng.integers(1, 40))),
            "gzip": gzip.compress(text),
        }
        path.write_bytes(data[kind])
        expected = reference(path, keep_mask)
        errors += expected[0] is None
        cb = int(rng.integers(20, 120)) if kind == "bgzf" else int(rng.integers(1, 40))
        if kind != "gzip":
            assert chunked(path, cb, keep_mask) == expected, (trial, kind, cb, text[:200])
        assert streamed(path, cb, keep_mask) == expected, (trial, kind, cb, text[:200])
    assert errors > 10  # the errors were exercised, not only clean files


def test_bgzf_chunks_resynchronise_and_cover_the_file(tmp_path):
    rng = np.random.default_rng(1)
    text = b"".join(b">r%d\n%s\n" % (i, bytes(rng.choice(list(b"ACGT"), 4000))) for i in range(30))
    path = tmp_path / "x.fa.gz"
    path.write_bytes(bgzf_compress(text, block=999))
    file = sniff(str(path))
    assert (file.compression, file.fmt, file.splittable) == ("bgzf", "fasta", True)
    reader = ChunkReader(file, 4096)  # chunk starts fall inside blocks: each reader finds the next block
    joined = {}
    for c in range(reader.num_chunks()):
        for chunk, piece in reader.pieces(c):
            if chunk != c:
                break
            joined[c] = joined.get(c, b"") + piece
    assert b"".join(joined[c] for c in sorted(joined)) == text
    assert len(joined) > 5


def test_truncated_and_corrupt_compressed_inputs_fail_clearly(tmp_path):
    blob = gzip.compress(b">r1\n" + b"ACGTACGTAC\n" * 5000)
    (tmp_path / "cut.fa.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="cut.fa.gz: compressed data is truncated"):
        list(ChunkReader(sniff(str(tmp_path / "cut.fa.gz")), 1000).pieces(0))
    rng = np.random.default_rng(0)
    bgz = bytearray(bgzf_compress(b">r1\n" + bytes(rng.choice(list(b"ACGT"), 300_000))))
    bgz[len(bgz) // 2] ^= 0xFF  # inside a later block: sniffing the first block passes
    (tmp_path / "bad.fa.gz").write_bytes(bytes(bgz))
    with pytest.raises(ValueError, match=r"bad.fa.gz: byte \d+: BGZF block (is corrupt|fails its CRC)"):
        list(ChunkReader(sniff(str(tmp_path / "bad.fa.gz")), 1000).pieces(0))
    (tmp_path / "x.bz2").write_bytes(b"BZh91AY&SY" + b"\0" * 20)
    with pytest.raises(ValueError, match="bzip2"):
        sniff(str(tmp_path / "x.bz2"))
    (tmp_path / "empty.fa").write_bytes(b"")
    with pytest.raises(ValueError, match="file is empty"):
        sniff(str(tmp_path / "empty.fa"))


MAF = """##maf version=1
# a comment
a score=1
s hg19.chr22 100 10 + 1000 ACGT-ACGTAC
s panTro4.chr22 50 9 - 900 ACG--ACGTAC
i panTro4.chr22 N 0 C 0

a score=2
s hg19.chr22 200 4 + 1000 acg-t
s panTro4.chr22 70 4 + 900 AC-GT
"""


def maf_blocks(path, cb, keep_mask=False):
    file = sniff(str(path))
    reader = ChunkReader(file, cb)
    blocks = []
    for first in range(reader.num_chunks() or 1):
        stream = MafStream(str(path), keep_mask=keep_mask, first_chunk=first, at_file_start=first == 0)
        for chunk, piece in reader.pieces(first):
            if stream.done_through(first):
                break
            blocks += [
                (o, [(r.src, r.start, r.strand, r.bases) for r in rows])
                for o, rows in stream.feed(chunk, piece)
                if o == first
            ]
        else:
            blocks += [
                (o, [(r.src, r.start, r.strand, r.bases) for r in rows])
                for o, rows in stream.finish()
                if o == first
            ]
    return [rows for _, rows in blocks]


def test_maf_blocks_are_read_once_whatever_the_chunking(tmp_path):
    path = tmp_path / "a.maf"
    path.write_text(MAF)
    expected = [
        [("hg19.chr22", 100, "+", b"ACGTACGTAC"), ("panTro4.chr22", 50, "-", b"ACGACGTAC")],
        [("hg19.chr22", 200, "+", b"ACGT"), ("panTro4.chr22", 70, "+", b"ACGT")],
    ]
    for cb in (1, 2, 3, 7, 30, 61, 62, 63, 1000):
        assert maf_blocks(path, cb) == expected, cb
    (tmp_path / "b.maf.gz").write_bytes(bgzf_compress(MAF.encode(), block=13))
    assert maf_blocks(tmp_path / "b.maf.gz", 40) == expected


@pytest.mark.parametrize(
    "bad, line, words",
    [
        ("s hg19.chr22 100 10 + 1000 ACGT-ACGTAC", 3, "'s' line outside an alignment block"),
        ("a\ns hg19.chr22 100 11 + 1000 ACGT-ACGTAC", 4, "size 11"),
        ("a\ns hg19.chr22 100 10 + 1000 ACGT-ACGTAC\ns x.y 1 3 + 9 ACG", 5, "columns"),
        ("a\ns hg19.chr22 100 10 + 1000 ACGT*ACGTAC", 4, "'*'"),
        ("a\ns hg19.chr22 x 10 + 1000 ACGT-ACGTAC", 4, "integers"),
        ("x y z", 3, "a MAF line starts with"),
    ],
)
def test_malformed_maf_names_the_line(tmp_path, bad, line, words):
    path = tmp_path / "bad.maf"
    path.write_text("##maf version=1\n\n" + bad + "\n")
    with pytest.raises(MafFormatError, match=words) as err:
        maf_blocks(path, 1 << 20)
    assert err.value.line == line and str(err.value).startswith(f"{path}:{line}:")
