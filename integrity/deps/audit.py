"""Known vulnerabilities of the locked environment, from the OSV database.

`trainguard deps audit` reads the signed dependency lock (what is installed, by name and
version) and matches it against OSV records (https://ossf.github.io/osv-schema/):

* offline (`--osv-dir DIR`): a folder of OSV JSON records, e.g. the PyPI export of the OSV
  database unzipped; air-gapped clusters mirror it. Matching follows the OSV schema for the PyPI
  ecosystem: ``affected[].package`` by PEP 503 normalised name, explicit ``versions``, and
  ``ECOSYSTEM`` ranges of ``introduced`` / ``fixed`` / ``last_affected`` / ``limit`` events
  compared as PEP 440 versions (packaging). A record that cannot be parsed is an error with its
  file name, never skipped silently.
* online (no `--osv-dir`): pip-audit (PyPA's auditor, OSV service) over the same name==version
  list, run as a subprocess without installing anything (``--no-deps --disable-pip``).

Each finding becomes a ``dependency-vulnerable`` incident and the report's SI-2 / RA-5 evidence.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version
from trainguard.core.errors import EXIT_USAGE, IntegrityError

__all__ = ["AuditError", "Vulnerability", "audit_offline", "audit_online", "locked_versions"]

_MAX_RECORD_BYTES = 8 << 20


class AuditError(IntegrityError):
    """The vulnerability source could not be read or queried: nothing was decided (exit 2,
    not 1: a damaged mirror must not read as "findings" nor as "clean")."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class Vulnerability:
    id: str
    package: str
    version: str
    summary: str = ""
    aliases: tuple[str, ...] = ()
    fixed_in: tuple[str, ...] = ()
    severity: str = "high"  # trainguard severity of the incident
    source: str = "osv"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["aliases"], d["fixed_in"] = list(self.aliases), list(self.fixed_in)
        d.pop("extra")
        return d


def normalize(name: str) -> str:
    """PEP 503 name normalisation (``Foo_Bar.baz`` -> ``foo-bar-baz``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_versions(lock: Mapping[str, Any]) -> dict[str, str]:
    """normalised name -> version of every distribution in a verified lock."""
    return {normalize(d["name"]): str(d["version"]) for d in lock["distributions"].values()}


def _version(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


def _in_range(version: Version, events: list[dict[str, str]]) -> bool:
    """OSV range semantics: sorted events; affected from an `introduced` up to (not incl.) the
    next `fixed` / `limit`, or up to and including `last_affected`."""
    points: list[tuple[Version, int, str]] = []
    for ev in events:
        for kind, order in (("introduced", 0), ("fixed", 1), ("last_affected", 2), ("limit", 1)):
            if kind in ev:
                raw = str(ev[kind])
                v = Version("0") if raw == "0" and kind == "introduced" else _version(raw)
                if v is None:
                    raise ValueError(f"{kind} {raw!r} is no PEP 440 version")
                points.append((v, order, kind))
    affected = False
    for v, _order, kind in sorted(points, key=lambda p: (p[0], p[1])):
        if kind == "introduced":
            if version >= v:
                affected = True
        elif kind in ("fixed", "limit"):
            if version >= v:
                affected = False
        elif kind == "last_affected" and version > v:
            affected = False
    return affected


def _severity(record: Mapping[str, Any]) -> str:
    text = json.dumps(record.get("database_specific", {})).lower()
    for word, sev in (("critical", "critical"), ("high", "high"), ("moderate", "medium"),
                      ("medium", "medium"), ("low", "low")):
        if f'"{word}"' in text:
            return sev
    return "high"  # unknown: treat as high until triaged


def match_record(record: Mapping[str, Any], installed: Mapping[str, str]) -> list[Vulnerability]:
    """Findings of one OSV record against the installed versions."""
    found: list[Vulnerability] = []
    for affected in record.get("affected", []):
        pkg = affected.get("package", {})
        if str(pkg.get("ecosystem", "")).split(":")[0] != "PyPI":
            continue
        name = normalize(str(pkg.get("name", "")))
        if name not in installed:
            continue
        have = installed[name]
        hit = have in {str(v) for v in affected.get("versions", [])}
        parsed = _version(have)
        fixed: list[str] = []
        for rng in affected.get("ranges", []):
            events = list(rng.get("events", []))
            fixed += [str(e["fixed"]) for e in events if "fixed" in e]
            if rng.get("type") == "ECOSYSTEM" and parsed is not None and _in_range(parsed, events):
                hit = True
        if hit:
            found.append(Vulnerability(
                id=str(record["id"]), package=name, version=have,
                summary=str(record.get("summary", ""))[:300],
                aliases=tuple(str(a) for a in record.get("aliases", [])),
                fixed_in=tuple(sorted(set(fixed), key=lambda s: _version(s) or Version("0"))),
                severity=_severity(record),
            ))
    return found


def _records(osv_dir: Path) -> Iterable[tuple[Path, Mapping[str, Any]]]:
    if not osv_dir.is_dir():
        raise AuditError(f"{osv_dir} is not a folder of OSV records",
                         tip="unzip the OSV PyPI export (all.zip) into a folder and pass it")
    files = sorted(p for p in osv_dir.rglob("*.json") if p.is_file())
    if not files:
        raise AuditError(f"no OSV records (*.json) in {osv_dir}",
                         tip="unzip the OSV PyPI export (all.zip) into this folder")
    for path in files:
        try:
            if path.stat().st_size > _MAX_RECORD_BYTES:
                raise ValueError("record too large")
            record = json.loads(path.read_bytes())
            if not isinstance(record, dict) or "id" not in record:
                raise ValueError("no OSV record (no id)")
        except (OSError, ValueError) as exc:
            raise AuditError(f"cannot read OSV record {path}: {exc}",
                             tip="re-download the OSV export; a damaged mirror hides findings") from exc
        yield path, record


def audit_offline(installed: Mapping[str, str], osv_dir: Path) -> tuple[list[Vulnerability], int]:
    """(findings, records read) against a local OSV export."""
    findings: list[Vulnerability] = []
    count = 0
    for path, record in _records(osv_dir):
        count += 1
        try:
            findings += match_record(record, installed)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise AuditError(f"OSV record {path} is malformed: {exc}",
                             tip="re-download the OSV export; a damaged mirror hides findings") from exc
    return _dedup(findings), count


def audit_online(installed: Mapping[str, str], *, timeout: float = 600.0) -> list[Vulnerability]:
    """Ask the OSV service through pip-audit (needs network and the `pip-audit` package)."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as req:
        req.write("".join(f"{n}=={v}\n" for n, v in sorted(installed.items())))
    cmd = [sys.executable, "-m", "pip_audit", "--requirement", req.name, "--no-deps",
           "--disable-pip", "--format", "json", "--progress-spinner", "off", "--vulnerability-service", "osv"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise AuditError("pip-audit did not answer in time",
                         tip="use an offline OSV export with --osv-dir DIR") from exc
    finally:
        Path(req.name).unlink(missing_ok=True)
    if "No module named pip_audit" in out.stderr:
        raise AuditError("pip-audit is not installed",
                         tip="pip install 'trainguard[audit]', or pass --osv-dir DIR (offline)")
    try:
        doc = json.loads(out.stdout)
    except ValueError as exc:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1][:300]
        raise AuditError(f"pip-audit failed: {last}",
                         tip="without network access use an offline OSV export: --osv-dir DIR") from exc
    findings = []
    for dep in doc.get("dependencies", []):
        for v in dep.get("vulns", []):
            findings.append(Vulnerability(
                id=str(v.get("id")), package=normalize(str(dep.get("name"))),
                version=str(dep.get("version")), summary=str(v.get("description", ""))[:300],
                aliases=tuple(v.get("aliases", [])), fixed_in=tuple(v.get("fix_versions", [])),
                source="pip-audit",
            ))
    return _dedup(findings)


def _dedup(findings: list[Vulnerability]) -> list[Vulnerability]:
    seen: dict[tuple[str, str], Vulnerability] = {}
    for f in findings:
        seen.setdefault((f.id, f.package), f)
    return sorted(seen.values(), key=lambda f: (f.package, f.id))
