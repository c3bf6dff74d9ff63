"""Fuzzing the config surfaces: ``--set FIELD=VALUE`` overrides of every stage's config, a saved config read back
(``Config.from_dict`` of a run's config.json), and a ``--deepspeed_config`` file."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from datapipe.common.config import ConfigError, flatten
from datapipe.common.errors import UserError
from datapipe.prepare_config import PrepareConfig
from eval.run import EvalConfig
from tests.fuzz import SPECIAL, fuzz, mutated, outcome, write
from trainer.config import PretrainConfig
from trainer.generate_cli import GenerateConfig
from trainer.recipes import get_recipe

CONFIGS = {
    "prepare": PrepareConfig(),
    "pretrain": get_recipe("tiny-dnagpt"),
    "pretrain-bert": get_recipe("tiny-dnabert"),
    "eval": EvalConfig(),
    "generate": GenerateConfig(),
}
KEYS = sorted({k for cfg in CONFIGS.values() for k in flatten(cfg.to_dict())})
_text = st.text(max_size=12)
VALUES = st.one_of(
    st.sampled_from([s.decode("utf-8", "replace") for s in SPECIAL]),
    st.sampled_from(
        ["true", "null", "[]", "[1,2]", '{"a": 1}', "1.5", "-0", "1e308", "NaN", "Infinity", "-Infinity"]
    ),
    st.integers().map(str),
    st.floats(allow_nan=True).map(str),
    _text,
)
OVERRIDE = st.one_of(
    st.tuples(st.sampled_from(KEYS), VALUES).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.tuples(st.sampled_from(KEYS), _text, VALUES).map(lambda kv: f"{kv[0]}{kv[1]}={kv[2]}"),
    _text,
)


@fuzz(3)
@given(stage=st.sampled_from(sorted(CONFIGS)), overrides=st.lists(OVERRIDE, min_size=1, max_size=3))
def test_set_overrides(stage: str, overrides: list[str]) -> None:
    """Any --set list gives a valid config or a ConfigError/UsageError naming the field (never a traceback)."""
    try:
        CONFIGS[stage].with_overrides(overrides)
    except ConfigError as err:
        assert err.field, err
    except UserError:
        pass


SAVED = [
    json.dumps(cfg.to_dict(), indent=2).encode() for cfg in (CONFIGS["pretrain"], CONFIGS["pretrain-bert"])
]


@fuzz(2)
@given(data=mutated(SAVED))
def test_saved_config(data: bytes) -> None:
    """A run's config.json, damaged: the JSON layer is the reader's job (json errors are ValueErrors it must
    turn into a message); any parsed mapping must give a config or a ConfigError."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return
    try:
        PretrainConfig.from_dict(value)
    except ConfigError as err:
        assert err.field, err


def _resolve(path: Path):
    from cluster.cli import build_parser
    from trainer.cli import resolve

    args = build_parser().parse_args(["pretrain", "--deepspeed_config", str(path)])
    return resolve(args)


DS = [
    b'{"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2,'
    b' "zero_optimization": {"stage": 1}, "optimizer": {"type": "AdamW"}}'
]


@fuzz()
@given(data=mutated(DS))
def test_deepspeed_config_file(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        outcome("config.deepspeed_json", _resolve, write(Path(tmp), "ds.json", data))
