"""The `dnafm` command as a user meets it: help, dry runs, and one clear error per bad input."""

from __future__ import annotations

import gzip
import json

import pytest

from tests.conftest import REPO, run_cli

GENOME = str(REPO / "data/genomes/grch37_chr20_44-46Mb.fa.gz")


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["prepare", "--help"],
        ["pretrain", "--help"],
        ["eval", "--help"],
        ["generate", "--help"],
        ["genomes", "--help"],
        ["demo", "--help"],
        ["export", "--help"],
        ["import", "--help"],
    ],
)
def test_help(args):
    proc = run_cli(*args)
    assert proc.returncode == 0 and "usage: dnafm" in proc.stdout


def test_dry_runs_print_the_resolved_config(tmp_path):
    proc = run_cli("pretrain", "--recipe", "dnagpt-b-512", "--set", "optim.lr=2e-4", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    text, _, count = proc.stdout.rpartition("# parameters:")
    assert json.loads(text)["optim"]["lr"] == 2e-4 and "3.0" in count  # ~3B
    proc = run_cli("prepare", GENOME, "--species", "human", "--out", str(tmp_path / "o"), "--dry-run")
    assert proc.returncode == 0 and json.loads(proc.stdout)["inputs"][0]["token"] == "R"
    assert not (tmp_path / "o").exists()
    proc = run_cli("eval", "--tasks", "pas-human", "--dry-run")
    assert proc.returncode == 0 and json.loads(proc.stdout)["tasks"] == ["pas-human"]
    proc = run_cli("demo", "--dry-run")
    assert proc.returncode == 0 and "dnafm pretrain --recipe tiny-dnagpt" in proc.stdout


def bad_inputs(tmp_path):
    (tmp_path / "before.fa").write_text("ACGT\n>r1\nACGT\n")
    (tmp_path / "badchar.fa").write_text(">r1\nACGT\nAC-GT\n")
    (tmp_path / "empty_record.fa").write_text(">r1\n>r2\nACGT\n")
    (tmp_path / "binary.fa").write_bytes(b">r1\nAC\x00\xff\x10GT\n")
    blob = gzip.compress(b">r1\n" + b"ACGTACGTAC\n" * 5000)
    (tmp_path / "truncated.fa.gz").write_bytes(blob[: len(blob) // 2])
    return {
        "before.fa": ":1:",
        "badchar.fa": ":3:",
        "empty_record.fa": ":1:",
        "binary.fa": ":2:",
        "truncated.fa.gz": "truncated",
    }


def test_malformed_fasta_fails_cleanly_without_partial_output(tmp_path, ray_cluster):
    # The session's Ray instance, not one started per run: five Ray start-ups made this test 104 s, not 42 s.
    for name, where in bad_inputs(tmp_path).items():
        out = tmp_path / f"out-{name}"
        proc = run_cli("prepare", str(tmp_path / name), "--species", "human", "--out", str(out), "--no-mlflow",
                       "--ray-address", ray_cluster)  # fmt: skip
        assert proc.returncode == 1, (name, proc.stderr)
        err = proc.stderr.strip().splitlines()[-1]
        assert err.startswith("dnafm prepare: error:") and name in err and where in err, err
        assert not out.exists(), f"{name}: partial output left behind"


@pytest.mark.parametrize(
    "args, words",
    [
        (["prepare", GENOME, "--species", "dog", "--out", "X"], "unknown species 'dog'"),
        (["prepare", "/nonexistent.fa", "--species", "human", "--out", "X"], "does not exist"),
        (["prepare", GENOME, "--out", "X"], "--species is required"),
        (
            ["prepare", GENOME, "--species", "human", "--out", "X", "--set", "window_tokens=0"],
            "window_tokens",
        ),
        (["pretrain", "--data", "/nonexistent", "--out", "X", "--no-mlflow"], "manifest.json not found"),
        (["pretrain", "--set", "train.zero_stage=7", "--dry-run"], "train.zero_stage"),
        (["eval", "--checkpoint", "/nonexistent", "--out", "X"], "no model.safetensors"),
        (["eval", "--tasks", "nope", "--dry-run"], "unknown task"),
    ],
)
def test_bad_arguments_give_one_clear_error(args, words, tmp_path):
    args = [str(tmp_path / "X") if a == "X" else a for a in args]
    proc = run_cli(*args)
    assert proc.returncode != 0
    assert words in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "X").exists()


def test_dnabert_prepare_needs_no_species(tmp_path):
    """DNABERT samples carry no species token: the species defaults to 'unspecified' (metadata only), while a
    DNAGPT prepare still asks for it."""
    proc = run_cli("prepare", GENOME, "--tokenizer", "dnabert-6", "--out", str(tmp_path / "o"), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    (spec,) = json.loads(proc.stdout)["inputs"]
    assert spec["species"] == "unspecified" and spec["token"] == ""
    proc = run_cli("prepare", GENOME, "--out", str(tmp_path / "o"), "--dry-run")
    assert proc.returncode == 1 and "--species is required" in proc.stderr


def test_an_internal_error_shows_its_traceback_and_says_it_is_a_bug(monkeypatch, capsys):
    """Only expected errors (bad input, a wrong value) are one line; a programming error keeps its traceback."""
    from cluster import cli
    from eval import cli as eval_cli

    def broken(args):
        return {}["no such key"]  # a KeyError no user input could cause

    monkeypatch.setattr(eval_cli, "run", broken)
    assert cli.main(["eval", "--tasks", "pas-human"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'no such key'" in err and "this is a bug in dnafm" in err
