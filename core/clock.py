"""The seams for time and randomness (STYLE rule 9): components take them as parameters, so
tests control them without sleeping or patching globals.

A clock is any ``() -> float`` of Unix seconds (default `time.time`); a random source is any
``(n) -> bytes`` (default `os.urandom`). Plain callables, so a test passes a lambda or a small
fake with ``__call__``.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Clock", "Random"]

Clock = Callable[[], float]
Random = Callable[[int], bytes]
