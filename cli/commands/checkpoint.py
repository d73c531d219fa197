"""`trainguard checkpoint export DIR [--step N] --out OUTDIR`: one sealed, signed single file
from a sharded (DCP) checkpoint step, e.g. for evaluation on one machine.

The step's signed manifest is verified (signature, file set, sizes, every file's hash) before
anything is unsealed; the gathered state is sealed again under this home's keyring into
``OUTDIR/step-NNNNNNNN.tgseal`` with its signed manifest, the layout `guard.resume` and the
single-file loader read. Needs ``checkpoint:export`` with a fresh second factor and is audited;
a refused step is reported as ``checkpoint-tampered`` (exit 1).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from trainguard.cli.context import Context
from trainguard.core.errors import EXIT_OK, UsageError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("checkpoint", help="export sharded (DCP) checkpoints")
    s = p.add_subparsers(dest="checkpoint_command", metavar="COMMAND", required=True)
    e = s.add_parser(
        "export", help="write one sealed, signed single-file checkpoint of a sharded step "
                       "(checkpoint:export, MFA)",
        description="Verify a sealed DCP step of DIR and write it as one sealed, signed "
                    "single-file checkpoint OUTDIR/step-NNNNNNNN.tgseal.")
    e.add_argument("directory", type=Path, metavar="DIR",
                   help="the job's checkpoint folder (holding step-NNNNNNNN.dcp folders)")
    e.add_argument("--step", type=int, default=None, metavar="N",
                   help="the step to export (default: the newest that verifies)")
    e.add_argument("--out", type=Path, required=True, metavar="OUTDIR",
                   help="folder for step-NNNNNNNN.tgseal and its signed manifest")
    e.add_argument("--project", default="default", help="policy domain (default %(default)s)")
    e.add_argument("--otp", metavar="CODE", help="TOTP or recovery code for step-up MFA")
    e.set_defaults(func=run_export)


def _step_folder(directory: Path, step: int | None, verify: Any) -> Path:
    """The step folder to export; usage errors (exit 2) for what is not there."""
    from trainguard.trainer.dcp import list_steps, newest_verified

    if not directory.is_dir():
        raise UsageError(f"no checkpoint folder at {directory}",
                         tip="pass the job's --checkpoint-dir")
    if step is None:
        info, _refused = newest_verified(directory, verify)
        if info is None:
            raise UsageError(f"no sharded checkpoint in {directory} verifies",
                             tip="list the folder; export a step with --step N")
        return info.path
    steps = dict(list_steps(directory))
    if step not in steps:
        have = ", ".join(str(s) for s in sorted(steps)) or "none"
        raise UsageError(f"no signed sharded checkpoint for step {step} in {directory} "
                         f"(steps: {have})", tip="pick one of the listed steps")
    return steps[step]


def run_export(args: argparse.Namespace, ctx: Context) -> int:
    from trainguard.agent.api.client import report_incident
    from trainguard.agent.api.keys import KeyService
    from trainguard.trainer.checkpoint import CheckpointStore, manifest_path
    from trainguard.trainer.dcp import LocalKeys, export_single, trust_verifier
    from trainguard.trainer.errors import CheckpointTampered
    from trainguard.trainer.launcher import trust_for

    home = ctx.home.require()
    directory = args.directory.expanduser().absolute()
    out = args.out.expanduser().absolute()
    trust = trust_for(home)
    verify = trust_verifier(trust)
    folder = _step_folder(directory, args.step, verify)
    target = out / folder.name.replace(".dcp", ".tgseal")
    if target.exists():
        raise UsageError(f"{target} already exists", tip="export into an empty folder")
    decision = ctx.access().require("checkpoint:export", f"/checkpoints/{directory.name}",
                                    args.project, otp=args.otp)
    principal = str(decision.principal)
    keys = LocalKeys(ctx.keyring())
    service = KeyService(home)  # the same signer as the jobs' key service (node cert or key)

    def sign(body: dict[str, Any]) -> dict[str, Any]:
        return service.sign({"manifest": body})

    try:
        info = export_single(folder, out, keys, sign, verify)
    except CheckpointTampered as exc:
        evidence = {"checkpoint": str(folder), "reason": exc.message, "action": "export"}
        ctx.audit.record("checkpoint.export.refused", principal, evidence)
        report_incident(home, ctx.config, "checkpoint-tampered", "high", evidence)
        raise
    written = CheckpointStore(out, keys, trust).verify(info.path)  # as the single-file loader
    result = {"step": written.step, "source": str(folder), "out": str(written.path),
              "manifest": str(manifest_path(written.path)), "sha256": written.sha256,
              "signer": written.signer}
    ctx.audit.record("checkpoint.export", principal, result)
    ctx.emit(result, lambda r: f"exported step {r['step']} of {r['source']}\n  -> {r['out']} "
                               f"(signed by {r['signer']})")
    return EXIT_OK
