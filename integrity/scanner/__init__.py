"""Static scanner for model and pickle files: never executes what it reads.

``scan_path(path)`` judges files (folders recursively) by content and returns a `ScanReport`;
``require_safe(path)`` raises `UnsafeArtifact` unless every file is safe. Call it before every
``torch.load`` (which must still use ``weights_only=True``).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from trainguard.core.errors import IntegrityError
from trainguard.integrity.scanner.allowlist import Allowance, classify
from trainguard.integrity.scanner.formats import SCAN_ERRORS, scan_stream
from trainguard.integrity.scanner.report import (
    FileVerdict,
    Finding,
    FindingKind,
    ScanReport,
    Verdict,
)

__all__ = [
    "Allowance",
    "FileVerdict",
    "Finding",
    "FindingKind",
    "ScanReport",
    "UnsafeArtifact",
    "Verdict",
    "classify",
    "iter_files",
    "require_safe",
    "require_safe_fileobj",
    "scan_bytes",
    "scan_fileobj",
    "scan_file",
    "scan_path",
]

log = logging.getLogger(__name__)


class UnsafeArtifact(IntegrityError):
    """A model or checkpoint file is unsafe to load, or could not be judged (exit 1)."""

    default_tip = (
        "do not load it; inspect it with `trainguard scan PATH --format json` and restore a "
        "trusted, signed copy"
    )

    def __init__(self, path: Path, report: ScanReport) -> None:
        bad = [f for f in report.files if f.verdict is not Verdict.SAFE]
        lines = [
            f"{f.path}: {f.verdict.value}: " + "; ".join(str(x) for x in f.findings[:5])
            for f in bad[:10]
        ]
        super().__init__(f"refusing to load {path}: " + " | ".join(lines))
        self.report = report
        self.findings = [x for f in bad for x in f.findings]


def scan_file(path: Path) -> FileVerdict:
    """Scan one regular file by its content."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        finding = Finding(FindingKind.PARSE_ERROR, f"cannot open: {exc.strerror}", str(path))
        return FileVerdict.from_findings(str(path), "unreadable", [finding])
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            finding = Finding(FindingKind.UNSUPPORTED, "not a regular file", str(path))
            return FileVerdict.from_findings(str(path), "special", [finding])
        try:
            fmt, findings = scan_stream(f, info.st_size)
        except SCAN_ERRORS as exc:
            # short reads, bad headers, absurd offsets: never "safe"
            log.debug("scan of %s failed", path, exc_info=True)
            fmt, findings = (
                "unknown",
                [Finding(FindingKind.PARSE_ERROR, f"unreadable: {type(exc).__name__}: {exc}")],
            )
    return FileVerdict.from_findings(str(path), fmt, findings)


def scan_fileobj(f: IO[bytes], size: int, name: str = "<stream>") -> FileVerdict:
    """Scan a readable, seekable binary file object of `size` bytes (a decrypting reader, an
    upload) from its start; the position afterwards is unspecified."""
    try:
        f.seek(0)
        fmt, findings = scan_stream(f, size)
    except SCAN_ERRORS as exc:
        fmt, findings = (
            "unknown",
            [Finding(FindingKind.PARSE_ERROR, f"unreadable: {type(exc).__name__}: {exc}")],
        )
    return FileVerdict.from_findings(name, fmt, findings)


def scan_bytes(data: bytes, name: str = "<bytes>") -> FileVerdict:
    """Scan an in-memory blob."""
    import io

    return scan_fileobj(io.BytesIO(data), len(data), name)


def require_safe_fileobj(f: IO[bytes], size: int, name: str = "<stream>") -> FileVerdict:
    """`scan_fileobj`, raising `UnsafeArtifact` unless the verdict is safe; rewinds `f`."""
    verdict = scan_fileobj(f, size, name)
    f.seek(0)
    if verdict.verdict is not Verdict.SAFE:
        raise UnsafeArtifact(Path(name), ScanReport((verdict,)))
    return verdict


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Files under `paths` (folders recursively, symlinked folders not followed), sorted."""
    for root in paths:
        if root.is_dir() and not root.is_symlink():
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                for name in sorted(filenames):
                    yield Path(dirpath) / name
        else:
            yield root


def scan_path(*paths: Path | str) -> ScanReport:
    """Scan files and folders; a missing path is an error verdict, never skipped."""
    results: list[FileVerdict] = []
    for path in iter_files(Path(p) for p in paths):
        if not path.exists():
            finding = Finding(FindingKind.PARSE_ERROR, "no such file or folder", str(path))
            results.append(FileVerdict.from_findings(str(path), "missing", [finding]))
            continue
        results.append(scan_file(path))
    return ScanReport(tuple(results))


def require_safe(path: Path | str) -> ScanReport:
    """Scan `path` and return the report if every file is safe.

    Raises:
        UnsafeArtifact: any file is unsafe or could not be judged (an error is never safe).
    """
    report = scan_path(path)
    if not report.files or not report.clean:
        raise UnsafeArtifact(Path(path), report)
    return report
