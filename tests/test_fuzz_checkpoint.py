"""Fuzzing the checkpoint files dnafm itself reads (DeepSpeed's own are guarded by trainer.checkpoint.check_pickles,
see tests/test_fuzz_security.py): ``latest``, ``dnafm_state.json`` and the per-rank RNG state file."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import torch
from hypothesis import given

from tests.fuzz import fuzz, mutated, outcome
from trainer.checkpoint import check_pickles, latest_tag, read_state, restore_rng

TAG = "step0000300"
STATE = {
    "world_size": 1,
    "zero_stage": 1,
    "loader": {"version": 2, "samples_consumed": 4800, "seed": 0, "skipped_shards": []},
    "config": {
        "recipe": "tiny-dnagpt",
        "family": "dnagpt",
        "tokenizer": "dnagpt-6mer",
        "model": {"n_layer": 2},
    },
    "mlflow_run_id": None,
    "step": 300,
    "tag": TAG,
}
_buf = io.BytesIO()
torch.save({"torch": torch.get_rng_state()}, _buf)
RNG = _buf.getvalue()


def _folder(tmp: Path, *, latest: bytes = TAG.encode(), state: bytes | None = None, rng: bytes = RNG) -> Path:
    (tmp / TAG).mkdir()
    (tmp / TAG / "COMPLETE").write_text("")
    (tmp / TAG / "dnafm_state.json").write_bytes(state if state is not None else json.dumps(STATE).encode())
    (tmp / TAG / "rng_rank0.pt").write_bytes(rng)
    (tmp / "latest").write_bytes(latest)
    return tmp


def _resume_reads(folder: Path):
    """What `pretrain --resume` and `export` read of a checkpoint before DeepSpeed opens it."""
    tag = latest_tag(folder)
    state = read_state(folder, tag)
    check_pickles(folder / tag)
    restore_rng(folder, tag, 0)
    return state["step"]


@fuzz(2)
@given(data=mutated([json.dumps(STATE, indent=2).encode()]))
def test_state_file(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = _folder(Path(tmp), state=data)
        outcome(
            "checkpoint.dnafm_state",
            _resume_reads,
            folder,
            names=(folder / TAG / "dnafm_state.json",),
            watch=folder,
        )


@fuzz()
@given(data=mutated([TAG.encode(), TAG.encode() + b"\n"]))
def test_latest_file(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = _folder(Path(tmp), latest=data)
        outcome("checkpoint.latest", _resume_reads, folder, names=(folder / "latest",), watch=folder)


@fuzz()
@given(data=mutated([RNG], max_ops=2))
def test_rng_file(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = _folder(Path(tmp), rng=data)
        outcome(
            "checkpoint.rng_pt", _resume_reads, folder, names=(folder / TAG / "rng_rank0.pt",), watch=folder
        )
