"""Minimal inputs the fuzz tests (tests/test_fuzz_*.py) found crashing a reader, kept as plain tests: each
once raised something other than the project's UserError (a traceback for the user)."""

from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from datapipe.common.errors import InputError, MissingError, UsageError, UserError
from datapipe.species import read_species_table
from eval.annotations import read_bed, read_gff3, read_gtf
from eval.datasets import read_table
from eval.haplotypes import read_haplotypes, read_legend
from eval.readers import read_dnabert_tsv, read_labelled_fasta, read_zeng

GTF_LINE = b'chr20\tH\tgene\t100\t{end}\t.\t+\t.\tgene_id "G1";\n'


def _cut_gzip(data: bytes) -> bytes:
    comp = gzip.compress(data, mtime=0)
    return comp[: len(comp) // 2]


def _zip_with_version(data: bytes) -> bytes:
    """A zip whose central directory claims an extract version zipfile does not implement."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("panel.hapt", data)
    raw = bytearray(buf.getvalue())
    cd = raw.rfind(b"PK\x01\x02")
    raw[cd + 6] = 78  # "version needed to extract": 7.8
    return bytes(raw)


def _zip_flipped(data: bytes, at: int) -> bytes:
    """A one-member zip with one byte flipped (the fuzzer's damaged archive)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("panel.hapt", data)
    raw = bytearray(buf.getvalue())
    raw[at] ^= 0x5A
    return bytes(raw)


CASES = {
    # name: (file name, bytes, reader, expected error type)
    "species-not-utf8": ("species.txt", b"\x80", lambda p: read_species_table(str(p)), UsageError),
    "table-not-utf8": ("set.csv", b"sequence,label\n\x80,1\n", read_table, UsageError),
    "table-huge-field": ("set.csv", b"sequence,label\n" + b"A" * 200_000 + b",1\n", read_table, UsageError),
    "table-cut-gzip": ("set.csv.gz", _cut_gzip(b"sequence,label\nACGT,1\n" * 500), read_table, UsageError),
    "table-not-gzip": ("set.csv.gz", b"\x1f\x8bnot really gzip", read_table, UsageError),
    "dnabert-cut-gzip": (
        "dev.tsv",
        _cut_gzip(b"sequence\tlabel\n" + b"ACGTAC CGTACG\t1\n" * 500),
        read_dnabert_tsv,
        InputError,
    ),
    "zeng-bad-crc": (
        "train.data",
        gzip.compress(b">chr1:1-2 AC 1\n")[:-8] + b"\0" * 8,
        read_zeng,
        InputError,
    ),
    "bed-cut-gzip": ("a.bed", _cut_gzip(b"chr1\t1\t2\n" * 2000), read_bed, InputError),
    "bed-huge-end": ("a.bed", b"chr1\t1\t99999999999999999999999\n", read_bed, InputError),
    "gtf-huge-end": ("a.gtf", GTF_LINE.replace(b"{end}", b"9" * 23), read_gtf, InputError),
    "gff3-huge-end": (
        "a.gff3",
        b"chr20\tE\tgene\t100\t" + b"9" * 23 + b"\t.\t-\t.\tID=g1\n",
        read_gff3,
        InputError,
    ),
    "labelled-fasta-split-without-train": (
        "set.fa",
        b">c|1 split=test\nA\n",
        read_labelled_fasta,
        InputError,
    ),
    "hapt-cut-gzip": ("p.hapt.gz", _cut_gzip(b"AG H_A 0 1 1 0\n" * 500), read_haplotypes, InputError),
    "hapt-zip-version": ("p.hapt.zip", _zip_with_version(b"AG H_A 0 1\n"), read_haplotypes, InputError),
    "hapt-bad-zip": ("p.hapt.zip", b"PK\x03\x04" + b"\0" * 40, read_haplotypes, InputError),
    # the central directory's header offset made negative: zipfile's seek raised OSError EINVAL
    "hapt-zip-negative-offset": ("p.hapt.zip", _zip_flipped(b"", 112), read_haplotypes, InputError),
    # a label too large for int64 (OverflowError in numpy), or a head of a billion classes
    "dnabert-huge-label": (
        "dev.tsv",
        b"sequence\tlabel\r\nGTGGGG TGGGGA\t9999999999999999999",
        read_dnabert_tsv,
        InputError,
    ),
    "labelled-fasta-huge-label": (
        "set.fa",
        b">a|9999999999999999999\nACGT\n",
        read_labelled_fasta,
        InputError,
    ),
    "legend-unicode-digit": (
        "s.legend",
        "id position a0 a1\nrs1 \u00b2 A G\n".encode(),
        read_legend,
        InputError,
    ),
    "vcf-not-utf8": (
        "p.vcf",
        b"##fileformat=VCFv4.2\n##contig=<ID=20>\n"
        b'##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
        b"#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tS1\n\x80\t100\t.\tA\tG\t.\t.\t.\tGT\t0|1\n",
        read_haplotypes,
        InputError,
    ),
    "vcf-cr-line-ends": (
        "p.vcf",
        b"##fileformat=VCFv4.2\r\r\n##contig=<ID=20>\r\r\n"
        b'##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\r\r\n'
        b"#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tS1\r\r\n20\t100\t.\tA\tG\t.\t.\t.\tGT\t0|1\r\r\n",
        read_haplotypes,
        InputError,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_found_by_fuzzing(case: str, tmp_path: Path) -> None:
    name, data, reader, kind = CASES[case]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(kind) as info:
        reader(path)
    assert name in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing left behind


def test_species_table_missing_is_missing_error(tmp_path: Path) -> None:
    with pytest.raises(MissingError, match="no such species table"):
        read_species_table(str(tmp_path / "none.txt"))


@pytest.mark.parametrize(
    ("haps", "sample", "where"),
    [
        (
            b"20 rs1 \x0000 A G 0 1\n",
            b"ID_1 ID_2 missing\n0 0 0\nS1 S1 0\n",
            "p.haps:1",
        ),  # position not a number
        (b"20 rs1 100 A G 0 1\n", b"ID_1 ID_2 missing\n0 0 0\n 0\n", "p.sample:3"),  # one id on a sample line
    ],
)
def test_haps_found_by_fuzzing(haps: bytes, sample: bytes, where: str, tmp_path: Path) -> None:
    (tmp_path / "p.haps").write_bytes(haps)
    (tmp_path / "p.sample").write_bytes(sample)
    with pytest.raises(UserError, match=where):
        read_haplotypes(tmp_path / "p.haps")


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("", "--set"),  # an empty --set once gave "config field ''"
        ("train.steps=Infinity", "train.steps"),  # int(inf): OverflowError
        ("train.steps=NaN", "train.steps"),  # int(nan): ValueError
        ("train.steps=" + "9" * 5000, "train.steps"),  # json.loads: more digits than int() converts
        ("optim.lr=NaN", "optim.lr"),
        (".=", ".="),  # once "config field '': no such config section"
        ("model..n_head=1", "model..n_head=1"),
        ("model.n_head=0", "model.n_head"),  # once ZeroDivisionError in the d_model check
        ("model.d_model=0", "model.d_model"),
    ],
)
def test_set_override_found_by_fuzzing(override: str, field: str) -> None:
    from datapipe.common.config import ConfigError
    from trainer.recipes import get_recipe

    with pytest.raises(ConfigError) as info:
        get_recipe("tiny-dnagpt").with_overrides([override])
    assert info.value.field == field


@pytest.mark.parametrize(
    "text",
    [b"\x80", b"[1]", b'{"zero_optimization": 1}', b'{"gradient_accumulation_steps": {"type": "AdamW"}}'],
)
def test_deepspeed_config_found_by_fuzzing(text: bytes, tmp_path: Path) -> None:
    from cluster.cli import build_parser
    from trainer.cli import resolve

    (tmp_path / "ds.json").write_bytes(text)
    with pytest.raises(UsageError, match="ds.json"):
        resolve(build_parser().parse_args(["pretrain", "--deepspeed_config", str(tmp_path / "ds.json")]))


def test_saved_config_with_an_empty_key_names_it() -> None:
    from datapipe.common.config import ConfigError
    from trainer.config import PretrainConfig

    with pytest.raises(ConfigError) as info:  # once "config field '': unknown field"
        PretrainConfig.from_dict({"": "tiny-dnagpt"})
    assert info.value.field == '""'


def test_saved_config_not_a_mapping() -> None:
    from datapipe.common.config import ConfigError
    from trainer.config import PretrainConfig

    with pytest.raises(ConfigError, match="expected a mapping"):
        PretrainConfig.from_dict(0)


def _pieces(path: Path) -> list[bytes]:
    from datapipe.io import ChunkReader, sniff

    return [piece for _, piece in ChunkReader(sniff(str(path)), 64).pieces(0)]


def test_bgzf_block_too_short_for_its_header(tmp_path: Path) -> None:
    """A BGZF-looking header whose BSIZE is smaller than its own header + trailer: struct.error before the
    fix; now it is no BGZF block, and the bytes read as what they are, an empty gzip member."""
    path = tmp_path / "aln.maf"
    path.write_bytes(b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff\x06\x00BC\x02\x00\n\x00\x03" + b"\x00" * 9)
    assert _pieces(path) == []


def test_bgzf_block_claiming_gigabytes_is_refused(tmp_path: Path) -> None:
    """The ISIZE trailer field sizes libdeflate's output buffer: 2 GB claimed by a 60-byte block."""
    import struct

    from datapipe.io import bgzf_compress

    rng = np.random.default_rng(0)
    data = bytearray(bgzf_compress(b">c\n" + bytes(rng.choice(list(b"ACGT"), 600_000))))
    pos = 0
    for _ in range(6):  # past the first 64 KiB, which sniff() inflates (and CRC-checks) on its own
        pos += struct.unpack_from("<H", data, pos + 16)[0] + 1
    bsize = struct.unpack_from("<H", data, pos + 16)[0] + 1
    struct.pack_into("<I", data, pos + bsize - 4, 1 << 31)
    path = tmp_path / "g.fa.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="claims 2147483648 bytes"):
        _pieces(path)


def test_table_labels_of_any_length_sort_in_numeric_order(tmp_path: Path) -> None:
    """Found by the long profile: int() raised ValueError on a label of more than 4,300 digits."""
    path = tmp_path / "set.csv"
    huge = "9" * 5000
    path.write_text(f"sequence,label\nACGT,{huge}\nACGT,10\nACGT,2\nACGT,pos\nACGT,\u00b2\n")
    assert read_table(path).classes == ("2", "10", huge, "pos", "\u00b2")


@pytest.mark.parametrize("name", ["s" * 256 + ".tar", "\ud800.tar"])
def test_manifest_shard_names_that_cannot_be_files_are_a_shard_error(name: str, tmp_path: Path) -> None:
    """Found by the long profile: an over-long shard name made the loader raise OSError (file name too long)."""
    import json

    from datapipe.common.errors import ShardError
    from datapipe.shards.manifest import read_manifest

    entry = {"name": name, "index": "a.idx.npy", "samples": 1, "tokens": 1, "bytes": 1, "sha256": "",
             "index_sha256": ""}  # fmt: skip
    manifest = {"format_version": 2, "shards": [entry], "totals": {}, "config": {}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="plain file names"):
        read_manifest(tmp_path)


VCF_HEAD = (
    b'##fileformat=VCFv4.2\n##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
    b"#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tS1\tS2\n20\t100\t.\tA\tG\t.\tPASS\t.\tGT\t0|1\t1|1\n"
)


@pytest.mark.parametrize("gt", [b"0|\xc3", b"0|a", b"0||1", b"|0|1", b" 0|1", b"0|99999999999", b"0|2"])
@pytest.mark.parametrize("packed", [False, True])
def test_vcf_gt_that_crashed_cyvcf2_is_an_input_error(gt: bytes, packed: bool, tmp_path: Path) -> None:
    """cyvcf2 0.35 dies with a segmentation fault on a GT htslib cannot parse (found by the long profile):
    checked before it reads the records, in a child process so that a regression fails this test only."""
    import subprocess
    import sys

    data = VCF_HEAD + b"20\t200\t.\tC\tT\t.\tPASS\t.\tGT\t0|0\t" + gt + b"\n"
    path = tmp_path / ("panel.vcf.gz" if packed else "panel.vcf")
    path.write_bytes(gzip.compress(data) if packed else data)
    code = (
        "import sys\nfrom eval.haplotypes import read_haplotypes\nfrom datapipe.common.errors import InputError\n"
        "try:\n    read_haplotypes(sys.argv[1])\nexcept InputError as err:\n    print(err)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60,
        cwd=Path(__file__).parents[1],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{path.name}:5:" in proc.stdout and "sample S2 has GT" in proc.stdout, proc.stdout
