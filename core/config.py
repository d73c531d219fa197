"""Typed configuration: TOML in the home, environment overrides, validated at load.

Each component owns one frozen dataclass of settings with its defaults; the class names its
TOML table in ``SECTION`` (a `Section`) and may check combinations in ``validate() -> list[str]``.
The sections of every area are listed in `_KNOWN_SECTIONS` (imported on first use, so loading a
config never pulls in torch or sklearn); `register_section` adds one more. A component reads its
settings with ``config.section(AgentConfig)``, which returns an ``AgentConfig``: the validated
table, or the defaults when the file has none.

Precedence: file < environment (``TRAINGUARD_<SECTION>_<KEY>``) < flags (`apply_flags`). Every
error is reported at once. `build_sections` is the same machinery for other TOML documents
(the trainer's job config).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from trainguard.core.errors import UsageError

T = TypeVar("T")

ENV_PREFIX = "TRAINGUARD_"

log = logging.getLogger(__name__)


class ConfigError(UsageError):
    """The configuration is invalid; `problems` lists every problem found."""

    def __init__(self, problems: list[str], *, source: str, tip: str | None = None) -> None:
        self.problems = problems
        lines = "\n  - ".join(problems)
        super().__init__(
            f"invalid configuration in {source}:\n  - {lines}",
            tip=tip or "fix the listed keys; `trainguard init --force` writes a fresh default file",
        )


class Section(Protocol):
    """A frozen dataclass of settings that names its TOML table (``[SECTION]``)."""

    SECTION: ClassVar[str]


S = TypeVar("S", bound=Section)


@dataclass(frozen=True)
class NodeConfig:
    """Identity of this node inside its cluster."""

    SECTION: ClassVar[str] = "node"

    cluster: str = "default"
    name: str = "node-1"


_REGISTRY: dict[str, type[Section]] = {NodeConfig.SECTION: NodeConfig}

# Sections owned by other areas, imported on first use. module:Class
_KNOWN_SECTIONS: dict[str, str] = {
    "crypto": "trainguard.crypto.config:CryptoConfig",
    "policy": "trainguard.policy.config:PolicyConfig",
    "agent": "trainguard.agent.config:AgentConfig",
    "checks": "trainguard.agent.checks.config:ChecksConfig",
    "hooks": "trainguard.evidence.response.config:HooksConfig",
    "audit": "trainguard.evidence.config:AuditConfig",
    "incidents": "trainguard.evidence.config:IncidentsConfig",
    "export": "trainguard.evidence.export.config:ExportConfig",
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


def register_section(cls: type[S]) -> type[S]:
    """Register a frozen dataclass as the schema of its `[cls.SECTION]` table (a decorator)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    _REGISTRY[cls.SECTION] = cls
    return cls


def _section_class(name: str) -> type[Section] | None:
    if name in _REGISTRY:
        return _REGISTRY[name]
    target = _KNOWN_SECTIONS.get(name)
    if target is None:
        return None
    # One wheel ships every area: a failing import is a broken install, never "not built".
    module, _, attr = target.partition(":")
    cls: type[Section] = getattr(importlib.import_module(module), attr)
    if cls.SECTION != name:
        raise TypeError(f"{target} names its section {cls.SECTION!r}, registered as {name!r}")
    _REGISTRY[name] = cls
    return cls


@dataclass(frozen=True)
class Config:
    """The validated configuration of one home. `section()` gives a component its settings."""

    source: str
    sections: Mapping[str, Section] = field(default_factory=dict)

    @property
    def node(self) -> NodeConfig:
        return self.section(NodeConfig)

    def section(self, cls: type[S]) -> S:
        """The settings of `cls` (``[cls.SECTION]``): as loaded and validated, else defaults."""
        value = self.sections.get(cls.SECTION)
        if value is None:
            return cls()
        if not isinstance(value, cls):
            raise TypeError(
                f"[{cls.SECTION}] holds a {type(value).__name__}, not a {cls.__name__}"
            )
        return value


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


def build_sections(
    data: Mapping[str, Any],
    classes: Callable[[str], type[Any] | None],
    problems: list[str],
    *,
    known: Iterable[str] = (),
) -> dict[str, Any]:
    """Build every table of a TOML document with `build_section`; `classes` maps a table name
    to its dataclass (None: unknown). Problems are appended; nothing is raised."""
    built: dict[str, Any] = {}
    names = ", ".join(known)
    for name, raw in data.items():
        cls = classes(name)
        if cls is None:
            problems.append(f"unknown section [{name}]" + (f" (known: {names})" if names else ""))
        elif not isinstance(raw, dict):
            problems.append(f"[{name}] must be a table")
        else:
            built[name] = build_section(name, cls, raw, problems)
    return built


def apply_flags(section: S, *, source: str = "the command line", **flags: Any) -> S:
    """`section` with the command-line values that were given (None = not given), validated
    by the same rules as the file: flags take precedence over file and environment.

    Raises:
        ConfigError: a flag value is out of range or of the wrong type.
    """
    given = {k: v for k, v in flags.items() if v is not None}
    if not given:
        return section
    problems: list[str] = []
    merged = {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}  # type: ignore[arg-type]
    merged.update(given)
    out = build_section(section.SECTION, type(section), merged, problems)
    if problems:
        raise ConfigError(problems, source=source, tip="pass a value within the listed limits")
    return out


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


def load_config(path: Path, environ: Mapping[str, str]) -> Config:
    """Load and validate `path` (missing file = all defaults) plus the overrides in `environ`
    (an entry point passes its environment; library code never reads it)."""
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
    overrides = _env_overrides(environ)
    _move_keys(overrides)
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    sections = build_sections(data, _section_class, problems)
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
