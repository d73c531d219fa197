"""The training job config: one TOML file, typed sections, every error reported at once.

Documented keys (see ``trainer/examples/digits.toml``)::

    [model]        factory = "MODULE:FACTORY", params = {...}
    [data]         dataset = "digits" | "MODULE:FUNCTION", test_fraction
    [optimizer]    name = "sgd" | "adam", lr, momentum, weight_decay
    [train]        steps, seed, batch_size (per rank), eval_every, threads, backend
    [aggregation]  method = mean | median | trimmed-mean | centered-clip | krum, trim, clip_tau,
                   clip_iters, momentum, krum_f, krum_m, flag_after, exclude_flagged,
                   compress = none | bf16 | powersgd, powersgd_rank, powersgd_start
    [checkpoint]   dir, every, keep
    [consistency]  every
    [telemetry]    every
    [adversarial]  method = none | fgsm-rs | pgd | trades, eps
    [simulate]     TEST FACILITY: byzantine_ranks, attack, strength, start_step, kill_rank, kill_at_step

Relative paths are resolved against the folder of the config file. ``--set KEY=VALUE`` overrides
any key with a TOML value (``--set aggregation.method="median"``; a bare word is a string).
"""

from __future__ import annotations

import dataclasses
import enum
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainguard.core.config import build_sections
from trainguard.trainer.errors import TrainConfigError


class Aggregation(enum.StrEnum):
    MEAN = "mean"
    MEDIAN = "median"
    TRIMMED_MEAN = "trimmed-mean"
    CENTERED_CLIP = "centered-clip"
    KRUM = "krum"


class Compress(enum.StrEnum):
    NONE = "none"
    BF16 = "bf16"  # every rule: rows travel as bfloat16, half the bytes
    POWERSGD = "powersgd"  # mean only: torch's PowerSGD hook with error feedback


class Attack(enum.StrEnum):
    SIGN_FLIP = "sign-flip"
    SCALE = "scale"
    ALIE = "alie"
    IPM = "ipm"


class AdversarialMethod(enum.StrEnum):
    NONE = "none"
    FGSM_RS = "fgsm-rs"
    PGD = "pgd"
    TRADES = "trades"


@dataclass(frozen=True)
class ModelSection:
    factory: str = "trainguard.trainer.models:digits_mlp"
    params: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> list[str]:
        mod, sep, attr = self.factory.partition(":")
        return [] if (mod and sep and attr) else [f"factory {self.factory!r} is not MODULE:FACTORY"]


@dataclass(frozen=True)
class DataSection:
    dataset: str = "digits"
    test_fraction: float = 0.25

    def validate(self) -> list[str]:
        out = []
        if self.dataset != "digits" and ":" not in self.dataset:
            out.append(f"dataset {self.dataset!r} is neither 'digits' nor MODULE:FUNCTION")
        if not 0.0 < self.test_fraction < 1.0:
            out.append("test_fraction must be between 0 and 1")
        return out


@dataclass(frozen=True)
class OptimizerSection:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0

    def validate(self) -> list[str]:
        out = []
        if self.name not in ("sgd", "adam"):
            out.append(f"name {self.name!r} is not one of sgd, adam")
        if self.lr <= 0:
            out.append("lr must be positive")
        return out


@dataclass(frozen=True)
class TrainSection:
    steps: int = 300
    seed: int = 0
    batch_size: int = 32
    eval_every: int = 0  # 0: evaluate only at the end
    threads: int = 1
    backend: str = "auto"  # gloo on CPU, nccl when CUDA is available

    def validate(self) -> list[str]:
        out = []
        if self.steps < 1:
            out.append("steps must be >= 1")
        if self.batch_size < 1:
            out.append("batch_size must be >= 1")
        if self.backend not in ("auto", "gloo", "nccl"):
            out.append(f"backend {self.backend!r} is not one of auto, gloo, nccl")
        return out


@dataclass(frozen=True)
class AggregationSection:
    method: Aggregation = Aggregation.MEAN
    trim: int = 1  # trimmed-mean: rows dropped at each end
    clip_tau: float = 0.2  # centered-clip: clipping radius
    clip_iters: int = 1
    momentum: float = 0.9  # centered-clip: worker momentum (Karimireddy et al. 2021)
    krum_f: int = 1  # krum: assumed number of Byzantine ranks
    krum_m: int = 1  # 1 = Krum, > 1 = Multi-Krum
    flag_after: int = 5  # consecutive flagged steps before a byzantine-worker incident
    exclude_flagged: bool = True  # a flagged rank's updates are dropped under every rule
    compress: Compress = Compress.NONE
    powersgd_rank: int = 2  # PowerSGD: rank of the low-rank approximation
    powersgd_start: int = 10  # PowerSGD: plain all-reduce before this step (torch's warm-up)

    def validate(self) -> list[str]:
        out = []
        if self.compress is Compress.POWERSGD and self.method is not Aggregation.MEAN:
            out.append(f"compress = powersgd works with method = mean only, not {self.method.value}"
                       " (use compress = bf16 with a robust rule)")
        if self.powersgd_rank < 1 or self.powersgd_start < 0:
            out.append("powersgd_rank must be >= 1 and powersgd_start >= 0")
        if self.trim < 0 or self.krum_f < 0 or self.krum_m < 1 or self.clip_iters < 1:
            out.append("trim and krum_f must be >= 0, krum_m and clip_iters >= 1")
        if self.clip_tau <= 0:
            out.append("clip_tau must be positive")
        if not 0.0 <= self.momentum < 1.0:
            out.append("momentum must be in [0, 1)")
        if self.flag_after < 1:
            out.append("flag_after must be >= 1")
        return out


@dataclass(frozen=True)
class CheckpointSection:
    dir: Path = Path("checkpoints")
    every: int = 100  # 0: only at the end
    keep: int = 3

    def validate(self) -> list[str]:
        return [] if self.every >= 0 and self.keep >= 1 else ["every must be >= 0 and keep >= 1"]


@dataclass(frozen=True)
class ConsistencySection:
    every: int = 50  # parameter-hash agreement every K steps (0: only at the end)


@dataclass(frozen=True)
class TelemetrySection:
    every: int = 10


@dataclass(frozen=True)
class AdversarialSection:
    method: AdversarialMethod = AdversarialMethod.NONE
    eps: float = 0.1
    steps: int = 3  # PGD/TRADES inner steps


@dataclass(frozen=True)
class SimulateSection:
    """TEST FACILITY: fault injection to exercise the defences. Never set it in production;
    every launch with it set is recorded in the audit log."""

    byzantine_ranks: list[int] = field(default_factory=list)
    attack: Attack = Attack.SIGN_FLIP
    strength: float = 0.0  # 0: the attack's default
    start_step: int = 0
    kill_rank: int = -1  # SIGKILL this rank at kill_at_step on the first attempt
    kill_at_step: int = 0

    @property
    def active(self) -> bool:
        return bool(self.byzantine_ranks) or self.kill_rank >= 0


_SECTIONS: dict[str, type[Any]] = {
    "model": ModelSection,
    "data": DataSection,
    "optimizer": OptimizerSection,
    "train": TrainSection,
    "aggregation": AggregationSection,
    "checkpoint": CheckpointSection,
    "consistency": ConsistencySection,
    "telemetry": TelemetrySection,
    "adversarial": AdversarialSection,
    "simulate": SimulateSection,
}


@dataclass(frozen=True)
class TrainConfig:
    """The validated job config. `raw` is the merged TOML (what workers re-load)."""

    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    optimizer: OptimizerSection = OptimizerSection()
    train: TrainSection = TrainSection()
    aggregation: AggregationSection = AggregationSection()
    checkpoint: CheckpointSection = CheckpointSection()
    consistency: ConsistencySection = ConsistencySection()
    telemetry: TelemetrySection = TelemetrySection()
    adversarial: AdversarialSection = AdversarialSection()
    simulate: SimulateSection = SimulateSection()
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`section.key=VALUE` -> (["section", "key"], value); VALUE is TOML, else a bare string."""
    key, sep, value = item.partition("=")
    parts = [p.strip() for p in key.strip().split(".")]
    if not sep or len(parts) != 2 or not all(parts):
        raise TrainConfigError([f"--set {item!r} is not SECTION.KEY=VALUE"], source="--set")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return parts, parsed


def merge_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for item in overrides:
        (section, key), value = parse_override(item)
        table = merged.setdefault(section, {})
        if isinstance(table, dict):
            table[key] = value
    return merged


def build_config(data: Mapping[str, Any], *, source: str, base_dir: Path) -> TrainConfig:
    """Validate merged TOML data; raises TrainConfigError listing every problem."""
    problems: list[str] = []
    built = build_sections(data, _SECTIONS.get, problems, known=_SECTIONS)
    if problems:
        raise TrainConfigError(problems, source=source)
    cfg = TrainConfig(**built, raw=dict(data))
    ckpt_dir = cfg.checkpoint.dir
    if not ckpt_dir.is_absolute():
        ckpt_dir = (base_dir / ckpt_dir).absolute()
    return dataclasses.replace(cfg, checkpoint=dataclasses.replace(cfg.checkpoint, dir=ckpt_dir))


def load_train_config(path: Path, overrides: Iterable[str] = ()) -> TrainConfig:
    """Read `path`, apply `--set` overrides, validate. All problems are reported together."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise TrainConfigError([f"no such file {path}"], source=str(path)) from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TrainConfigError([f"not valid TOML: {exc}"], source=str(path)) from exc
    merged = merge_overrides(data, overrides)
    return build_config(merged, source=str(path), base_dir=path.parent.absolute())


def cross_check(cfg: TrainConfig, world_size: int) -> list[str]:
    """Combinations that cannot work for this world size (refused before launch)."""
    out = []
    agg = cfg.aggregation
    if agg.method is Aggregation.TRIMMED_MEAN and 2 * agg.trim >= world_size:
        out.append(f"trimmed-mean with trim={agg.trim} needs more than {2 * agg.trim} ranks")
    if agg.method is Aggregation.KRUM and world_size < 2 * agg.krum_f + 3:
        out.append(f"krum with krum_f={agg.krum_f} needs at least {2 * agg.krum_f + 3} ranks")
    if agg.method is Aggregation.KRUM and agg.krum_m > world_size - agg.krum_f:
        out.append("krum_m must be <= world size - krum_f")
    if cfg.adversarial.method is AdversarialMethod.TRADES:
        # TRADES runs the DDP model twice per step (clean and perturbed), which DDP's reducer
        # does not allow without static_graph; refused rather than half-supported.
        out.append("adversarial.method = trades is not supported under DDP; use fgsm-rs or pgd")
    bad = [r for r in cfg.simulate.byzantine_ranks if not 0 <= r < world_size]
    if bad:
        out.append(f"simulate.byzantine_ranks {bad} outside 0..{world_size - 1}")
    return out
