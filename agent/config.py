"""Settings of the node agent (`[agent]`), with defaults.

Every interval is in seconds. Listeners are off unless configured: the unix socket always runs,
the mTLS TCP listener only when `listen` is set (e.g. ``"0.0.0.0:8443"``), and `/metrics` only
when `metrics_listen` is set (documented port: ``"127.0.0.1:9839"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

__all__ = ["SYSTEMD_SOCKET", "AgentConfig", "client_socket", "server_socket"]

SYSTEMD_SOCKET = Path("/run/trainguard/agent.sock")


def _hostport_problem(key: str, value: str) -> str | None:
    if not value:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"{key} must be HOST:PORT (got {value!r})"
    return None


@dataclass(frozen=True)
class AgentConfig:
    """The daemon: cycle intervals, listeners, request limits, who may call the API.

    Audit checkpoint cadence is `[audit]` and incident dedup and rate limits `[incidents]`
    (`trainguard.evidence.config`); the same keys under `[agent]` are still read there.
    """

    SECTION: ClassVar[str] = "agent"

    cycle_seconds: float = 15.0  # telemetry sample + scoring
    checks_seconds: float = 300.0  # posture checks
    listen: str = ""  # mTLS TCP listener HOST:PORT; empty = off
    metrics_listen: str = ""  # Prometheus /metrics HOST:PORT; empty = off
    max_request_bytes: int = 1 << 20
    request_timeout_seconds: float = 30.0
    # The unix socket. Empty: $RUNTIME_DIRECTORY/agent.sock under systemd (RuntimeDirectory=,
    # /run/trainguard), else <home>/state/agent.sock. Outside the home it is mode 0666: any
    # local account may connect, and the agent decides from its uid (SO_PEERCRED).
    socket: str = ""
    allowed_uids: list[int] = field(default_factory=list)  # extra local uids besides root and owner
    admin_names: list[str] = field(default_factory=list)  # user certs allowed on the TCP API

    def validate(self) -> list[str]:
        problems: list[str] = []
        for key in ("cycle_seconds", "checks_seconds", "request_timeout_seconds"):
            if getattr(self, key) <= 0:
                problems.append(f"{key} must be > 0")
        if not 1024 <= self.max_request_bytes <= 64 << 20:
            problems.append("max_request_bytes must be between 1024 and 67108864")
        if self.socket and len(self.socket.encode()) > 100:
            problems.append("socket: path too long for a unix socket (at most 100 bytes)")
        for key in ("listen", "metrics_listen"):
            p = _hostport_problem(key, getattr(self, key))
            if p:
                problems.append(p)
        return problems


def _configured(home_root: Path, config: AgentConfig) -> Path | None:
    if not config.socket:
        return None
    path = Path(config.socket).expanduser()
    return path if path.is_absolute() else home_root / path


def server_socket(home_root: Path, config: AgentConfig, environ: Mapping[str, str]) -> Path:
    """Where the agent listens: `[agent] socket`, else the systemd runtime directory, else
    the home's state folder."""
    configured = _configured(home_root, config)
    if configured is not None:
        return configured
    runtime = environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime:
        return Path(runtime) / "agent.sock"
    return home_root / "state" / "agent.sock"


def client_socket(
    home_root: Path | None, config: AgentConfig | None, environ: Mapping[str, str]
) -> Path:
    """Where a client finds the agent. With a readable home: its `[agent] socket`, else the
    home's socket when it exists, else the systemd default when that exists. Without one (a
    system home this account cannot read): $TRAINGUARD_SOCKET, else the systemd default."""
    if home_root is not None and config is not None:
        configured = _configured(home_root, config)
        if configured is not None:
            return configured
        local = home_root / "state" / "agent.sock"
        if not local.exists() and SYSTEMD_SOCKET.exists():
            return SYSTEMD_SOCKET
        return local
    explicit = environ.get("TRAINGUARD_SOCKET")
    return Path(explicit) if explicit else SYSTEMD_SOCKET
