"""`trainguard train CONFIG.toml`: preflight, then the hardened trainer under torchrun.

The trainer (and torch) are imported inside the handler only: the agent package must never
pull torch in at import time.
"""

from __future__ import annotations

import argparse
import getpass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainguard.cli.context import Context
from trainguard.core.config import Config
from trainguard.core.errors import EXIT_FINDINGS, EXIT_OK
from trainguard.core.home import Home

if TYPE_CHECKING:
    from trainguard.trainer.preflight import PreflightStep


def check_gpus(home: Home, config: Config) -> PreflightStep:
    """Preflight step: no foreign processes on this node's GPUs (the agent's posture check)."""
    from trainguard.agent.checks import Status, run_checks
    from trainguard.trainer.preflight import PreflightError, PreflightStep, StepStatus

    results = run_checks(home, config, ids=["gpu-foreign-processes"])
    if not results:
        return PreflightStep("gpu-foreign-processes", StepStatus.NOT_APPLICABLE, "check not built")
    r = results[0]
    if r.status is Status.FAIL:
        raise PreflightError(f"GPUs are not free: {r.summary}", tip=r.remediation or None)
    status = StepStatus.NOT_APPLICABLE if r.status is Status.NOT_APPLICABLE else StepStatus.PASSED
    return PreflightStep("gpu-foreign-processes", status, r.summary)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("train", help="run a hardened distributed training job (torchrun)")
    p.add_argument("config", type=Path, help="job config (see trainer/examples/digits.toml)")
    p.add_argument("--nproc", type=int, default=1, help="workers on this node (default 1)")
    p.add_argument("--nnodes", default="1", help="nodes, or MIN:MAX for elastic (multi-node)")
    p.add_argument("--rdzv-endpoint", default=None, help="HOST:PORT of torchrun's c10d rendezvous")
    p.add_argument("--job-id", default=None, help="multi-node: the same id on every node")
    p.add_argument("--max-restarts", type=int, default=2, help="torchrun worker restarts")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key with a TOML value (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the newest verified checkpoint")
    p.add_argument("--user", default=None, help="require this logged-in trainguard user")
    p.add_argument("--otp", default=None, help="TOTP code for a step-up, if the session needs one")
    p.add_argument("--project", default="default", help="policy domain (default %(default)s)")
    p.add_argument("--skip-deps-verify", action="store_true",
                   help="TESTS ONLY: skip `deps verify` (recorded in the audit log and the result)")
    p.add_argument("--timeout", type=float, default=None, help="stop the job after N seconds")
    p.add_argument("--export-weights", type=Path, default=None, metavar="PATH",
                   help="after the job, write the final weights unsealed to PATH "
                        "(needs checkpoint:export; audited)")
    p.set_defaults(func=handle)


def handle(args: argparse.Namespace, ctx: Context) -> int:
    from trainguard.agent.api.client import report_incident
    from trainguard.crypto.keyring import Keyring
    from trainguard.trainer.launcher import LaunchOptions, launch, prepare_job
    from trainguard.trainer.preflight import run_preflight

    home = ctx.home.require()
    config_path = args.config.expanduser().absolute()
    options = LaunchOptions(nproc=args.nproc, nnodes=args.nnodes, rdzv_endpoint=args.rdzv_endpoint,
                            max_restarts=args.max_restarts, resume=args.resume, job_id=args.job_id)
    keyring = Keyring.open(home.keys_dir)
    # Validate the config before asking for authorization: a typo should not cost an MFA code.
    plan = prepare_job(home, config_path, args.overrides, options,
                       lambda job_id: keyring.derive_key("job:" + job_id))
    audit = ctx.audit
    preflight = run_preflight(home, ctx.config, audit, resource=f"/train/{config_path.stem}",
                              project=args.project, otp=args.otp, user=args.user,
                              skip_deps_verify=args.skip_deps_verify, gpu_check=check_gpus)
    launch_event: dict[str, Any] = {
        "job": plan.job_id, "config": str(config_path), "overrides": args.overrides,
        "nproc": args.nproc, "nnodes": args.nnodes, "resume": args.resume,
        "principal": preflight.principal, "mfa_age_s": preflight.mfa_age_s,
        "os_user": getpass.getuser(), "aggregation": plan.config.aggregation.method.value,
        "preflight": [s.name + ":" + s.status.value for s in preflight.steps],
    }
    if plan.config.simulate.active:
        launch_event["simulate_test_facility"] = True
        ctx.info("warning: [simulate] is set: this job injects faults (TEST FACILITY)")
    audit.record("train.launch", preflight.principal, launch_event)
    ctx.info(f"job {plan.job_id}: launching {args.nproc} worker(s) per node via torchrun")

    def report(kind: str, severity: str, evidence: Any) -> Any:
        return report_incident(home, ctx.config, kind, severity, evidence)

    result = launch(plan, audit, report, timeout=args.timeout)
    result["preflight"] = preflight.to_json()
    result["model_factory"] = plan.config.model.factory
    if args.export_weights is not None and result["status"] == "completed":
        result["model_weights"] = _export(args, ctx, plan, config_path)["path"]
    audit.record("train.finish", preflight.principal, {
        "job": plan.job_id, "status": result["status"], "steps": result["steps"],
        "final_accuracy": result["final_accuracy"],
        "incidents": [i["kind"] for i in result["incidents"]],
    })
    ctx.emit(result, _render)
    return EXIT_OK if result["status"] == "completed" and not result["incidents"] else EXIT_FINDINGS


def _export(args: argparse.Namespace, ctx: Context, plan: Any, config_path: Path) -> dict[str, Any]:
    from trainguard.policy import authorize_cli
    from trainguard.trainer.launcher import export_weights

    out = args.export_weights.expanduser().absolute()
    decision = authorize_cli(ctx.home, ctx.config, "checkpoint:export", f"/train/{config_path.stem}",
                             args.project, ctx.audit, otp=args.otp)
    exported = export_weights(plan, ctx.home, out)
    ctx.audit.record("train.export", decision.principal, {"job": plan.job_id, **exported})
    return exported


def _render(r: dict[str, Any]) -> str:
    acc = r["final_accuracy"]
    lines = [
        f"job {r['job_id']}: {r['status']}" + (f" ({r['reason']})" if r.get("reason") else ""),
        f"  steps {r['steps']}, accuracy {acc:.4f}" if acc is not None else f"  steps {r['steps']}",
        f"  aggregation {r['aggregation']['method']}, flagged ranks {r['flagged_ranks']}",
        f"  checkpoints {[c['step'] for c in r['checkpoints']]}, resumed from {r['resumed_from_step']}",
    ]
    lines += [f"  incident {i['kind']}: {i['evidence']}" for i in r["incidents"]]
    return "\n".join(lines)
