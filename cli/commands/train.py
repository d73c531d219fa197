"""`trainguard train CONFIG.toml` (the built-in recipe) or `trainguard train --script PATH`
(the user's own torchrun script, protected with `trainguard.trainer.Guard`): preflight, then
torchrun.

The trainer (and torch) are imported inside the handler only: the agent package must never
pull torch in at import time.
"""

from __future__ import annotations

import argparse
import getpass
import os
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
    p = sub.add_parser(
        "train", help="run a hardened distributed training job (torchrun)",
        usage="trainguard train (CONFIG.toml | --script PATH) [options] [-- SCRIPT_ARGS...]")
    p.add_argument("config", type=Path, nargs="?", default=None,
                   help="job config of the built-in recipe (see trainer/examples/digits.toml)")
    p.add_argument("script_args", nargs="*", default=[], help=argparse.SUPPRESS)
    p.add_argument("--script", type=Path, default=None, metavar="PATH",
                   help="run your own torchrun script (it calls trainguard.trainer.Guard); "
                        "arguments for it follow `--`")
    p.add_argument("--checkpoint-dir", type=Path, default=None, metavar="DIR",
                   help="checkpoint folder (default: one per script under the home's state)")
    p.add_argument("--nproc", type=int, default=1, help="workers on this node (default 1)")
    p.add_argument("--nnodes", default="1", help="nodes, or MIN:MAX for elastic (multi-node)")
    p.add_argument("--rdzv-endpoint", default=None, help="HOST:PORT of torchrun's c10d rendezvous")
    p.add_argument("--job-id", default=None, help="multi-node: the same id on every node")
    p.add_argument("--max-restarts", type=int, default=2, help="torchrun worker restarts")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key with a TOML value (repeatable); with --script, "
                        "the [aggregation], [checkpoint], [consistency], [telemetry] keys")
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
    from trainguard.core.errors import UsageError
    from trainguard.trainer.launcher import LaunchOptions, launch, prepare_job
    from trainguard.trainer.preflight import run_preflight

    home = ctx.home.require()
    script_args = list(args.script_args)
    if args.script is not None:
        if args.config is not None:  # `train --script s.py -- a b`: argparse fills config first
            script_args.insert(0, str(args.config))
        script: Path | None = args.script.expanduser().absolute()
        if not script.is_file():
            raise UsageError(f"no script at {script}", tip="pass the path of your training script")
        config_path = None
        job_path = script
    elif args.config is None:
        raise UsageError("give a job config or --script PATH",
                         tip="trainguard train trainer/examples/digits.toml, or --script train.py")
    else:
        if script_args:
            raise UsageError(f"unexpected arguments {script_args}: only --script jobs take arguments")
        script, config_path = None, args.config.expanduser().absolute()
        job_path = config_path
    options = LaunchOptions(nproc=args.nproc, nnodes=args.nnodes, rdzv_endpoint=args.rdzv_endpoint,
                            max_restarts=args.max_restarts, resume=args.resume, job_id=args.job_id)
    keyring = ctx.keyring()
    # Validate the config before asking for authorization: a typo should not cost an MFA code.
    ckpt = args.checkpoint_dir.expanduser().absolute() if args.checkpoint_dir else None
    plan = prepare_job(home, config_path, args.overrides, options,
                       lambda job_id: keyring.derive_key("job:" + job_id),
                       script=script, script_args=script_args, checkpoint_dir=ckpt,
                       project=args.project)
    audit = ctx.audit
    preflight = run_preflight(home, ctx.config, audit, resource=f"/train/{job_path.stem}",
                              project=args.project, otp=args.otp, user=args.user,
                              skip_deps_verify=args.skip_deps_verify, gpu_check=check_gpus,
                              scan_folder=job_path.parent)
    launch_event: dict[str, Any] = {
        "job": plan.job_id, "config": str(config_path) if config_path else None,
        "script": str(script) if script else None, "script_args": script_args,
        "overrides": args.overrides,
        "nproc": args.nproc, "nnodes": args.nnodes, "resume": args.resume,
        "principal": preflight.principal, "mfa_age_s": preflight.mfa_age_s,
        "os_user": getpass.getuser(), "aggregation": plan.config.aggregation.method.value,
        # the node agent treats this process and its descendants (torchrun, the workers) as a
        # registered training job, so the GPU-misuse detector does not flag them
        "launcher_pid": os.getpid(),
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
        result["model_weights"] = _export(args, ctx, plan, job_path)["path"]
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
    acc = r.get("final_accuracy")
    lines = [
        f"job {r['job_id']}: {r['status']}" + (f" ({r['reason']})" if r.get("reason") else ""),
        f"  steps {r['steps']}, accuracy {acc:.4f}" if acc is not None else f"  steps {r['steps']}",
        f"  aggregation {r['aggregation']['method']}, flagged ranks {r['flagged_ranks']}",
        f"  checkpoints {[c['step'] for c in r['checkpoints']]}, resumed from {r['resumed_from_step']}",
    ]
    lines += [f"  incident {i['kind']}: {i['evidence']}" for i in r["incidents"]]
    return "\n".join(lines)
