"""Phased haplotypes from three formats, as one (haplotypes x SNPs) 0/1 matrix.

- ``.hapt`` (Yelmen et al., PLoS Genetics 2021): one haplotype per line, whitespace-separated: a group tag,
  an id, then one 0/1 per SNP. Plain, gzip, or a zip archive holding one file (as the published AGs come).
- VCF / BCF (plain, bgzip) through cyvcf2 (htslib): the two alleles of each phased diploid genotype (``0|1``)
  are two haplotypes, ``<sample>_A`` and ``<sample>_B``; a haploid call is one haplotype. 0 = REF, 1 = ALT.
- IMPUTE2 / SHAPEIT ``.haps`` + ``.sample``: one SNP per line (``chrom id pos a0 a1`` then 0/1 per
  haplotype, two columns per sample of the ``.sample`` file, in its order).

What is refused, and what is skipped and counted (``HaplotypePanel.skipped``):

- an unphased heterozygous genotype (``0/1``: which haplotype carries which allele is unknown): an error, as
  are a VCF without a GT field, samples of mixed ploidy, a value other than 0/1, rows of unequal length;
- a multi-allelic site (two or more ALT alleles) and a site with a missing call (``.``) in any sample: skipped,
  counted (``bcftools norm -m-`` splits multi-allelic sites into biallelic ones first, if they are wanted).

An unphased homozygous genotype (``1/1``) is unambiguous and read as it is.
"""

from __future__ import annotations

import gzip
import io
import logging
import re
import zipfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from datapipe.common.errors import InputError, MissingError
from datapipe.fasta import COMPRESSION_ERRORS
from eval.annotations import MAX_LINE

log = logging.getLogger(__name__)

VCF_SUFFIXES = (".vcf", ".vcf.gz", ".vcf.bgz", ".bcf")
HAPS_SUFFIXES = (".haps", ".haps.gz")


@dataclass(kw_only=True)
class SnpTable:
    """Where the SNPs are: chromosome, 1-based position, id, and the alleles coded 0 and 1."""

    chrom: np.ndarray
    pos: np.ndarray
    ids: list[str]
    a0: list[str]
    a1: list[str]


@dataclass(kw_only=True)
class HaplotypePanel:
    """``alleles`` (H, S) uint8 0/1; ``ids`` (H,) haplotype names; ``groups`` (H,) the individual each
    haplotype belongs to (both haplotypes of a person go to the same side of a split)."""

    alleles: np.ndarray
    ids: list[str]
    groups: list[str]
    source: str
    snps: SnpTable | None = None
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def n_haplotypes(self) -> int:
        return self.alleles.shape[0]

    @property
    def n_snps(self) -> int:
        return self.alleles.shape[1]


def read_haplotypes(path: str | Path, *, sample: str | Path | None = None) -> HaplotypePanel:
    """Read a panel; the format follows the name (``.hapt[.gz|.zip]``, ``.vcf[.gz]``/``.bcf``,
    ``.haps[.gz]`` with ``sample`` or a ``.sample`` file of the same stem beside it)."""
    path = Path(path)
    if not path.is_file():
        raise MissingError(f"{path}: no such haplotype file")
    name = path.name.lower()
    if name.endswith(VCF_SUFFIXES):
        panel = read_vcf(path)
    elif name.endswith(HAPS_SUFFIXES):
        panel = read_haps(path, sample)
    elif re.search(r"\.hapt(\.gz|\.zip)?$", name) or name.endswith(".zip"):
        panel = read_hapt(path)
    else:
        raise InputError(
            path,
            None,
            "unknown haplotype format; use .hapt (.gz, .zip), .vcf / .vcf.gz / .bcf, or .haps with a .sample",
        )
    if panel.n_haplotypes == 0 or panel.n_snps == 0:
        raise InputError(
            path, None, f"no haplotypes or no usable SNPs ({panel.n_haplotypes} x {panel.n_snps})"
        )
    for reason, n in panel.skipped.items():
        if n:
            log.warning("%s: skipped %d sites: %s", path, n, reason)
    return panel


# ----------------------------------------------------------------------------------------------- .hapt


@contextmanager
def _text_lines(path: Path) -> Iterator[io.BufferedIOBase]:
    """A binary line reader over a plain, gzip or single-member zip file (the format from its bytes)."""
    with open(path, "rb") as f:
        magic = f.read(4)
    try:
        if magic[:2] == b"\x1f\x8b":
            with gzip.open(path, "rb") as g:
                yield g
        elif magic == b"PK\x03\x04":
            with zipfile.ZipFile(path) as zf:
                members = [m for m in zf.namelist() if not m.endswith("/")]
                if len(members) != 1:
                    raise InputError(
                        path, None, f"a zip archive must hold one haplotype file, found {len(members)}"
                    )
                if zf.getinfo(members[0]).flag_bits & 0x1:
                    raise InputError(
                        path, None, "the zip archive is encrypted; unpack it and give the .hapt file"
                    )
                with zf.open(members[0]) as member:
                    yield io.BufferedReader(member)
        else:
            with open(path, "rb") as f:
                yield f
    except (*COMPRESSION_ERRORS, zipfile.BadZipFile, NotImplementedError, UnicodeDecodeError) as err:
        # raised while reading (thrown in at the yield) or opening: a cut/corrupt archive (zipfile says
        # NotImplementedError for a damaged version or method field), or bytes that are not UTF-8 text
        raise InputError(
            path, None, f"unreadable ({err}): a truncated or corrupt archive, or not text; re-download it"
        ) from None
    except OSError as err:
        if magic != b"PK\x03\x04":
            raise
        # zipfile seeks to offsets read from the damaged headers: a negative one is EINVAL
        raise InputError(
            path, None, f"unreadable zip archive ({err}): corrupt headers; re-download it"
        ) from None


def _numbered(f: io.BufferedIOBase, path: Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line) with each line read up to MAX_LINE bytes: a file (or a gzip bomb) without
    line breaks is refused after MAX_LINE bytes instead of being held whole."""
    n = 0
    while line := f.readline(MAX_LINE + 1):
        n += 1
        if len(line) > MAX_LINE:
            raise InputError(path, n, f"line is longer than {MAX_LINE >> 20} MiB; not a haplotype table")
        yield n, line


def _binary_row(values: list[bytes], path: Path, line: int, first_col: int) -> np.ndarray:
    """Whitespace-split 0/1 tokens -> uint8 row; anything else is an error naming line and column."""
    joined = b"".join(values)
    row = np.frombuffer(joined, np.uint8) - ord("0")
    if len(joined) != len(values) or (row > 1).any():
        bad = next(i for i, v in enumerate(values) if v not in (b"0", b"1"))
        raise InputError(
            path,
            line,
            f"column {first_col + bad}: allele {values[bad].decode(errors='replace')!r} is not 0 or 1; "
            "the panel must hold biallelic 0/1 alleles only",
        )
    return row


def read_hapt(path: Path) -> HaplotypePanel:
    rows, ids, groups = [], [], []
    with _text_lines(path) as f:
        for n, line in _numbered(f, path):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 3:
                raise InputError(path, n, "expected a tag, an id and one 0/1 per SNP")
            row = _binary_row(parts[2:], path, n, first_col=3)
            if rows and len(row) != len(rows[0]):
                raise InputError(
                    path,
                    n,
                    f"{len(row)} SNPs, but the first row has {len(rows[0])}: rows must be equally long",
                )
            rows.append(row)
            hid = parts[1].decode()
            ids.append(hid)
            groups.append(re.sub(r"_[AB12]$", "", hid))  # HG00096_A / _B: one person
    alleles = np.stack(rows) if rows else np.zeros((0, 0), np.uint8)
    return HaplotypePanel(alleles=alleles, ids=ids, groups=groups, source=str(path))


def write_hapt(path: Path, alleles: np.ndarray, ids: list[str], tag: str = "AG") -> None:
    """The panel as ``.hapt`` text (tag, id, alleles), written atomically."""
    from datapipe.common.files import write_atomic

    body = [
        f"{tag} {hid} {' '.join(map(str, row.tolist()))}\n" for hid, row in zip(ids, alleles, strict=True)
    ]
    write_atomic(path, (line.encode() for line in body))


# ------------------------------------------------------------------------------------------------ legend


def read_legend(path: str | Path) -> SnpTable:
    """IMPUTE2 legend (``id position a0 a1`` with a header line); the chromosome comes from an id
    ``chrom:pos_...`` when the id carries one, else is unknown ('.')."""
    path = Path(path)
    if not path.is_file():
        raise MissingError(f"{path}: no such legend file")
    chrom, pos, ids, a0, a1 = [], [], [], [], []
    with _text_lines(path) as f:
        for n, raw in _numbered(f, path):
            parts = raw.decode(errors="replace").split()
            number = len(parts) > 1 and parts[1].isascii() and parts[1].isdigit() and len(parts[1]) < 19
            if not parts or (n == 1 and not number):
                continue  # the header line
            if len(parts) < 4 or not number:  # ASCII digits that fit an int64 ('²'.isdigit() is True)
                raise InputError(path, n, "expected 'id position a0 a1'")
            ids.append(parts[0])
            pos.append(int(parts[1]))
            a0.append(parts[2])
            a1.append(parts[3])
            chrom.append(parts[0].split(":", 1)[0] if ":" in parts[0] else ".")
    return SnpTable(chrom=np.array(chrom), pos=np.array(pos, np.int64), ids=ids, a0=a0, a1=a1)


# ------------------------------------------------------------------------------------------------ VCF


def _vcf_header_lines(path: Path) -> int | None:
    """Header lines of a text VCF (plain or bgzip), so errors can name a record's line; None for BCF.
    (cyvcf2's own header text is htslib's rewrite, which may add lines.) Also checks every record's GT
    values (:func:`_check_gt`) before cyvcf2 reads them: a malformed one crashes cyvcf2 0.35 with a
    segmentation fault. Costs one more pass over the text in Python (~1 s per 100 MB)."""
    with open(path, "rb") as f:
        magic = f.read(2)
    opener = gzip.open if magic == b"\x1f\x8b" else open
    n, header, samples = 0, None, []
    try:
        with opener(path, "rb") as f:
            if f.read(3) == b"BCF":
                return None  # binary: GT values are integers already
            f.seek(0)
            for line in f:
                if line.startswith(b"#"):
                    n += 1
                    samples = line.rstrip(b"\r\n").split(b"\t")[9:] if line.startswith(b"#CHROM") else samples
                    continue
                header = n if header is None else header
                n += 1
                _check_gt(path, n, line.rstrip(b"\r\n").split(b"\t"), samples)
    except COMPRESSION_ERRORS as err:
        raise InputError(
            path, n + 1, f"compressed data is truncated or corrupt ({err}); re-download it"
        ) from None
    return n if header is None else header


# A GT value as htslib parses it: allele indexes or '.', separated by '|' (phased) or '/' (unphased).
_GT = re.compile(rb"(?:\.|[0-9]{1,9})(?:[|/](?:\.|[0-9]{1,9}))*")


def _check_gt(path: Path, line_no: int, fields: list[bytes], samples: list[bytes]) -> None:
    """Refuse a record whose GT value htslib cannot parse or whose allele index has no allele. Records too
    short to have genotypes, and other fields, are left to htslib (it reports those as errors itself)."""
    if len(fields) < 10:
        return
    fmt = fields[8].split(b":")
    if b"GT" not in fmt:
        return
    at = fmt.index(b"GT")
    n_alleles = 1 + (len(fields[4].split(b",")) if fields[4] != b"." else 0)
    for i, value in enumerate(fields[9:]):
        parts = value.split(b":")
        if at >= len(parts):
            continue  # trailing fields dropped: a missing call, as VCF allows
        gt = parts[at]
        if _GT.fullmatch(gt) and all(a == b"." or int(a) < n_alleles for a in re.split(rb"[|/]", gt)):
            continue
        name = samples[i].decode("utf-8", "replace") if i < len(samples) else f"column {10 + i}"
        raise InputError(
            path,
            line_no,
            f"record {fields[0].decode('utf-8', 'replace')}:{fields[1].decode('utf-8', 'replace')}: sample "
            f"{name} has GT {gt.decode('utf-8', 'replace')!r}; a GT is allele indexes (0..{n_alleles - 1}) "
            "or '.', separated by '|' (phased) or '/'",
        )


def _vcf_records(vcf, path: Path, header_lines: int | None) -> Iterator:
    """cyvcf2's records; htslib's parse errors (a bare Exception from cyvcf2) become an InputError."""
    it, n = iter(vcf), 0
    while True:
        try:
            rec = next(it)
        except StopIteration:
            return
        except Exception as err:
            if type(err) is not Exception:  # only cyvcf2's bare Exception is bad input; others are bugs
                raise
            line = header_lines + n + 1 if header_lines is not None else None
            raise InputError(
                path, line, f"record is not valid VCF ({err}); check the file's columns"
            ) from None
        n += 1
        yield rec


def _gt_declared(vcf) -> bool:
    return any(h["HeaderType"] == "FORMAT" and h["ID"] == "GT" for h in vcf.header_iter())


def read_vcf(path: Path) -> HaplotypePanel:
    """Phased genotypes of every sample through cyvcf2; see the module docstring for what is refused."""
    try:
        return _read_vcf(path)
    except UnicodeDecodeError as err:  # cyvcf2 decodes names (samples, CHROM, ID) as UTF-8 when read
        raise InputError(path, None, f"not UTF-8 text ({err}); is this a binary file?") from None


def _read_vcf(path: Path) -> HaplotypePanel:
    from cyvcf2 import VCF

    try:
        vcf = VCF(str(path))
    except (OSError, Exception) as err:  # cyvcf2 raises a bare Exception for unreadable files
        raise InputError(path, None, f"not a readable VCF/BCF ({err})") from err
    header_lines = _vcf_header_lines(path)
    if not _gt_declared(vcf):
        raise InputError(path, None, "the header declares no FORMAT GT field: there are no genotypes to read")
    samples = list(vcf.samples)
    if not samples:
        raise InputError(path, None, "no samples (a sites-only VCF has no haplotypes)")
    columns, chrom, pos, ids, a0, a1 = [], [], [], [], [], []
    skipped: Counter[str] = Counter()
    ploidy = None
    for n, rec in enumerate(_vcf_records(vcf, path, header_lines), start=1):
        where = (header_lines + n) if header_lines is not None else None
        site = f"record {rec.CHROM}:{rec.POS}"
        if len(rec.ALT) != 1:
            skipped["multi-allelic (or no ALT allele)"] += 1
            continue
        try:
            gt = rec.genotype.array()  # (n_samples, ploidy + 1) int16: alleles, then the phased flag
        except Exception as err:  # cyvcf2: "couldn't get genotypes for variant"
            raise InputError(path, where, f"{site}: no GT value ({err})") from err
        alleles, phased = gt[:, :-1], gt[:, -1].astype(bool)
        per_sample = (alleles != -2).sum(axis=1)  # -2: vector end (a haploid call in a diploid array)
        if (per_sample != per_sample[0]).any() or (ploidy is not None and per_sample[0] != ploidy):
            i = int(np.argmax(per_sample != (ploidy if ploidy is not None else per_sample[0])))
            raise InputError(
                path,
                where,
                f"{site}: sample {samples[i]} has ploidy {per_sample[i]}, others "
                f"{ploidy if ploidy is not None else per_sample[0]}: mixed ploidy is not supported "
                "(e.g. split chrX males from females, or keep one of them)",
            )
        ploidy = int(per_sample[0])
        alleles = alleles[:, :ploidy]
        if (alleles < 0).any():
            skipped["missing genotype call"] += 1
            continue
        het = (alleles != alleles[:, :1]).any(axis=1)
        if ploidy > 1 and (het & ~phased).any():
            i = int(np.argmax(het & ~phased))
            raise InputError(
                path,
                where,
                f"{site}: sample {samples[i]} has an unphased heterozygous genotype (with '/'); "
                "phase the VCF first (e.g. SHAPEIT, Beagle, Eagle) so genotypes read like 0|1",
            )
        columns.append(alleles.reshape(-1).astype(np.uint8))  # sample-major: S1 hap A, S1 hap B, S2 ...
        chrom.append(rec.CHROM)
        pos.append(rec.POS)
        ids.append(rec.ID or f"{rec.CHROM}:{rec.POS}")
        a0.append(rec.REF)
        a1.append(rec.ALT[0])
    vcf.close()
    ploidy = ploidy or 2
    suffixes = ["A", "B"] if ploidy == 2 else [str(i + 1) for i in range(ploidy)]
    hap_ids = [s if ploidy == 1 else f"{s}_{x}" for s in samples for x in suffixes]
    groups = [s for s in samples for _ in range(ploidy)]
    alleles = np.stack(columns, axis=1) if columns else np.zeros((len(hap_ids), 0), np.uint8)
    snps = SnpTable(chrom=np.array(chrom), pos=np.array(pos, np.int64), ids=ids, a0=a0, a1=a1)
    return HaplotypePanel(
        alleles=alleles, ids=hap_ids, groups=groups, source=str(path), snps=snps, skipped=dict(skipped)
    )


# ------------------------------------------------------------------------------------------------ .haps


def _sample_file(haps: Path, sample: str | Path | None) -> Path:
    if sample is not None:
        found = Path(sample)
    else:
        stem = re.sub(r"\.haps(\.gz)?$", "", haps.name, flags=re.IGNORECASE)
        found = haps.with_name(stem + ".sample")
    if not found.is_file():
        raise MissingError(f"{found}: no .sample file for {haps} (IMPUTE2/SHAPEIT .haps need their .sample)")
    return found


def read_sample_ids(path: Path) -> list[str]:
    """Sample ids (ID_2, else ID_1) of an IMPUTE2 ``.sample`` file: two header lines, then one per sample."""
    ids = []
    with _text_lines(path) as f:
        for n, raw in _numbered(f, path):
            parts = raw.decode(errors="replace").split()
            if n <= 2 or not parts:
                if n == 1 and (len(parts) < 2 or parts[:2] != ["ID_1", "ID_2"]):
                    raise InputError(path, 1, "expected the .sample header 'ID_1 ID_2 missing ...'")
                continue
            if len(parts) < 2:
                raise InputError(path, n, "expected 'ID_1 ID_2 ...' (two ids) on every sample line")
            ids.append(parts[1] if parts[1] not in ("0", "") else parts[0])
    return ids


def read_haps(path: Path, sample: str | Path | None) -> HaplotypePanel:
    samples = read_sample_ids(_sample_file(path, sample))
    columns, chrom, pos, ids, a0, a1 = [], [], [], [], [], []
    skipped: Counter[str] = Counter()
    with _text_lines(path) as f:
        for n, line in _numbered(f, path):
            parts = line.split()
            if not parts:
                continue
            if len(parts) - 5 != 2 * len(samples):
                raise InputError(
                    path,
                    n,
                    f"{len(parts) - 5} haplotype columns after 'chrom id pos a0 a1', but the .sample file "
                    f"lists {len(samples)} samples (2 columns each): rows must be equally long",
                )
            if b"," in parts[4]:
                skipped["multi-allelic (or no ALT allele)"] += 1
                continue
            if any(v in (b"?", b".", b"-") for v in parts[5:]):
                skipped["missing genotype call"] += 1
                continue
            if not (parts[2].isdigit() and len(parts[2]) < 19):  # ASCII digits that fit an int64
                raise InputError(path, n, f"position {parts[2][:20]!r} (column 3) is not a whole number")
            columns.append(_binary_row(parts[5:], path, n, first_col=6))
            chrom.append(parts[0].decode())
            ids.append(parts[1].decode())
            pos.append(int(parts[2]))
            a0.append(parts[3].decode())
            a1.append(parts[4].decode())
    alleles = np.stack(columns, axis=1) if columns else np.zeros((2 * len(samples), 0), np.uint8)
    snps = SnpTable(chrom=np.array(chrom), pos=np.array(pos, np.int64), ids=ids, a0=a0, a1=a1)
    return HaplotypePanel(
        alleles=alleles,
        ids=[f"{s}_{x}" for s in samples for x in "AB"],
        groups=[s for s in samples for _ in range(2)],
        source=str(path),
        snps=snps,
        skipped=dict(skipped),
    )
