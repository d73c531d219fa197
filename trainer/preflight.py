"""Launch preflight: who may launch (fresh MFA), clean dependencies, where evidence goes, GPUs.

Each step returns a `PreflightStep` or raises. A step may only be skipped where the caller says
so explicitly, and a skip is recorded in the audit log and in the JSON result: never silent.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trainguard.core.config import Config
from trainguard.core.home import Home
from trainguard.evidence.sink import AuditSink
from trainguard.trainer.errors import PreflightError

__all__ = ["PreflightReport", "PreflightStep", "StepStatus", "run_preflight"]

log = logging.getLogger(__name__)
ACTION = "train:launch"


class StepStatus(enum.StrEnum):
    PASSED = "passed"
    SKIPPED = "skipped"
    NOT_APPLICABLE = "not-applicable"


@dataclass(frozen=True)
class PreflightStep:
    name: str
    status: StepStatus
    detail: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PreflightReport:
    principal: str
    mfa_age_s: float | None
    steps: list[PreflightStep]

    def to_json(self) -> dict[str, Any]:
        return {
            "principal": self.principal,
            "mfa_age_s": self.mfa_age_s,
            "steps": [asdict(s) | {"status": s.status.value} for s in self.steps],
        }


def check_authorization(
    home: Home, config: Config, audit: AuditSink, resource: str, project: str,
    *, otp: str | None, user: str | None,
) -> tuple[PreflightStep, Any]:
    from trainguard.agent.api.client import authorize

    # In this process when the home is readable, else through the agent (non-root accounts).
    decision = authorize(home, config, ACTION, resource, project, audit, otp=otp)
    if user is not None and decision.principal != user:
        raise PreflightError(
            f"logged in as {decision.principal!r}, not {user!r}",
            tip=f"run `trainguard login --user {user}` first",
        )
    return PreflightStep("authorize", StepStatus.PASSED,
                         f"{decision.principal} may {ACTION} {resource} in {project}",
                         {"reason": decision.reason, "mfa_age_s": decision.mfa_age_s}), decision


def check_dependencies(home: Home, config: Config, audit: AuditSink, *, skip: bool) -> PreflightStep:
    if skip:
        audit.record("train.preflight.skipped", "trainer", {"step": "deps-verify",
                                                            "why": "--skip-deps-verify"})
        log.warning("dependency verification SKIPPED on request; recorded in the audit log")
        return PreflightStep("deps-verify", StepStatus.SKIPPED, "skipped by --skip-deps-verify")
    from trainguard.crypto.signing import VerifyKey
    from trainguard.integrity.deps import lock as deps

    lock_path = deps.default_lock_path(home.state_dir)
    if not lock_path.exists():
        raise PreflightError(
            f"no dependency lock at {lock_path}",
            tip="run `trainguard deps lock` once the environment is reviewed",
        )
    lock = deps.read_lock(lock_path, VerifyKey.load(home.node_verify_key))
    cache = _hash_cache(home)
    result = deps.verify_lock(lock, cache=cache)
    cache.save()
    if result.drift:
        drifted = result.drifted_files()
        raise PreflightError(
            f"dependency verification failed: {len(drifted)} file(s) drifted, e.g. {drifted[:3]}",
            tip="run `trainguard deps verify` for the list; relock only after review",
        )
    return PreflightStep("deps-verify", StepStatus.PASSED,
                         f"{result.files_checked} files match the signed lock",
                         {"lock": str(lock_path), "files_hashed": result.files_hashed})


def _hash_cache(home: Home) -> Any:
    from trainguard.integrity.deps.cache import HashCache

    return HashCache(home.state_dir / "deps.cache.json")


def check_sink(home: Home) -> PreflightStep:
    from trainguard.agent.api.client import AgentClient, agent_socket

    if agent_socket(home).exists():

        with AgentClient(home, timeout=5.0) as client:
            if client.ping():
                return PreflightStep("evidence", StepStatus.PASSED, "node agent reachable")
    return PreflightStep("evidence", StepStatus.PASSED,
                         "no agent running: evidence goes to the embedded audit log")


def check_artifacts(folder: Path) -> PreflightStep:
    """The supply-chain scanner over the job's folder (the script's, or the config's): a
    pickle or model file that would run code on load stops the launch."""
    from trainguard.integrity.scanner import scan_path

    report = scan_path(folder)
    if report.unsafe:
        names = [str(f.path) for f in report.unsafe[:3]]
        raise PreflightError(f"unsafe artifacts in {folder}: {', '.join(names)}",
                             tip=f"inspect them with `trainguard scan {folder}`; remove or replace them")
    return PreflightStep("artifact-scan", StepStatus.PASSED,
                         f"{len(report.files)} files in {folder} scanned, none unsafe",
                         {"folder": str(folder), **report.summary()})


def run_preflight(
    home: Home,
    config: Config,
    audit: AuditSink,
    *,
    resource: str,
    project: str,
    otp: str | None = None,
    user: str | None = None,
    skip_deps_verify: bool = False,
    gpu_check: Callable[[Home, Config], PreflightStep],
    scan_folder: Path | None = None,
) -> PreflightReport:
    """Run every preflight step in order; raises on the first that fails.

    `gpu_check` looks for foreign processes on this node's GPUs (the CLI passes the agent's
    posture check; the trainer does not import the agent's checks itself).
    """
    auth, decision = check_authorization(home, config, audit, resource, project, otp=otp, user=user)
    steps = [auth, check_dependencies(home, config, audit, skip=skip_deps_verify)]
    if scan_folder is not None:
        steps.append(check_artifacts(scan_folder))
    steps += [check_sink(home), gpu_check(home, config)]
    return PreflightReport(decision.principal, decision.mfa_age_s, steps)
