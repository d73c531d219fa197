"""The federation config: one TOML file, typed sections, every error reported at once.

Documented keys (see ``trainer/examples/fl-digits.toml``)::

    [federation]   sites, rounds, local_epochs, batch_size, seed, threads, round_timeout,
                   compress = "none" | "int8", rounding = "stochastic" | "nearest" (int8 site
                   updates), monitor (per-site update statistics), secure_aggregation (SecAgg+:
                   the server learns only the sum), checkpoints (a sealed, signed global model
                   per round on the server)
    [privacy]      dp = true: client-side clipping to clip_norm + Gaussian noise of
                   noise_multiplier x clip_norm / sites on the mean; epsilon at delta per round
    [model]        factory = "MODULE:FACTORY", params = {...}      (as `trainguard train`)
    [data]         dataset = "digits" | "MODULE:FUNCTION", test_fraction
    [optimizer]    name = "sgd" | "adam", lr, momentum, weight_decay
    [aggregation]  method = mean | median | trimmed-mean | centered-clip | krum, trim, clip_tau,
                   clip_iters, krum_f, krum_m, flag_after (consecutive flagged ROUNDS before a
                   byzantine-worker incident), exclude_flagged
    [simulate]     TEST FACILITY: byzantine_sites = ["site-2"], attack, strength, start_round,
                   tamper_model_round (the server alters that round's model after signing it)

The trainer's sections are reused as they are (`aggregation.method` takes the trainer's names);
keys of theirs that mean nothing for a federation (compression, momentum of the DDP hook) are
accepted and ignored. ``--set SECTION.KEY=VALUE`` overrides any key with a TOML value.
"""

from __future__ import annotations

import enum
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

__all__ = ["FLConfigError", "FederationConfig", "FederationSection", "FLSimulateSection",
           "PrivacySection", "Rounding", "UpdateCompression", "load_fl_config", "site_names"]


class FLConfigError(TrainConfigError):
    """The federation config is invalid; `problems` lists every problem found (exit 2)."""

    def __init__(self, problems: list[str], *, source: str) -> None:
        super().__init__(problems, source=source)
        self.tip = "fix the listed keys (see trainer/examples/fl-digits.toml for every documented key)"


class UpdateCompression(enum.StrEnum):
    NONE = "none"
    INT8 = "int8"  # per-tensor scale, dequantised at the server before aggregation


class Rounding(enum.StrEnum):
    STOCHASTIC = "stochastic"  # unbiased: E[dequantised] = the update
    NEAREST = "nearest"  # half a step of error at most, biased


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
    compress: UpdateCompression = UpdateCompression.NONE
    rounding: Rounding = Rounding.STOCHASTIC
    monitor: bool = True  # per-site update statistics, flagging and exclusion
    secure_aggregation: bool = False  # SecAgg+: the server sees only the sum of the updates
    checkpoints: bool = True  # a sealed, signed global model per round (needs the key service)

    def validate(self) -> list[str]:
        out = []
        if self.sites < 1 or self.rounds < 1 or self.local_epochs < 1 or self.batch_size < 1:
            out.append("sites, rounds, local_epochs and batch_size must be >= 1")
        if self.threads < 1 or self.round_timeout <= 0:
            out.append("threads must be >= 1 and round_timeout positive")
        return out


@dataclass(frozen=True)
class PrivacySection:
    """Differential privacy at the site level (Flower's central DP with client-side fixed
    clipping): each site clips its update to `clip_norm`, the server re-clips every row and
    adds Gaussian noise of std `noise_multiplier * clip_norm / n` to the mean of n rows."""

    dp: bool = False
    noise_multiplier: float = 1.0
    clip_norm: float = 1.0
    delta: float = 1e-5

    def validate(self) -> list[str]:
        out = []
        if self.noise_multiplier <= 0 or self.clip_norm <= 0:
            out.append("noise_multiplier and clip_norm must be positive")
        if not 0.0 < self.delta < 1.0:
            out.append("delta must be in (0, 1) (typically below 1 / the number of records)")
        return out


@dataclass(frozen=True)
class FLSimulateSection:
    """TEST FACILITY: chosen sites send poisoned updates. Never set it in production; every
    launch with it set is recorded in the audit log and flagged in the result."""

    byzantine_sites: list[str] = field(default_factory=list)
    attack: Attack = Attack.SIGN_FLIP
    strength: float = 0.0  # 0: the attack's default (trainer/testing/simulate.py)
    start_round: int = 1
    tamper_model_round: int = 0  # > 0: the server alters that round's model after signing it

    @property
    def active(self) -> bool:
        return bool(self.byzantine_sites) or self.tamper_model_round > 0


_SECTIONS: dict[str, type[Any]] = {
    "federation": FederationSection,
    "model": ModelSection,
    "data": DataSection,
    "optimizer": OptimizerSection,
    "aggregation": AggregationSection,
    "privacy": PrivacySection,
    "simulate": FLSimulateSection,
}


@dataclass(frozen=True)
class FederationConfig:
    federation: FederationSection = FederationSection()
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    optimizer: OptimizerSection = OptimizerSection()
    aggregation: AggregationSection = AggregationSection()
    privacy: PrivacySection = PrivacySection()
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
    out += _option_conflicts(cfg)
    unknown = sorted(set(cfg.simulate.byzantine_sites) - set(cfg.sites))
    if unknown:
        out.append(f"[simulate] byzantine_sites {unknown} are not among {cfg.sites[0]}..{cfg.sites[-1]}")
    return out


def _option_conflicts(cfg: FederationConfig) -> list[str]:
    """Combinations that cannot work, refused at load rather than failing in round 1."""
    out = []
    fed, method = cfg.federation, cfg.aggregation.method
    if fed.secure_aggregation:
        if method is not Aggregation.MEAN:
            out.append(f"[federation] secure_aggregation gives the server only the sum of the updates; "
                       f"aggregation.method = {method.value} needs each site's update (use mean)")
        if fed.monitor:
            out.append("[federation] secure_aggregation hides each site's update, so per-site "
                       "monitoring cannot run: set federation.monitor = false")
        if fed.compress is not UpdateCompression.NONE:
            out.append("[federation] compress = int8 scales each site's update on its own; SecAgg+ "
                       "sums masked integers of one common scale: use compress = none")
    if cfg.privacy.dp and method is not Aggregation.MEAN:
        out.append(f"[privacy] the noise is calibrated to the mean of clipped updates (sensitivity "
                   f"clip_norm / sites); aggregation.method = {method.value} has another "
                   "sensitivity: use mean")
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
