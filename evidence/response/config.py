"""Settings of incident hooks and built-in actions: the `[hooks]` section of trainguard.toml."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from trainguard.evidence.incidents import IncidentKind

__all__ = ["ACTION_NAMES", "HooksConfig"]

ACTION_NAMES = ("webhook", "kill", "quarantine", "revoke", "stop-training")


@dataclass(frozen=True)
class HooksConfig:
    """Incident hooks: executables in hooks.d/ and the built-in actions per incident kind.

    `actions` maps an incident kind (or ``"*"`` for every kind) to built-in action names, e.g.
    ``gpu-misuse = ["kill", "webhook"]``. Executables in hooks.d/ run for every incident.
    """

    SECTION: ClassVar[str] = "hooks"

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
