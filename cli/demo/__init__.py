"""`trainguard demo`: the whole product, for real, on one machine (steps in `steps`)."""

from __future__ import annotations

__all__ = [
]
