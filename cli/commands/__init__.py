"""One module per command group of the `trainguard` CLI; each exposes `register(sub)`."""

from __future__ import annotations

__all__ = [
]
