"""Posture checks: small functions that each look at one property of the node and say how it is.

A check is registered with `register_check` and receives a `CheckContext` (the home, the config,
and every outside input injected: filesystem root, environment, subprocess runner, clock, NVML).
It returns an `Outcome`; `Check.run` wraps that into a `CheckResult` with the check's metadata.
A check that raises becomes `Status.ERROR`, never a crash.

Adding a check from another area (example: `agent/checks/integrity.py`)::

    from trainguard.agent.checks import CheckContext, Outcome, Severity, register_check

    @register_check(
        "deps-lock", "Installed packages match the dependency lock",
        severity=Severity.HIGH, controls=("SI-7", "SR-11"), atlas=("AML.T0010",),
    )
    def deps_lock(ctx: CheckContext) -> Outcome:
        ...
        return Outcome.fail("3 files differ", evidence={...}, remediation="run `trainguard deps verify`")

The module must be listed in `CHECK_MODULES` so `run_checks` imports it.
"""

from __future__ import annotations

import enum
import importlib
import logging
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from trainguard.agent.checks.config import ChecksConfig
from trainguard.core.config import Config
from trainguard.core.errors import UsageError
from trainguard.core.home import Home
from trainguard.evidence.incidents import Severity

__all__ = [
    "CHECK_MODULES",
    "Check",
    "CheckContext",
    "CheckFunc",
    "CheckResult",
    "Outcome",
    "Runner",
    "Severity",
    "Status",
    "UnknownCheck",
    "all_checks",
    "register_check",
    "run_checks",
    "subprocess_runner",
]

log = logging.getLogger(__name__)

# Modules whose import registers checks (one wheel ships them all: a failed import is an error).
CHECK_MODULES: tuple[str, ...] = (
    "trainguard.agent.checks.files",
    "trainguard.agent.checks.keys",
    "trainguard.agent.checks.network",
    "trainguard.agent.checks.identity",
    "trainguard.agent.checks.host",
    "trainguard.agent.checks.gpu",
    "trainguard.agent.checks.integrity",
)


class Status(enum.StrEnum):
    PASS = "pass"  # noqa: S105 - a check status, not a password
    FAIL = "fail"
    WARN = "warn"
    NOT_APPLICABLE = "not-applicable"
    ERROR = "error"


class UnknownCheck(UsageError):
    """`--id` named a check that does not exist (exit 2)."""


@dataclass(frozen=True)
class Outcome:
    """What a check function returns: status, one-line summary, evidence, remediation."""

    status: Status
    summary: str
    evidence: Mapping[str, Any] = field(default_factory=dict)
    remediation: str = ""

    @classmethod
    def passed(cls, summary: str, evidence: Mapping[str, Any] | None = None) -> Outcome:
        return cls(Status.PASS, summary, dict(evidence or {}))

    @classmethod
    def fail(
        cls, summary: str, evidence: Mapping[str, Any] | None = None, remediation: str = ""
    ) -> Outcome:
        return cls(Status.FAIL, summary, dict(evidence or {}), remediation)

    @classmethod
    def warn(
        cls, summary: str, evidence: Mapping[str, Any] | None = None, remediation: str = ""
    ) -> Outcome:
        return cls(Status.WARN, summary, dict(evidence or {}), remediation)

    @classmethod
    def not_applicable(cls, summary: str, evidence: Mapping[str, Any] | None = None) -> Outcome:
        return cls(Status.NOT_APPLICABLE, summary, dict(evidence or {}))

    @classmethod
    def error(
        cls, summary: str, evidence: Mapping[str, Any] | None = None, remediation: str = ""
    ) -> Outcome:
        return cls(Status.ERROR, summary, dict(evidence or {}), remediation)


class Runner(Protocol):
    """Runs a command without a shell; returns (exit code, stdout, stderr). Raises
    FileNotFoundError when the program does not exist."""

    def __call__(self, argv: Sequence[str], timeout: float) -> tuple[int, str, str]: ...


def subprocess_runner(argv: Sequence[str], timeout: float) -> tuple[int, str, str]:
    """The real runner: no shell, captured output, a timeout."""
    proc = subprocess.run(  # noqa: S603 - fixed argv from the checks, never user text
        list(argv), capture_output=True, text=True, timeout=timeout, check=False
    )
    return proc.returncode, proc.stdout, proc.stderr


@dataclass(frozen=True)
class CheckContext:
    """Everything a check may look at. Tests build one with fakes; nothing else is global.

    `root` is the filesystem root for /proc, /sys and /etc reads; `environ` is the training
    job's environment (MASTER_ADDR, NCCL_SOCKET_IFNAME, ...) when known, else empty; `nvml` is an
    `trainguard.agent.telemetry.nvml.NvmlBackend` or None for the real library; `if_addrs` (interface ->
    addresses), `resolve` (host name -> addresses) and `adjtimex` (kernel clock state) default to
    the real system calls when None.
    """

    home: Home
    config: Config
    environ: Mapping[str, str] = field(default_factory=dict)
    root: Path = Path("/")
    runner: Runner = subprocess_runner
    which: Callable[[str], str | None] = shutil.which
    clock: Callable[[], float] = time.time
    nvml: Any = None
    if_addrs: Callable[[], Mapping[str, Sequence[str]]] | None = None
    resolve: Callable[[str], Sequence[str]] | None = None
    adjtimex: Callable[[], Any] | None = None

    @property
    def checks(self) -> ChecksConfig:
        """The `[checks]` section."""
        return self.config.section(ChecksConfig)

    def path(self, absolute: str) -> Path:
        """`absolute` (like "/proc/net/dev") under the injected root."""
        return self.root / absolute.lstrip("/")


CheckFunc = Callable[[CheckContext], Outcome]


@dataclass(frozen=True)
class CheckResult:
    id: str
    title: str
    severity: Severity
    controls: tuple[str, ...]
    atlas: tuple[str, ...]
    status: Status
    summary: str
    evidence: Mapping[str, Any]
    remediation: str
    duration_ms: float

    @property
    def failed(self) -> bool:
        return self.status is Status.FAIL

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "severity": self.severity.value,
            "controls": list(self.controls),
            "atlas": list(self.atlas),
            "status": self.status.value,
            "summary": self.summary,
            "evidence": dict(self.evidence),
            "remediation": self.remediation,
            "duration_ms": round(self.duration_ms, 2),
        }


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    severity: Severity
    controls: tuple[str, ...]
    func: CheckFunc
    atlas: tuple[str, ...] = ()

    def run(self, ctx: CheckContext) -> CheckResult:
        """Run the check; an exception or a bad return value becomes `Status.ERROR`."""
        start = time.perf_counter()
        try:
            outcome = self.func(ctx)
            if not isinstance(outcome, Outcome):
                raise TypeError(f"check returned {type(outcome).__name__}, not Outcome")
        except Exception as exc:  # noqa: BLE001 - a broken check must not stop the others
            log.warning("check %s raised %s: %s", self.id, type(exc).__name__, exc)
            outcome = Outcome.error(
                f"the check itself failed: {type(exc).__name__}: {exc}",
                {"exception": type(exc).__name__},
                "re-run with -v; if it persists, report it",
            )
        return CheckResult(
            id=self.id,
            title=self.title,
            severity=self.severity,
            controls=self.controls,
            atlas=self.atlas,
            status=outcome.status,
            summary=outcome.summary,
            evidence=dict(outcome.evidence),
            remediation=outcome.remediation,
            duration_ms=(time.perf_counter() - start) * 1000,
        )


_REGISTRY: dict[str, Check] = {}


def register_check(
    id: str,  # noqa: A002 - the public name of the field
    title: str,
    *,
    severity: Severity,
    controls: Iterable[str],
    atlas: Iterable[str] = (),
) -> Callable[[CheckFunc], CheckFunc]:
    """Decorator: register `func` as check `id`. Registering the same id twice is refused."""

    def deco(func: CheckFunc) -> CheckFunc:
        existing = _REGISTRY.get(id)
        if existing is not None and _origin(existing.func) != _origin(func):
            raise ValueError(f"check id {id!r} is already registered by {_origin(existing.func)}")
        _REGISTRY[id] = Check(id, title, severity, tuple(controls), func, tuple(atlas))
        return func

    return deco


def _origin(func: CheckFunc) -> str:
    # A module reloaded in a test re-registers the same function under the same name.
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', '?')}"


def _load_modules() -> None:
    for name in CHECK_MODULES:
        importlib.import_module(name)


def all_checks() -> list[Check]:
    """Every registered check, in id order."""
    _load_modules()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def run_checks(
    home: Home,
    config: Config,
    ids: Iterable[str] | None = None,
    *,
    context: CheckContext | None = None,
) -> list[CheckResult]:
    """Run the checks named in `ids` (all when None) once and return their results.

    Args:
        context: injected inputs; default: the real machine, no training environment.
    Raises:
        UnknownCheck: an id in `ids` is not registered.
    """
    checks = all_checks()
    if ids is not None:
        wanted = list(dict.fromkeys(ids))
        known = {c.id: c for c in checks}
        unknown = [i for i in wanted if i not in known]
        if unknown:
            raise UnknownCheck(
                f"unknown check id(s): {', '.join(unknown)}",
                tip=f"known ids: {', '.join(sorted(known))}",
            )
        checks = [known[i] for i in wanted]
    ctx = context if context is not None else CheckContext(home=home, config=config)
    return [c.run(ctx) for c in checks]
