"""Inert placeholders the pickle walk pushes instead of real objects: nothing is ever imported,
constructed or called. Only what the walk needs to resolve globals and follow joblib arrays is
kept (strings, numbers, containers, and which global a call used)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trainguard.integrity.scanner.allowlist import Allowance

__all__ = [
    "UNKNOWN",
    "BigBytes",
    "BigStr",
    "PDict",
    "PGlobal",
    "PObj",
    "PSet",
    "Persistent",
    "Unknown",
]


class Unknown:
    """A value the walk does not model (a call's result, an out-of-band buffer)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<value>"


UNKNOWN = Unknown()


class BigStr(str):
    """A str too long to keep: only its type matters (STACK_GLOBAL accepts a str)."""

    __slots__ = ()


class BigBytes(bytes):
    """A bytes object too long to keep."""

    __slots__ = ()


@dataclass(eq=False)
class PGlobal:
    full: str
    allowance: Allowance


@dataclass(eq=False)
class PObj:
    """The result of calling `func` with `args` (REDUCE, NEWOBJ, INST, OBJ); `builds` holds the
    states later BUILD opcodes applied to it, in order; `how` is the opcode that made it."""

    func: Any
    args: Any
    how: str = "REDUCE"
    builds: list[Any] = field(default_factory=list)


@dataclass(eq=False)
class PDict:
    pairs: list[tuple[Any, Any]] = field(default_factory=list)

    def get(self, key: str, default: Any = None) -> Any:
        found = default
        for k, v in self.pairs:
            if type(k) is str and k == key:
                found = v  # the last assignment wins, as in a dict
        return found

    def keys(self) -> list[Any]:
        return [k for k, _ in self.pairs]


@dataclass(eq=False)
class PSet:
    items: list[Any] = field(default_factory=list)
    frozen: bool = False


@dataclass(eq=False)
class Persistent:
    pid: Any
