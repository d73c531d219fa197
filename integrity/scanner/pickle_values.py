"""Inert placeholders the pickle walk pushes instead of real objects: nothing is ever imported,
constructed or called. Only what the walk needs to resolve globals and read joblib headers is
kept (strings, numbers, containers, and which global a call used)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trainguard.integrity.scanner.allowlist import Allowance

__all__ = ["MARK", "UNKNOWN", "Mark", "PDict", "PGlobal", "PObj", "Persistent", "Unknown"]


class Mark:
    __slots__ = ()


class Unknown:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<value>"


MARK = Mark()
UNKNOWN = Unknown()


@dataclass(eq=False)
class PGlobal:
    full: str
    allowance: Allowance


@dataclass(eq=False)
class PObj:
    func: Any
    args: Any
    state: Any = None


@dataclass(eq=False)
class PDict:
    pairs: list[tuple[Any, Any]] = field(default_factory=list)

    def get(self, key: str) -> Any:
        for k, v in self.pairs:
            if k == key:
                return v
        return None


@dataclass(eq=False)
class Persistent:
    pid: Any
