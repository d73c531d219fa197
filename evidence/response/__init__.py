"""trainguard.evidence.response: what happens after an incident is recorded: hooks in hooks.d/,
built-in actions, and webhook deliveries from a durable queue."""

from __future__ import annotations

from trainguard.evidence.response.actions import (
    ActionContext,
    ActionResult,
    run_action,
)
from trainguard.evidence.response.config import (
    ACTION_NAMES,
    HooksConfig,
)
from trainguard.evidence.response.engine import (
    IncidentEngine,
)
from trainguard.evidence.response.hooks import (
    HookResult,
    discover_hooks,
    run_hook,
)
from trainguard.evidence.response.queue import (
    DeliveryQueue,
    WebhookSender,
)

__all__ = [
    "ACTION_NAMES",
    "ActionContext",
    "ActionResult",
    "DeliveryQueue",
    "HookResult",
    "HooksConfig",
    "IncidentEngine",
    "WebhookSender",
    "discover_hooks",
    "run_action",
    "run_hook",
]
