"""`dnafm genomes` end to end on the 805-SNP 1000 Genomes panel beside the published GAN and RBM sets, and its
answers to bad input."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from eval.haplotypes import read_haplotypes
from tests.helpers import DATA_ROOT, needs_data

REAL = "haplotypes/805_SNP_1000G_real.hapt.gz"
LEGEND = "haplotypes/805_SNP.legend"
GAN = "haplotypes/805_SNP_GAN_AG_20000epochs.hapt.zip"
RBM = "haplotypes/805_SNP_RBM_AG_800Epochs.hapt.zip"


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """tiny-dnagpt (128-token context: the 805 SNPs are generated in 12 windows), freshly initialised."""
    from tests.helpers import untrained_export

    return untrained_export("tiny-dnagpt", tmp_path_factory.mktemp("genomes") / "export")


@pytest.mark.slow
@needs_data(REAL, LEGEND, GAN, RBM)
def test_genomes_on_the_805_snp_panel(tiny_export, tmp_path):
    from mlflow.tracking import MlflowClient

    from tests.conftest import run_cli

    out = tmp_path / "ag805"
    sets = [
        "--set", "finetune.max_steps=10", "--set", "finetune.micro_batch_size=16",
        "--set", "sampling.batch_size=60", "--set", "score_n=60",
    ]  # fmt: skip
    proc = run_cli(
        "genomes", "--haplotypes", str(DATA_ROOT / REAL), "--legend", str(DATA_ROOT / LEGEND),
        "--checkpoint", str(tiny_export), "--out", str(out), "--num", "60",
        "--compare", f"GAN={DATA_ROOT / GAN}", "--compare", f"RBM={DATA_ROOT / RBM}", *sets,
        env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name in ("report.md", "pca.png", "allele_freq.png", "ld.png", "hamming.png", "ld_decay.png"):
        assert (out / name).stat().st_size > 1000, name
    rows = {r["set"]: r for r in csv.DictReader((out / "report.csv").open())}
    assert list(rows) == ["dnafm", "GAN", "RBM", "real (held-in)"]
    # the published sets are good generators and the held-in real haplotypes better still: the measures see it
    for name, floor in (("GAN", 0.95), ("RBM", 0.95), ("real (held-in)", 0.99)):
        assert float(rows[name]["af_pearson"]) > floor, name
        assert float(rows[name]["ld_pearson"]) > 0.8, name
        assert 0.3 < float(rows[name]["aats_test"]) < 0.8, name
    report = (out / "report.md").read_text()
    assert "| `af_pearson` | 1 |" in report and "12 window(s) of 126 SNPs" in report
    assert "3,806 training, 200 validation, 1,002 held-out haplotypes" in report
    ours = read_haplotypes(out / "generated.hapt")
    assert ours.alleles.shape == (60, 805)
    split = json.loads((out / "split.json").read_text())
    people = {k: {h.rsplit("_", 1)[0] for h in v} for k, v in split.items()}
    assert not (people["test"] & people["train"]) and not (people["val"] & people["train"])
    history = json.loads((out / "finetune.json").read_text())
    assert history["steps"] == 10 and history["windows"] == 12
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("dnafm-genomes").experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = {
        r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert set(children) == {"finetune", "score-dnafm", "score-GAN", "score-RBM", "score-real (held-in)"}
    assert children["score-GAN"].data.metrics["af_pearson"] == pytest.approx(float(rows["GAN"]["af_pearson"]))
    assert (
        "finetune/loss" in children["finetune"].data.metrics
        or "val/loss" in children["finetune"].data.metrics
    )


def write_panel(path, x, tag="Real"):
    path.write_text(
        "".join(f"{tag} P{i // 2}_{'AB'[i % 2]} {' '.join(map(str, r))}\n" for i, r in enumerate(x))
    )
    return path


@pytest.fixture()
def good_panel(tmp_path):
    x = np.random.default_rng(0).integers(0, 2, (40, 30))
    return write_panel(tmp_path / "real.hapt", x)


VCF_HEAD = (
    "##fileformat=VCFv4.2\n##contig=<ID=1,length=1000>\n"
    '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
    '##FORMAT=<ID=DP,Number=1,Type=Integer,Description="Depth">\n'
    "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tS1\tS2\tS3\n"
)


def bad_inputs(tmp_path, good_panel):
    """(haplotypes file, extra flags, what the message must say) for each kind of bad input."""
    no_gt = tmp_path / "nogt.vcf"
    no_gt.write_text(VCF_HEAD.replace('##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n', "")
                     + "1\t10\tr\tA\tG\t.\tPASS\t.\tDP\t3\t4\t5\n")  # fmt: skip
    ploidy = tmp_path / "ploidy.vcf"
    ploidy.write_text(VCF_HEAD + "1\t10\tr\tA\tG\t.\tPASS\t.\tGT\t0|1\t1\t0|0\n")
    two = tmp_path / "two.hapt"
    two.write_text("Real a_A 0 1 0\nReal a_B 0 2 0\n")
    ragged = tmp_path / "ragged.hapt"
    ragged.write_text("Real a_A 0 1 0\nReal a_B 0 1\n")
    few = write_panel(tmp_path / "few.hapt", np.zeros((6, 5), int))  # 3 people
    short = write_panel(tmp_path / "short.hapt", np.zeros((10, 29), int), tag="AG")
    return [
        (no_gt, [], "nogt.vcf: the header declares no FORMAT GT field"),
        (ploidy, [], "ploidy.vcf:6: record 1:10: sample S2 has ploidy 1, others 2: mixed ploidy"),
        (two, [], "two.hapt:2: column 4: allele '2' is not 0 or 1"),
        (ragged, [], "ragged.hapt:2: 2 SNPs, but the first row has 3"),
        (few, [], "too few haplotypes for the split: 6 haplotypes of 3 individuals"),
        (good_panel, ["--compare", f"AG={short}"], "short.hapt: 29 SNPs, but the real panel has 30"),
        (good_panel, ["--legend", str(few)], "expected 'id position a0 a1'"),
        (good_panel, ["--test-fraction", "1.5"], "config field 'test_fraction': must be in (0, 1)"),
    ]


def test_genomes_bad_input_gives_one_line_and_writes_nothing(tiny_export, tmp_path, good_panel, capsys):
    from cluster.cli import main

    for i, (panel, extra, message) in enumerate(bad_inputs(tmp_path, good_panel)):
        out = tmp_path / f"out{i}"
        argv = ["genomes", "--haplotypes", str(panel), "--checkpoint", str(tiny_export), "--out", str(out)]
        assert main([*argv, "--no-mlflow", *extra]) == 1, message
        err = capsys.readouterr().err.strip()
        assert message in err and "Traceback" not in err and len(err.splitlines()) <= 2, err
        assert not out.exists(), message


def test_genomes_dry_run_and_missing_checkpoint(tmp_path, good_panel, capsys):
    from cluster.cli import main

    assert main(["genomes", "--dry-run", "--num", "7", "--compare", f"GAN={good_panel}"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["num"] == 7 and cfg["compare"] == [f"GAN={good_panel}"]
    out = tmp_path / "out"
    argv = [
        "genomes",
        "--haplotypes",
        str(good_panel),
        "--checkpoint",
        str(tmp_path / "nope"),
        "--out",
        str(out),
    ]
    assert main(argv) == 1
    assert "no model.safetensors + config.json" in capsys.readouterr().err and not out.exists()
