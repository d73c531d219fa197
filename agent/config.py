"""Settings of the node agent (`[agent]`) and of incident hooks (`[hooks]`), with defaults.

Every interval is in seconds. Listeners are off unless configured: the unix socket always runs,
the mTLS TCP listener only when `listen` is set (e.g. ``"0.0.0.0:8443"``), and `/metrics` only
when `metrics_listen` is set (documented port: ``"127.0.0.1:9839"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trainguard.core.audit import IncidentKind

__all__ = ["ACTION_NAMES", "AgentConfig", "HooksConfig"]

ACTION_NAMES = ("webhook", "kill", "quarantine", "revoke", "stop-training")


def _hostport_problem(key: str, value: str) -> str | None:
    if not value:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"{key} must be HOST:PORT (got {value!r})"
    return None


@dataclass(frozen=True)
class AgentConfig:
    """The daemon: cycle intervals, listeners, audit checkpoints, incident dedup and limits."""

    cycle_seconds: float = 15.0  # telemetry sample + scoring
    checks_seconds: float = 300.0  # posture checks
    listen: str = ""  # mTLS TCP listener HOST:PORT; empty = off
    metrics_listen: str = ""  # Prometheus /metrics HOST:PORT; empty = off
    checkpoint_every: int = 1000  # audit entries between signed checkpoints
    checkpoint_seconds: float = 300.0  # ... or at most this long
    max_request_bytes: int = 1 << 20
    request_timeout_seconds: float = 30.0
    dedup_seconds: float = 300.0  # same kind + same evidence key within this window = one incident
    rate_limit: int = 60  # at most this many incidents ...
    rate_window_seconds: float = 60.0  # ... per window; the rest are counted and audited as dropped
    allowed_uids: list[int] = field(default_factory=list)  # extra local uids besides root and owner
    admin_names: list[str] = field(default_factory=list)  # user certs allowed on the TCP API

    def validate(self) -> list[str]:
        problems: list[str] = []
        for key in (
            "cycle_seconds",
            "checks_seconds",
            "checkpoint_seconds",
            "rate_window_seconds",
            "request_timeout_seconds",
        ):
            if getattr(self, key) <= 0:
                problems.append(f"{key} must be > 0")
        if self.dedup_seconds < 0:
            problems.append("dedup_seconds must be >= 0")
        for key in ("checkpoint_every", "rate_limit"):
            if getattr(self, key) < 1:
                problems.append(f"{key} must be >= 1")
        if not 1024 <= self.max_request_bytes <= 64 << 20:
            problems.append("max_request_bytes must be between 1024 and 67108864")
        for key in ("listen", "metrics_listen"):
            p = _hostport_problem(key, getattr(self, key))
            if p:
                problems.append(p)
        return problems


@dataclass(frozen=True)
class HooksConfig:
    """Incident hooks: executables in hooks.d/ and the built-in actions per incident kind.

    `actions` maps an incident kind (or ``"*"`` for every kind) to built-in action names, e.g.
    ``gpu-misuse = ["kill", "webhook"]``. Executables in hooks.d/ run for every incident.
    """

    timeout_seconds: float = 10.0
    max_output_bytes: int = 16384
    actions: dict[str, list[str]] = field(default_factory=dict)
    webhook_url: str = ""
    webhook_secret_file: str = ""  # 0600 file with the HMAC key; relative paths are under the home
    webhook_timeout_seconds: float = 5.0
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 300.0
    kill_signal: str = "SIGTERM"
    stop_training_file: str = "state/stop-training.json"

    def validate(self) -> list[str]:
        problems: list[str] = []
        if self.timeout_seconds <= 0:
            problems.append("timeout_seconds must be > 0")
        if self.max_output_bytes < 0:
            problems.append("max_output_bytes must be >= 0")
        if self.retry_base_seconds <= 0 or self.retry_max_seconds < self.retry_base_seconds:
            problems.append("retry_base_seconds must be > 0 and <= retry_max_seconds")
        kinds = {k.value for k in IncidentKind} | {"*"}
        for kind, names in self.actions.items():
            if kind not in kinds:
                problems.append(f"actions: unknown incident kind {kind!r}")
            if not isinstance(names, list):
                problems.append(f"actions.{kind} must be a list of action names")
                continue
            for name in names:
                if name not in ACTION_NAMES:
                    problems.append(
                        f"actions.{kind}: unknown action {name!r} (known: {', '.join(ACTION_NAMES)})"
                    )
        uses_webhook = any("webhook" in n for n in self.actions.values() if isinstance(n, list))
        if uses_webhook and not self.webhook_url:
            problems.append("the webhook action is configured but webhook_url is empty")
        if self.webhook_url and not self.webhook_url.startswith(("http://", "https://")):
            problems.append("webhook_url must start with http:// or https://")
        if self.kill_signal not in ("SIGTERM", "SIGKILL", "SIGINT", "SIGSTOP"):
            problems.append("kill_signal must be SIGTERM, SIGKILL, SIGINT or SIGSTOP")
        return problems
