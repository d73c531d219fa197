"""Settings of the policy area (the `[policy]` section of trainguard.toml)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from trainguard.policy.actions import ACTIONS, DEFAULT_PRIVILEGED_ACTIONS

__all__ = ["PolicyConfig"]


@dataclass(frozen=True)
class PolicyConfig:
    """Access-control settings; defaults follow the issue (step-up 5 min, sessions 12 h)."""

    SECTION: ClassVar[str] = "policy"

    privileged_actions: tuple[str, ...] = DEFAULT_PRIVILEGED_ACTIONS
    step_up_seconds: int = 300
    session_hours: float = 12.0
    # Failed second-factor attempts within the window: a wait from the 5th on, doubling per
    # failure (base, 2*base, ... capped at max). Failures never lock an account for good;
    # `lockout_after` is kept so older files load, and no longer locks.
    backoff_after: int = 5
    lockout_after: int = 10
    lockout_window_seconds: int = 900
    backoff_base_seconds: float = 1.0
    backoff_max_seconds: float = 300.0
    totp_drift_steps: int = 1
    recovery_codes: int = 10
    default_domain: str = "default"
    issuer: str = "trainguard"

    def validate(self) -> list[str]:
        problems: list[str] = []
        unknown = [a for a in self.privileged_actions if a not in ACTIONS]
        if unknown:
            problems.append(
                f"privileged_actions: unknown actions {unknown} (known: {list(ACTIONS)})"
            )
        if not 0 < self.step_up_seconds <= 3600:
            problems.append("step_up_seconds must be in 1..3600")
        if not 0 < self.session_hours <= 24 * 7:
            problems.append("session_hours must be in (0, 168]")
        if not 0 < self.backoff_after <= self.lockout_after:
            problems.append("need 0 < backoff_after <= lockout_after")
        if self.lockout_window_seconds <= 0:
            problems.append("lockout_window_seconds must be positive")
        if self.backoff_base_seconds < 0 or self.backoff_max_seconds < self.backoff_base_seconds:
            problems.append("need 0 <= backoff_base_seconds <= backoff_max_seconds")
        if not 0 <= self.totp_drift_steps <= 2:
            problems.append("totp_drift_steps must be 0, 1 or 2")
        if not 1 <= self.recovery_codes <= 50:
            problems.append("recovery_codes must be in 1..50")
        return problems
