"""Typed configuration: TOML in the home, environment overrides, validated at load.

Each component owns one frozen dataclass of settings with its defaults, and registers it here
under its TOML section name with `register_section` (the known sections are listed in
`_KNOWN_SECTIONS`, imported lazily so loading config never pulls in torch or sklearn).
Precedence: file < environment (``TRAINGUARD_<SECTION>_<KEY>``) < flags (applied by callers with
`dataclasses.replace`). Every error in a file is reported at once.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from trainguard.core.errors import UsageError

T = TypeVar("T")

ENV_PREFIX = "TRAINGUARD_"

log = logging.getLogger(__name__)


class ConfigError(UsageError):
    """The configuration is invalid; `problems` lists every problem found."""

    def __init__(self, problems: list[str], *, source: str) -> None:
        self.problems = problems
        lines = "\n  - ".join(problems)
        super().__init__(
            f"invalid configuration in {source}:\n  - {lines}",
            tip="fix the listed keys; `trainguard init --force` writes a fresh default file",
        )


@dataclass(frozen=True)
class NodeConfig:
    """Identity of this node inside its cluster."""

    cluster: str = "default"
    name: str = "node-1"


_REGISTRY: dict[str, type[Any]] = {"node": NodeConfig}

# Sections owned by other areas, imported on first use. module:Class
_KNOWN_SECTIONS: dict[str, str] = {
    "crypto": "trainguard.crypto.config:CryptoConfig",
    "policy": "trainguard.policy.config:PolicyConfig",
    "agent": "trainguard.agent.config:AgentConfig",
    "checks": "trainguard.agent.checks.config:ChecksConfig",
    "hooks": "trainguard.evidence.response.config:HooksConfig",
    "audit": "trainguard.evidence.config:AuditConfig",
    "incidents": "trainguard.evidence.config:IncidentsConfig",
    "anomaly": "trainguard.anomaly.config:AnomalyConfig",
}


# Keys that moved to another section: still read where they used to be, with a warning.
_MOVED_KEYS: dict[tuple[str, str], str] = {
    ("agent", "checkpoint_every"): "audit",
    ("agent", "checkpoint_seconds"): "audit",
    ("agent", "dedup_seconds"): "incidents",
    ("agent", "rate_limit"): "incidents",
    ("agent", "rate_window_seconds"): "incidents",
}


def _move_keys(data: dict[str, Any]) -> None:
    for (old, key), new in _MOVED_KEYS.items():
        table = data.get(old)
        if isinstance(table, dict) and key in table:
            value = table.pop(key)
            target = data.setdefault(new, {})
            if isinstance(target, dict):
                target.setdefault(key, value)
            log.warning("[%s] %s is deprecated: set it under [%s]", old, key, new)


def register_section(name: str, cls: type[Any]) -> None:
    """Register a frozen dataclass as the schema of the `[name]` section."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    _REGISTRY[name] = cls


def _section_class(name: str) -> type[Any] | None:
    if name in _REGISTRY:
        return _REGISTRY[name]
    target = _KNOWN_SECTIONS.get(name)
    if target is None:
        return None
    module, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None  # area not built into this install
    _REGISTRY[name] = cls
    return typing.cast(type[Any], cls)


@dataclass(frozen=True)
class Config:
    """The validated configuration of one home. `section()` gives a component its settings."""

    source: str
    sections: Mapping[str, Any] = field(default_factory=dict)

    @property
    def node(self) -> NodeConfig:
        return typing.cast(NodeConfig, self.section("node"))

    def section(self, name: str) -> Any:
        if name in self.sections:
            return self.sections[name]
        cls = _section_class(name)
        if cls is None:
            raise KeyError(f"unknown config section {name!r}")
        return cls()


def _coerce(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    """Check `value` against the annotation `tp`; returns the (possibly converted) value."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            sub: list[str] = []
            out = _coerce(value, arg, where, sub)
            if not sub:
                return out
        problems.append(f"{where}: {value!r} is not a valid {tp}")
        return None
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            problems.append(f"{where}: expected a list, got {type(value).__name__}")
            return None
        (arg,) = typing.get_args(tp)[:1] or (Any,)
        items = [_coerce(v, arg, f"{where}[{i}]", problems) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a table, got {type(value).__name__}")
            return None
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is Path and isinstance(value, str):
        return Path(value).expanduser()
    if isinstance(tp, type) and issubclass(tp, str) and isinstance(value, str):
        try:
            return tp(value)  # str enums
        except ValueError:
            problems.append(f"{where}: {value!r} is not one of {[m for m in tp.__members__]}")  # type: ignore[attr-defined]
            return None
    if isinstance(tp, type):
        if tp is int and isinstance(value, bool):
            problems.append(f"{where}: expected an integer, got a boolean")
            return None
        if not isinstance(value, tp):
            problems.append(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
            return None
    return value


def build_section(name: str, cls: type[T], raw: Mapping[str, Any], problems: list[str]) -> T:
    """Build dataclass `cls` from a raw table, appending every problem to `problems`."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            problems.append(f"[{name}] unknown key {key!r} (known: {', '.join(sorted(known))})")
            continue
        before = len(problems)
        out = _coerce(value, hints[key], f"[{name}].{key}", problems)
        if len(problems) == before:
            kwargs[key] = out
    validate = getattr(cls, "validate", None)
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        problems.append(f"[{name}] {exc}")
        return cls()
    if callable(validate):
        problems.extend(f"[{name}] {p}" for p in validate(obj))
    return obj


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """TRAINGUARD_<SECTION>_<KEY>=<TOML value> (a bare string is taken as a string)."""
    out: dict[str, dict[str, Any]] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or key == "TRAINGUARD_HOME":
            continue
        rest = key[len(ENV_PREFIX) :].lower()
        section, _, name = rest.partition("_")
        if not name or _section_class(section) is None:
            continue
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        out.setdefault(section, {})[name] = value
    return out


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Load and validate `path` (missing file = all defaults) plus environment overrides."""
    env = os.environ if environ is None else environ
    problems: list[str] = []
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"not valid TOML: {exc}"], source=str(path)) from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(["not UTF-8 text"], source=str(path)) from exc
    _move_keys(data)
    overrides = _env_overrides(env)
    _move_keys(overrides)
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    sections: dict[str, Any] = {}
    for name, raw in data.items():
        cls = _section_class(name)
        if cls is None:
            problems.append(f"unknown section [{name}]")
            continue
        if not isinstance(raw, dict):
            problems.append(f"[{name}] must be a table")
            continue
        sections[name] = build_section(name, cls, raw, problems)
    if problems:
        raise ConfigError(problems, source=str(path))
    return Config(source=str(path), sections=sections)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        s = str(value).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{s}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dump_sections(sections: Mapping[str, Any]) -> str:
    """Render dataclass sections as TOML (used by `init` to write the default file)."""
    lines: list[str] = []
    for name, obj in sections.items():
        lines.append(f"[{name}]")
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if value is None:
                continue
            lines.append(f"{f.name} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)
