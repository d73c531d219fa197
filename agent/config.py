"""Settings of the node agent (`[agent]`), with defaults.

Every interval is in seconds. Listeners are off unless configured: the unix socket always runs,
the mTLS TCP listener only when `listen` is set (e.g. ``"0.0.0.0:8443"``), and `/metrics` only
when `metrics_listen` is set (documented port: ``"127.0.0.1:9839"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["AgentConfig"]


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

    cycle_seconds: float = 15.0  # telemetry sample + scoring
    checks_seconds: float = 300.0  # posture checks
    listen: str = ""  # mTLS TCP listener HOST:PORT; empty = off
    metrics_listen: str = ""  # Prometheus /metrics HOST:PORT; empty = off
    max_request_bytes: int = 1 << 20
    request_timeout_seconds: float = 30.0
    allowed_uids: list[int] = field(default_factory=list)  # extra local uids besides root and owner
    admin_names: list[str] = field(default_factory=list)  # user certs allowed on the TCP API

    def validate(self) -> list[str]:
        problems: list[str] = []
        for key in ("cycle_seconds", "checks_seconds", "request_timeout_seconds"):
            if getattr(self, key) <= 0:
                problems.append(f"{key} must be > 0")
        if not 1024 <= self.max_request_bytes <= 64 << 20:
            problems.append("max_request_bytes must be between 1024 and 67108864")
        for key in ("listen", "metrics_listen"):
            p = _hostport_problem(key, getattr(self, key))
            if p:
                problems.append(p)
        return problems
