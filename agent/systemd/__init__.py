"""trainguard.agent.systemd: the hardened unit file and the sd_notify protocol."""

from __future__ import annotations

from trainguard.agent.systemd.sdnotify import (
    Notifier,
)
from trainguard.agent.systemd.unit import (
    DEFAULT_UNIT_PATH,
    UnitOptions,
    render_unit,
    security_exposure,
)

__all__ = [
    "DEFAULT_UNIT_PATH",
    "Notifier",
    "UnitOptions",
    "render_unit",
    "security_exposure",
]
