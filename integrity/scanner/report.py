"""Scan results: findings, per-file verdicts and the whole report (the `scan --format json` schema).

JSON schema (``ScanReport.to_json()``)::

    {"files": [{"path": str, "verdict": "safe"|"unsafe"|"error", "format": str,
                "findings": [{"kind": str, "message": str, "location": str,
                              "global": str | null}]}],
     "summary": {"safe": int, "unsafe": int, "error": int}}
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Finding", "FindingKind", "FileVerdict", "ScanReport", "Verdict"]


class Verdict(enum.StrEnum):
    SAFE = "safe"
    UNSAFE = "unsafe"
    ERROR = "error"


class FindingKind(enum.StrEnum):
    """Why a file is unsafe (the first five) or could not be judged (`parse-error`, ...)."""

    DISALLOWED_GLOBAL = "disallowed-global"  # imports a global outside the allowlist
    CALLED_REFERENCE = "called-reference"  # calls a global allowed only as a data reference
    UNRESOLVED_GLOBAL = "unresolved-global"  # STACK_GLOBAL operands not known strings
    NON_GLOBAL_CALL = "non-global-call"  # REDUCE/NEWOBJ/BUILD on something not an allowed class
    EXTENSION_CODE = "extension-code"  # EXT1/2/4: copyreg registry, cannot be judged statically
    PARSE_ERROR = "parse-error"  # truncated or malformed input
    BAD_HEADER = "bad-header"  # npy/safetensors/zip header inconsistent
    UNSUPPORTED = "unsupported"  # a format or encoding the scanner cannot read

    @property
    def is_error(self) -> bool:
        return self in (FindingKind.PARSE_ERROR, FindingKind.BAD_HEADER, FindingKind.UNSUPPORTED)


@dataclass(frozen=True)
class Finding:
    kind: FindingKind
    message: str
    location: str = ""
    global_name: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "message": self.message,
            "location": self.location,
            "global": self.global_name,
        }

    def __str__(self) -> str:
        where = f" at {self.location}" if self.location else ""
        return f"{self.kind.value}: {self.message}{where}"


@dataclass(frozen=True)
class FileVerdict:
    """The verdict for one file: unsafe beats error beats safe."""

    path: str
    verdict: Verdict
    format: str
    findings: tuple[Finding, ...] = ()

    @classmethod
    def from_findings(cls, path: str, fmt: str, findings: list[Finding]) -> FileVerdict:
        if any(not f.kind.is_error for f in findings):
            verdict = Verdict.UNSAFE
        elif findings:
            verdict = Verdict.ERROR
        else:
            verdict = Verdict.SAFE
        return cls(path, verdict, fmt, tuple(findings))

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "verdict": self.verdict.value,
            "format": self.format,
            "findings": [f.to_json() for f in self.findings],
        }


@dataclass(frozen=True)
class ScanReport:
    files: tuple[FileVerdict, ...] = field(default_factory=tuple)

    @property
    def unsafe(self) -> list[FileVerdict]:
        return [f for f in self.files if f.verdict is Verdict.UNSAFE]

    @property
    def errors(self) -> list[FileVerdict]:
        return [f for f in self.files if f.verdict is Verdict.ERROR]

    @property
    def clean(self) -> bool:
        """True only when every file is safe (an error is never clean)."""
        return all(f.verdict is Verdict.SAFE for f in self.files)

    def summary(self) -> dict[str, int]:
        return {v.value: sum(1 for f in self.files if f.verdict is v) for v in Verdict}

    def to_json(self) -> dict[str, Any]:
        return {"files": [f.to_json() for f in self.files], "summary": self.summary()}
