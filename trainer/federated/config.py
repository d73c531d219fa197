"""The federation config: one TOML file, typed sections, every error reported at once.

Documented keys (see ``trainer/examples/fl-digits.toml``)::

    [federation]   sites, rounds, local_epochs, batch_size, seed, threads, round_timeout
    [model]        factory = "MODULE:FACTORY", params = {...}      (as `trainguard train`)
    [data]         dataset = "digits" | "MODULE:FUNCTION", test_fraction
    [optimizer]    name = "sgd" | "adam", lr, momentum, weight_decay
    [aggregation]  method = mean | median | trimmed-mean | centered-clip | krum, trim, clip_tau,
                   clip_iters, krum_f, krum_m, flag_after (consecutive flagged ROUNDS before a
                   byzantine-worker incident), exclude_flagged
    [simulate]     TEST FACILITY: byzantine_sites = ["site-2"], attack, strength, start_round

The trainer's sections are reused as they are (`aggregation.method` takes the trainer's names);
keys of theirs that mean nothing for a federation (compression, momentum of the DDP hook) are
accepted and ignored. ``--set SECTION.KEY=VALUE`` overrides any key with a TOML value.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainguard.core.config import build_section
from trainguard.trainer.config import (
    Aggregation,
    AggregationSection,
    Attack,
    DataSection,
    ModelSection,
    OptimizerSection,
    merge_overrides,
)
from trainguard.trainer.errors import TrainConfigError

__all__ = ["FLConfigError", "FederationConfig", "FederationSection", "FLSimulateSection", "load_fl_config",
           "site_names"]


class FLConfigError(TrainConfigError):
    """The federation config is invalid; `problems` lists every problem found (exit 2)."""

    def __init__(self, problems: list[str], *, source: str) -> None:
        super().__init__(problems, source=source)
        self.tip = "fix the listed keys (see trainer/examples/fl-digits.toml for every documented key)"


def site_names(n: int) -> list[str]:
    return [f"site-{i}" for i in range(1, n + 1)]


@dataclass(frozen=True)
class FederationSection:
    sites: int = 3
    rounds: int = 5
    local_epochs: int = 1
    batch_size: int = 32
    seed: int = 0
    threads: int = 1  # torch threads per site process
    round_timeout: float = 120.0  # seconds the server waits for a round's updates

    def validate(self) -> list[str]:
        out = []
        if self.sites < 1 or self.rounds < 1 or self.local_epochs < 1 or self.batch_size < 1:
            out.append("sites, rounds, local_epochs and batch_size must be >= 1")
        if self.threads < 1 or self.round_timeout <= 0:
            out.append("threads must be >= 1 and round_timeout positive")
        return out


@dataclass(frozen=True)
class FLSimulateSection:
    """TEST FACILITY: chosen sites send poisoned updates. Never set it in production; every
    launch with it set is recorded in the audit log and flagged in the result."""

    byzantine_sites: list[str] = field(default_factory=list)
    attack: Attack = Attack.SIGN_FLIP
    strength: float = 0.0  # 0: the attack's default (trainer/testing/simulate.py)
    start_round: int = 1

    @property
    def active(self) -> bool:
        return bool(self.byzantine_sites)


_SECTIONS: dict[str, type[Any]] = {
    "federation": FederationSection,
    "model": ModelSection,
    "data": DataSection,
    "optimizer": OptimizerSection,
    "aggregation": AggregationSection,
    "simulate": FLSimulateSection,
}


@dataclass(frozen=True)
class FederationConfig:
    federation: FederationSection = FederationSection()
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    optimizer: OptimizerSection = OptimizerSection()
    aggregation: AggregationSection = AggregationSection()
    simulate: FLSimulateSection = FLSimulateSection()
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def sites(self) -> list[str]:
        return site_names(self.federation.sites)


def _cross_check(cfg: FederationConfig) -> list[str]:
    out = []
    agg, n = cfg.aggregation, cfg.federation.sites
    if agg.method is Aggregation.TRIMMED_MEAN and 2 * agg.trim >= n:
        out.append(f"[aggregation] trimmed-mean with trim={agg.trim} needs more than {2 * agg.trim} sites")
    if agg.method is Aggregation.KRUM and n < 2 * agg.krum_f + 3:
        out.append(f"[aggregation] krum with krum_f={agg.krum_f} needs at least {2 * agg.krum_f + 3} sites")
    unknown = sorted(set(cfg.simulate.byzantine_sites) - set(cfg.sites))
    if unknown:
        out.append(f"[simulate] byzantine_sites {unknown} are not among {cfg.sites[0]}..{cfg.sites[-1]}")
    return out


def build_fl_config(data: Mapping[str, Any], *, source: str) -> FederationConfig:
    """Validate merged TOML data; raises FLConfigError listing every problem."""
    problems: list[str] = []
    built: dict[str, Any] = {}
    for name, raw in data.items():
        cls = _SECTIONS.get(name)
        if cls is None:
            problems.append(f"unknown section [{name}] (known: {', '.join(_SECTIONS)})")
        elif not isinstance(raw, dict):
            problems.append(f"[{name}] must be a table")
        else:
            built[name] = build_section(name, cls, raw, problems)
    cfg = FederationConfig(**built, raw=dict(data))
    problems += _cross_check(cfg)  # on what could be built: every problem is reported at once
    if problems:
        raise FLConfigError(problems, source=source)
    return cfg


def load_fl_config(path: Path, overrides: Iterable[str] = ()) -> FederationConfig:
    """Read `path`, apply `--set` overrides, validate. All problems are reported together."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise FLConfigError([f"no such file {path}"], source=str(path)) from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FLConfigError([f"not valid TOML: {exc}"], source=str(path)) from exc
    return build_fl_config(merge_overrides(data, overrides), source=str(path))
