"""trainguard.trainer.testing: TEST FACILITY. Fault injection for the trainer (Byzantine ranks);
nothing here runs unless a job config asks for it in `[simulate]`."""

from __future__ import annotations

from trainguard.trainer.testing.simulate import (
    DEFAULT_STRENGTH,
    AttackPlan,
    alie_z,
)

__all__ = [
    "AttackPlan",
    "DEFAULT_STRENGTH",
    "alie_z",
]
