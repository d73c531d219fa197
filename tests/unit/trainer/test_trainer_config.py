"""The job config: typed sections, every problem at once, --set overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from trainguard.trainer.config import (
    Aggregation,
    Attack,
    cross_check,
    load_train_config,
    parse_override,
)
from trainguard.trainer.errors import TrainConfigError

EXAMPLE = Path(__file__).resolve().parents[3] / "trainer" / "examples" / "digits.toml"


def test_example_config_loads_with_documented_keys() -> None:
    cfg = load_train_config(EXAMPLE)
    assert cfg.aggregation.method is Aggregation.MEAN
    assert cfg.model.factory == "trainguard.trainer.models:digits_mlp"
    assert cfg.checkpoint.dir.is_absolute()
    assert cfg.checkpoint.dir.parent == EXAMPLE.parent
    assert not cfg.simulate.active


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    p = tmp_path / "job.toml"
    p.write_text(
        '[train]\nsteps = "many"\n[aggregation]\nmethod = "avg"\n[bogus]\nx = 1\n'
        '[optimizer]\nname = "lbfgs"\n'
    )
    with pytest.raises(TrainConfigError) as err:
        load_train_config(p)
    text = err.value.message
    for needle in ("[train].steps", "[aggregation].method", "unknown section [bogus]", "lbfgs"):
        assert needle in text
    assert len(err.value.problems) == 4


def test_set_overrides_take_toml_values_and_bare_strings() -> None:
    cfg = load_train_config(
        EXAMPLE,
        ['aggregation.method="median"', "train.steps=7", "simulate.byzantine_ranks=[1, 2]",
         "simulate.attack=alie"],
    )
    assert cfg.aggregation.method is Aggregation.MEDIAN
    assert cfg.train.steps == 7
    assert cfg.simulate.byzantine_ranks == [1, 2]
    assert cfg.simulate.attack is Attack.ALIE
    assert cfg.simulate.active


@pytest.mark.parametrize("bad", ["steps=3", "train.steps", "a.b.c=1", ".x=1"])
def test_malformed_override_is_a_usage_error(bad: str) -> None:
    with pytest.raises(TrainConfigError):
        parse_override(bad)


@given(st.integers(-10**6, 10**6))
def test_override_round_trips_integers(n: int) -> None:
    assert parse_override(f"train.steps={n}") == (["train", "steps"], n)


def test_impossible_combinations_are_refused_before_launch() -> None:
    cfg = load_train_config(EXAMPLE, ['aggregation.method="krum"', "simulate.byzantine_ranks=[5]"])
    problems = cross_check(cfg, world_size=3)
    assert any("krum" in p for p in problems)
    assert any("byzantine_ranks" in p for p in problems)
    cfg = load_train_config(EXAMPLE, ['aggregation.method="trimmed-mean"', "aggregation.trim=1"])
    assert cross_check(cfg, 3) == []
    assert cross_check(cfg, 2)


@pytest.mark.parametrize("method", ["median", "trimmed-mean", "centered-clip", "krum"])
def test_powersgd_with_a_robust_rule_is_refused_at_load(method: str) -> None:
    with pytest.raises(TrainConfigError, match="powersgd works with method = mean only"):
        load_train_config(EXAMPLE, [f'aggregation.method="{method}"', 'aggregation.compress="powersgd"'])
    cfg = load_train_config(EXAMPLE, [f'aggregation.method="{method}"', 'aggregation.compress="bf16"'])
    assert cfg.aggregation.compress.value == "bf16"
    assert load_train_config(EXAMPLE, ['aggregation.compress="powersgd"']).aggregation.compress.value == "powersgd"
