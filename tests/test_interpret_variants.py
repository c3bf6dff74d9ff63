"""Variant effects: every skip reason counted, the three scores checked against the model by hand,
MLflow, and the errors of `dnafm variants`."""

from __future__ import annotations

import csv
import json
import sqlite3

import numpy as np
import pytest
import torch

from tests.conftest import run_cli
from tests.test_interpret_attention import save_untrained_classifier

HEADER = "##fileformat=VCFv4.2\n##contig=<ID=chrA>\n##contig=<ID=chrZ>\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"


@pytest.fixture(scope="module")
def genome_and_vcf(tmp_path_factory):
    """chrA: 6 kb of random bases with an N run at 4,400-4,409; chrZ is in the VCF but not the genome."""
    root = tmp_path_factory.mktemp("variants")
    rng = np.random.default_rng(3)
    seq = list(rng.choice(list("ACGT"), size=6000))
    seq[4400:4410] = "N" * 10
    chra = "".join(seq)
    (root / "genome.fa").write_text(
        ">chrA test\n" + "\n".join(chra[i : i + 70] for i in range(0, 6000, 70)) + "\n"
    )
    ref = lambda pos: chra[pos - 1]  # noqa: E731  (VCF positions are 1-based)
    other = lambda b: "ACGT"[("ACGT".index(b) + 1) % 4]  # noqa: E731
    rows = [
        ("chrA", 2500, "snv", ref(2500), other(ref(2500))),
        ("chrA", 3000, "multi", ref(3000), f"{other(ref(3000))},{other(other(ref(3000)))}"),
        ("chrA", 3100, "wrongref", other(ref(3100)), ref(3100)),
        ("chrA", 3200, "del", chra[3199:3201], ref(3200)),
        ("chrA", 3300, "mnp", chra[3299:3301], other(ref(3300)) + other(ref(3301))),
        ("chrA", 3400, "sv", ref(3400), "<DEL>"),
        ("chrA", 12, "edge", ref(12), other(ref(12))),
        ("chrA", 4420, "nearN", ref(4420), other(ref(4420))),
        ("chrZ", 100, "nocontig", "A", "G"),
    ]
    body = "".join(f"{c}\t{p}\t{i}\t{r}\t{a}\t.\tPASS\t.\n" for c, p, i, r, a in rows)
    (root / "v.vcf").write_text(HEADER + body)
    return root, chra


EXPECTED = {
    "snv": ["scored"],
    "multi": ["scored", "scored"],
    "wrongref": ["ref_mismatch"],
    "del": ["indel"],
    "mnp": ["mnp"],
    "sv": ["symbolic"],
    "edge": ["near_chrom_end"],
    "nearN": ["n_in_window"],
    "nocontig": ["missing_contig"],
}


def read_table(path):
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


def run_variants(checkpoint, root, out, *extra):
    proc = run_cli(
        "variants", "--checkpoint", str(checkpoint), "--vcf", str(root / "v.vcf"), "--genome", str(root / "genome.fa"),
        "--out", str(out), *extra,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_table(out / "variants.tsv")
    got: dict[str, list[str]] = {}
    for r in rows:
        got.setdefault(r["id"], []).append(r["status"])
    assert got == EXPECTED
    return rows, json.loads((out / "summary.json").read_text())


def windows_of(chra: str, pos: int, alt: str, width: int) -> tuple[str, str]:
    start = pos - 1 - width // 2
    ref = chra[start : start + width]
    return ref, ref[: width // 2] + alt + ref[width // 2 + 1 :]


def test_classifier_effect(tmp_path, genome_and_vcf):
    from eval.heads import encode_inputs
    from eval.saved_model import load_checkpoint

    root, chra = genome_and_vcf
    save_untrained_classifier("tiny-dnabert", tmp_path / "ft")
    rows, summary = run_variants(tmp_path / "ft", root, tmp_path / "out")
    assert summary["window_bp"] == 60 and summary["mode"] == "classifier"
    assert summary["counts"] == {
        "scored": 3, "indel": 1, "mnp": 1, "symbolic": 1, "missing_contig": 1, "near_chrom_end": 1,
        "n_in_window": 1, "ref_mismatch": 1,
    }  # fmt: skip
    loaded = load_checkpoint(tmp_path / "ft")
    snv = next(r for r in rows if r["id"] == "snv")
    ids, ask = encode_inputs(
        "dnabert",
        loaded.tokenizer,
        list(windows_of(chra, 2500, snv["alt"], 60)),
        species_token="R",
        max_len=128,
    )
    with torch.no_grad():
        p = torch.softmax(loaded.classifier(torch.from_numpy(ids), torch.from_numpy(ask)).double(), -1)[
            :, 1
        ].numpy()
    assert float(snv["p_ref"]) == pytest.approx(p[0], rel=1e-4)
    assert float(snv["delta_prob"]) == pytest.approx(p[1] - p[0], abs=1e-6)
    logit = np.log(p) - np.log1p(-p)
    assert float(snv["delta_logodds"]) == pytest.approx(logit[1] - logit[0], rel=1e-3, abs=1e-6)
    # the MLflow run holds the counts and the table
    db = sqlite3.connect(tmp_path / "out" / "mlflow.db")
    metrics = dict(db.execute("select key, value from metrics").fetchall())
    assert metrics["variants/scored"] == 3 and metrics["variants/ref_mismatch"] == 1
    assert any((tmp_path / "out" / "mlartifacts").rglob("variants.tsv"))
    tags = dict(db.execute("select key, value from tags").fetchall())
    experiments = [name for (name,) in db.execute("select name from experiments")]
    assert tags["dnafm.stage"] == "variants" and "dnafm-variants" in experiments


def test_dnagpt_loglik_effect(tmp_path, genome_and_vcf):
    from tests.helpers import untrained_export

    root, chra = genome_and_vcf
    untrained_export("tiny-dnagpt", tmp_path / "gpt")
    rows, summary = run_variants(
        tmp_path / "gpt", root, tmp_path / "out", "--no-mlflow", "--set", "window_bp=120"
    )
    assert summary["mode"] == "dnagpt log-likelihood"
    from eval.saved_model import load_checkpoint

    loaded = load_checkpoint(tmp_path / "gpt")
    snv = next(r for r in rows if r["id"] == "snv")
    tok, model = loaded.tokenizer, loaded.model
    lls = []
    for w in windows_of(chra, 2500, snv["alt"], 120):
        ids = torch.tensor([[tok.token_to_id("<R>"), *tok.encode(w)]])
        with torch.no_grad():
            logp = torch.log_softmax(model.lm_logits(model(ids)).double(), -1)
        lls.append(sum(float(logp[0, t, ids[0, t + 1]]) for t in range(ids.shape[1] - 1)))
    assert float(snv["ll_ref"]) == pytest.approx(lls[0], rel=1e-5)
    assert float(snv["delta_ll"]) == pytest.approx(lls[1] - lls[0], abs=1e-4)


def test_dnabert_masked_logodds(tmp_path, genome_and_vcf):
    from tests.helpers import untrained_export

    root, chra = genome_and_vcf
    untrained_export("tiny-dnabert", tmp_path / "bert")
    rows, summary = run_variants(tmp_path / "bert", root, tmp_path / "out", "--no-mlflow")
    assert summary["window_bp"] == 131 and summary["mode"] == "dnabert masked log-odds"
    from eval.saved_model import load_checkpoint

    loaded = load_checkpoint(tmp_path / "bert")
    tok, model = loaded.tokenizer, loaded.model
    snv = next(r for r in rows if r["id"] == "snv")
    ref, alt = windows_of(chra, 2500, snv["alt"], 131)
    ref_ids = [tok.cls_id, *tok.encode(ref), tok.sep_id]
    alt_ids = [tok.cls_id, *tok.encode(alt), tok.sep_id]
    covering = [i for i in range(len(ref_ids)) if ref_ids[i] != alt_ids[i]]
    assert len(covering) == 6  # the six 6-mers that hold the variant, and only those differ
    masked = torch.tensor([[tok.mask_id if i in covering else t for i, t in enumerate(ref_ids)]])
    with torch.no_grad():
        logp = torch.log_softmax(model.mlm_logits(model(masked)).double(), -1)[0]
    want = sum(float(logp[i, alt_ids[i]] - logp[i, ref_ids[i]]) for i in covering)
    assert float(snv["mlm_logodds"]) == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_errors(tmp_path, genome_and_vcf):
    from tests.helpers import untrained_export

    root, _ = genome_and_vcf
    ck = untrained_export("tiny-dnabert", tmp_path / "bert")
    base = ["variants", "--checkpoint", str(ck), "--genome", str(root / "genome.fa"), "--no-mlflow"]
    proc = run_cli(
        *base, "--vcf", str(root / "v.vcf"), "--out", str(tmp_path / "o"), "--set", "on_ref_mismatch=error"
    )
    assert proc.returncode == 1 and "chrA:3100 REF" in proc.stderr and "assembly" in proc.stderr
    assert not (tmp_path / "o" / "variants.tsv").exists()
    bad = tmp_path / "bad.vcf"
    bad.write_text(HEADER + "chrA\t2500\tok\tA\tG\t.\tPASS\t.\nchrA\tabc\tbad\tA\tG\t.\tPASS\t.\n")
    proc = run_cli(*base, "--vcf", str(bad), "--out", str(tmp_path / "o"))
    assert proc.returncode == 1 and f"{bad}:6: malformed VCF record" in proc.stderr
    junk = tmp_path / "junk.vcf"
    junk.write_text("not a vcf\n")
    proc = run_cli(*base, "--vcf", str(junk), "--out", str(tmp_path / "o"))
    assert proc.returncode == 1 and "not a readable VCF" in proc.stderr
    only_z = tmp_path / "z.vcf"
    only_z.write_text(HEADER + "chrZ\t100\tz\tA\tG\t.\tPASS\t.\n")
    proc = run_cli(*base, "--vcf", str(only_z), "--out", str(tmp_path / "o"))
    assert proc.returncode == 1 and "holds none of the VCF's contigs (chrZ)" in proc.stderr
    proc = run_cli(
        *base, "--vcf", str(root / "v.vcf"), "--out", str(tmp_path / "o"), "--set", "window_bp=500"
    )
    assert proc.returncode == 1 and "at most 131 bp" in proc.stderr
