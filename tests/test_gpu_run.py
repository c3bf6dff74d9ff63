"""`./dev gpu` (bench/gpu.py): the dry run end to end on CPU, its table, the import guard, and the carried
wheels' offline resolve / install logic (on toy wheels built here: no registry, no GPU)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))

import gpu_report  # noqa: E402
import gpu_wheels  # noqa: E402

NUMBER = re.compile(r"^-?[\d,]+(\.\d+)?(e[-+]\d+)?\b")


def table_rows(text: str) -> list[list[str]]:
    """The cells of every line of the (one) Markdown table in ``text``, header first."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in lines]


@pytest.mark.slow
def test_dry_run_runs_every_part_and_prints_one_table(tmp_path):
    """`./dev gpu --dry-run` on CPU: every part runs (Triton through the interpreter), the run ends with the
    table it writes to the file, and every row carries a number and, beside a baseline, a ratio."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "DS_ACCELERATOR")}
    env["PYTHON"] = sys.executable
    out = tmp_path / "gpu"
    proc = subprocess.run(
        # a generous budget: the dry run checks that every part runs, not how fast, on a shared machine
        [str(REPO / "dev"), "gpu", "--dry-run", "--budget", "1800", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=2400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    written = (out / "gpu-table.md").read_text()
    assert written.strip() in proc.stdout  # the same table ends the output
    assert "DRY RUN" in written and "- Machine:" in written and "- Command: `./dev gpu --dry-run" in written
    rows = table_rows(written)
    assert rows[0] == gpu_report.HEAD
    body = rows[1:]
    for cells in body:
        assert len(cells) == len(gpu_report.HEAD), cells
        assert NUMBER.match(cells[2]), f"no number in the 'ours' cell: {cells}"
        if cells[3]:
            assert NUMBER.match(cells[3]) and re.fullmatch(r"\d+\.\d\dx", cells[4]), cells
    parts = [c[0] for c in body]
    cases = " ".join(c[1] for c in body)
    assert parts.count("ceiling") == 1
    for mode in ("fwd", "fwd+bwd"):  # 2 head_dims x 2 seqs x (causal, padded)
        assert parts.count(f"attention {mode}") == 8
        assert parts.count(f"k-mer embedding {mode}") == 2  # dnagpt-6mer and dnabert-6
    for want in ("hd 64,", "hd 128,", "causal", "padded", "dnagpt-6mer", "dnabert-6"):
        assert want in cases
    train = [c for c in body if c[0] == "training steps"]
    assert [c[1].split(" ")[0] for c in train] == ["dnagpt-s-512", "dnabert-6", "dnabert-6"]
    assert "torch.compile" in train[0][3] and "BertForMaskedLM" in train[2][3]
    for cells in train:  # ours took the fused k-mer embedding and the Triton attention, interpreted
        assert "attention Triton flash-attention (interpreter)" in cells[6]
        assert "kmer_embedding Triton k-mer kernel (interpreter)" in cells[6]
    tests = [c for c in body if c[0] == "GPU tests"]
    assert len(tests) == 1 and "-m gpu" in tests[0][1] and "skipped" in tests[0][6]
    assert "(MISMATCH)" not in written and "FAILED" not in written and "skipped (time)" not in written


def test_parts_refuse_the_packages_the_gpu_machine_lacks():
    code = "import sys; sys.argv = ['x']; import gpu; gpu.guard_imports(); import ray"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO / "bench",
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode != 0 and "ray is not available on the GPU machine" in proc.stderr


def test_render_marks_what_did_not_measure():
    rows = [
        dict(
            part="a", case="c", ours=1234.5, unit="GB/s", baseline=1000.0, baseline_name="copy", ratio=1.2345
        ),
        dict(part="b", case="c", ours=None, unit="TFLOP/s", status="skipped"),
        dict(part="c", case="c", ours=None, unit="", status="failed", note="x | y"),
        dict(
            part="d",
            case="c",
            ours=0.5,
            unit="TFLOP/s",
            status="mismatch",
            baseline=None,
            baseline_name="flash",
        ),
    ]
    body = table_rows(gpu_report.render(rows))[1:]
    assert body[0][2:5] == ["1,234 GB/s", "1,000 GB/s (copy)", "1.23x"]
    assert body[1][2] == "skipped (time)" and body[2][2] == "FAILED" and body[2][6] == "x / y"
    assert body[3][2:4] == ["0.5 TFLOP/s (MISMATCH)", "n/a (flash)"]


# ------------------------------------------------------------------------------------------ wheels


def toy_wheel(folder: Path, name: str, version: str, requires: list[str]) -> Path:
    """A minimal pure-Python wheel with one module ``name``."""
    dist = f"{name}-{version}"
    path = folder / f"{dist}-py3-none-any.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}/__init__.py", f"VERSION = '{version}'\n")
        z.writestr(f"{dist}.dist-info/METADATA", meta)
        z.writestr(
            f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        z.writestr(f"{dist}.dist-info/RECORD", "")
    return path


@pytest.fixture
def toy_wheels(tmp_path) -> Path:
    """dnafmprobe needs torch (installed here, as on the GPU machine) and dnafmprobedep (carried)."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    toy_wheel(folder, "dnafmprobe", "1.0", ["torch", "numpy", "dnafmprobedep>=1.0"])
    toy_wheel(folder, "dnafmprobedep", "1.2", [])
    return folder


def test_install_adds_only_what_the_machine_lacks(toy_wheels, tmp_path):
    """torch and numpy are installed here (as on the GPU machine): left alone, never walked; the carried
    dependency is installed beside the root, into the scratch folder only."""
    target = tmp_path / "site"
    said = gpu_wheels.install(toy_wheels, target, root="dnafmprobe")
    assert said.startswith("installed dnafmprobe, dnafmprobedep into") and "(pip --no-deps)" in said
    assert (target / "dnafmprobe" / "__init__.py").exists() and (target / "dnafmprobedep").is_dir()
    assert not (target / "torch").exists() and not (target / "numpy").exists()


def test_install_takes_a_carried_wheel_over_an_installed_one_too_old(toy_wheels, tmp_path, monkeypatch):
    toy_wheel(toy_wheels, "dnafmprobe", "1.0", ["numpy>=99", "dnafmprobedep>=1.0"])  # numpy here is older
    with pytest.raises(SystemExit, match=r"needs numpy>=99: this machine has [\d.]+ and .* carries none"):
        gpu_wheels.needed_wheels(toy_wheels, "dnafmprobe")
    toy_wheel(toy_wheels, "numpy", "99.0", [])
    monkeypatch.setattr(gpu_wheels, "_pip_install", lambda target, wheels: False)  # no usable pip
    said = gpu_wheels.install(toy_wheels, tmp_path / "site", root="dnafmprobe")
    assert said.startswith("unpacked ") and "numpy" in said
    assert (tmp_path / "site" / "numpy" / "__init__.py").read_text() == "VERSION = '99.0'\n"


def test_check_resolves_for_python_312_offline(toy_wheels, capsys):
    assert gpu_wheels.check(toy_wheels, root="dnafmprobe") == 0
    said = capsys.readouterr().out
    assert "dnafmprobe resolves offline for CPython 3.12" in said and "dnafmprobedep 1.2" in said
    assert re.search(r"= [\d.]+ MiB of 64 MiB", said)
    (toy_wheels / "dnafmprobedep-1.2-py3-none-any.whl").unlink()
    assert gpu_wheels.check(toy_wheels, root="dnafmprobe") == 1
    assert "does not resolve" in capsys.readouterr().out


def test_a_case_that_raises_becomes_a_failed_row_and_the_part_goes_on(capsys):
    import gpu_parts

    def broken():
        raise RuntimeError("Triton compile failed\nat line 3")

    r = gpu_parts.guarded("attention fwd", "hd 64", broken)
    assert r["status"] == "failed" and r["ours"] is None
    assert r["note"] == "RuntimeError: Triton compile failed"
    assert "Traceback" in capsys.readouterr().err
    assert gpu_report.render([r]).splitlines()[-1].split(" | ")[2] == "FAILED"


def test_every_part_ends_within_the_budget(tmp_path):
    import argparse

    import gpu

    args = argparse.Namespace(budget=470.0, dry_run=False, autotune=False, site=None)
    run = gpu.Run(args, tmp_path)
    for i in range(len(gpu.SHARES)):
        soft, hard = run.deadlines(i)
        assert soft <= hard <= run.end
    assert run.deadlines(len(gpu.SHARES) - 1)[1] == run.end


def test_a_part_stopped_at_its_time_limit_unwinds(tmp_path):
    """The run's _stop sends SIGTERM to a part's process group; the part turns it into SystemExit, so its
    cleanups run (a compile cache's lock file, say) and it ends with 143, not by SIGKILL."""
    import time

    import gpu

    code = "import sys, time\nsys.argv = ['x']\nimport gpu\ngpu.unwind_on_sigterm()\n"
    code += "try:\n    print('ready', flush=True)\n    time.sleep(60)\nfinally:\n    open('cleaned', 'w').close()\n"
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "bench")])},
        start_new_session=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    started = time.time()
    gpu._stop(proc)
    assert proc.returncode == 143 and (tmp_path / "cleaned").exists() and time.time() - started < 10
