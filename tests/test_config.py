"""Config dataclasses: overrides, validation messages naming the field, recipes."""

from __future__ import annotations

import json

import pytest

from datapipe.common.config import ConfigError
from datapipe.common.errors import UsageError
from datapipe.prepare import PrepareConfig
from trainer.families import count_params
from trainer.recipes import RECIPES, get_recipe


def test_overrides_coerce_types_and_revalidate():
    cfg = get_recipe("tiny-dnagpt").with_overrides(
        ["optim.lr=3e-4", "train.steps=7", "optim.betas=[0.8,0.9]", "tracking.enabled=false"]
    )
    assert cfg.optim.lr == 3e-4 and cfg.train.steps == 7 and cfg.optim.betas == (0.8, 0.9)
    assert cfg.tracking.enabled is False
    assert get_recipe("tiny-dnagpt").optim.lr != 3e-4  # recipes are fresh objects


@pytest.mark.parametrize(
    "override, field, words",
    [
        ("optim.lr=-1", "optim.lr", "must be > 0"),
        ("train.zero_stage=5", "train.zero_stage", "0, 1, 2 or 3"),
        ("train.steps=abc", "train.steps", "integer"),
        ("model.d_model=130", "model.d_model", "divisible"),
        ("optim.nope=1", "optim.nope", "unknown field"),
        ("model.vocab_size=100", "model.vocab_size", "does not match tokenizer"),
        ("train.precision=fp8", "train.precision", "must be one of"),
        ("nosection.x=1", "nosection", "no such config section"),
    ],
)
def test_validation_errors_name_the_field(override, field, words):
    with pytest.raises(ConfigError) as err:
        get_recipe("tiny-dnagpt").with_overrides([override])
    assert err.value.field == field
    assert words in str(err.value)


def test_prepare_config_validation():
    with pytest.raises(ConfigError, match="tokenizer"):
        PrepareConfig(tokenizer="bpe")
    with pytest.raises(ConfigError, match="max_n_frac"):
        PrepareConfig(max_n_frac=1.5)


def test_dict_round_trip_and_json(tmp_path):
    cfg = get_recipe("dnagpt-m")
    again = type(cfg).from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    cfg.save_json(tmp_path / "c.json")
    assert json.loads((tmp_path / "c.json").read_text())["model"]["vocab_size"] == 19564


@pytest.mark.parametrize(
    "name, ctx, vocab, lo, hi",
    [
        ("dnagpt-h", 4096, 15659, 0.09e9, 0.11e9),
        ("dnagpt-m", 4096, 19564, 0.09e9, 0.12e9),
        ("dnagpt-s-512", 512, 19564, 0.09e9, 0.11e9),
        ("dnagpt-b-512", 512, 19564, 2.9e9, 3.2e9),
    ],
)
def test_published_recipes(name, ctx, vocab, lo, hi):
    cfg = get_recipe(name)
    assert cfg.model.max_seq_len == ctx and cfg.model.vocab_size == vocab
    assert lo < count_params(cfg) < hi
    assert (cfg.optim.lr, tuple(cfg.optim.betas), cfg.optim.weight_decay, cfg.optim.grad_clip) == (
        1e-4,
        (0.9, 0.98),
        0.01,
        1.0,
    )


def test_every_recipe_resolves():
    for name in RECIPES:
        assert get_recipe(name).recipe == name


def test_resume_accepts_a_config_saved_before_fields_were_added():
    """A checkpoint's config lacks the fields dnafm gained since (here the released-head options): they hold
    their defaults, so resuming with the same recipe is no change; a real change is still refused."""
    from trainer.pretrain import _check_resumable

    cfg = get_recipe("tiny-dnagpt")
    saved = json.loads(json.dumps(cfg.to_dict()))
    for field in ("lm_head", "gelu"):
        del saved["model"][field]
    del saved["tracking"]["log_model"]
    _check_resumable(saved, cfg)
    with pytest.raises(UsageError, match="model.gelu"):
        _check_resumable(saved, cfg.with_overrides(["model.gelu=tanh"]))
