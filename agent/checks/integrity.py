"""Supply-chain posture checks: the dependency lock and the model/checkpoint folders.

* ``deps-lock``: the environment matches the signed lock (`trainguard deps verify`, cached).
  Drift, or a lock whose signature fails, raises a `dependency-drift` incident.
* ``model-artifacts``: every file under `[checks] model_dirs` and `checkpoint_dirs` scans safe
  (sealed checkpoints are skipped: they are authenticated and scanned after unsealing, at load).
  Each unsafe file raises an `unsafe-artifact` incident whose evidence carries its `path`, so a
  configured `quarantine` action can move it aside.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from trainguard.agent.checks import CheckContext, Outcome, Severity, register_check
from trainguard.evidence.incidents import IncidentKind

log = logging.getLogger(__name__)
_MAX_LISTED = 20


def _incident(
    ctx: CheckContext, kind: IncidentKind, severity: Severity, evidence: dict[str, Any]
) -> None:
    from trainguard.agent.api.client import report_incident

    try:
        report_incident(ctx.home, ctx.config, kind, severity, evidence)
    except Exception:  # noqa: BLE001 - a failing incident path must not hide the check result
        log.exception("could not report %s incident", kind.value)


@register_check(
    "deps-lock",
    "Installed Python packages and startup files match the signed dependency lock",
    severity=Severity.HIGH,
    controls=("SI-7", "SR-11", "CM-14"),
    atlas=("AML.T0010",),
)
def deps_lock(ctx: CheckContext) -> Outcome:
    from trainguard.crypto.signing import VerifyKey
    from trainguard.integrity.deps.cache import HashCache
    from trainguard.integrity.deps.lock import (
        DepsLockError,
        default_lock_path,
        read_lock,
        verify_lock,
    )

    path = default_lock_path(ctx.home.state_dir)
    if not path.exists():
        return Outcome.warn(
            "no dependency lock",
            evidence={"lock": str(path)},
            remediation="create one on a known-good environment: `trainguard deps lock`",
        )
    try:
        lock = read_lock(path, VerifyKey.load(ctx.home.node_verify_key))
    except DepsLockError as exc:
        failure: dict[str, Any] = {"lock": str(path), "error": exc.message}
        _incident(ctx, IncidentKind.DEPENDENCY_DRIFT, Severity.HIGH, failure)
        return Outcome.fail(exc.message, evidence=failure, remediation=exc.tip or "")
    result = verify_lock(lock, cache=HashCache(ctx.home.state_dir / "deps.cache.json"))
    if not result.drift:
        return Outcome.passed(
            f"{result.files_checked} files match the lock",
            evidence={"lock": str(path), "files_hashed": result.files_hashed},
        )
    files = result.drifted_files()
    evidence: dict[str, Any] = {
        "lock": str(path),
        "files": files[:_MAX_LISTED],
        "file_count": len(files),
        "distributions": [d.name for d in result.distributions],
        "added": list(result.added),
        "removed": list(result.removed),
    }
    _incident(ctx, IncidentKind.DEPENDENCY_DRIFT, Severity.HIGH, evidence)
    return Outcome.fail(
        f"dependency drift: {len(files)} file(s), {len(result.added)} added and "
        f"{len(result.removed)} removed distribution(s)",
        evidence=evidence,
        remediation="inspect with `trainguard deps verify`; reinstall from trusted wheels with "
        "--require-hashes, then re-lock",
    )


def _scan_targets(ctx: CheckContext) -> tuple[list[Path], list[str]]:
    from trainguard.crypto.sealed.stream import is_sealed
    from trainguard.integrity.scanner import iter_files

    cfg = ctx.checks
    roots = [Path(p) for p in (*cfg.model_dirs, *cfg.checkpoint_dirs)]
    files, sealed = [], []
    for f in iter_files(r for r in roots if r.exists()):
        try:
            if is_sealed(f):
                sealed.append(str(f))
                continue
        except OSError:
            pass  # unreadable: the scan reports it as an error
        files.append(f)
    return files, sealed


@register_check(
    "model-artifacts",
    "Model and checkpoint folders hold no unsafe pickles",
    severity=Severity.CRITICAL,
    controls=("SI-7", "SI-3", "SR-11"),
    atlas=("AML.T0010", "AML.T0011"),
)
def model_artifacts(ctx: CheckContext) -> Outcome:
    from trainguard.integrity.scanner import Verdict, scan_path

    cfg = ctx.checks
    if not (cfg.model_dirs or cfg.checkpoint_dirs):
        return Outcome.not_applicable("no model_dirs or checkpoint_dirs configured in [checks]")
    files, sealed = _scan_targets(ctx)
    report = scan_path(*files) if files else None
    unsafe = report.unsafe if report else []
    errors = report.errors if report else []
    for verdict in unsafe:
        _incident(
            ctx,
            IncidentKind.UNSAFE_ARTIFACT,
            Severity.CRITICAL,
            {"path": verdict.path, "format": verdict.format,
             "findings": [str(f) for f in verdict.findings[:10]]},
        )  # fmt: skip
    evidence = {
        "scanned": len(files),
        "sealed_skipped": len(sealed),
        "unsafe": [v.path for v in unsafe][:_MAX_LISTED],
        "error": [v.path for v in errors][:_MAX_LISTED],
    }
    if unsafe:
        return Outcome.fail(
            f"{len(unsafe)} unsafe artifact(s)",
            evidence=evidence,
            remediation="do not load them; see `trainguard scan PATH`; quarantine and restore "
            "signed copies",
        )
    if errors:
        return Outcome.warn(
            f"{len(errors)} file(s) could not be judged",
            evidence=evidence,
            remediation="inspect with `trainguard scan PATH --format json`",
        )
    safe = sum(1 for v in (report.files if report else ()) if v.verdict is Verdict.SAFE)
    return Outcome.passed(f"{safe} file(s) scanned safe", evidence=evidence)
