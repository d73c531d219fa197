"""`trainguard robust eval|train`: robustness evaluation and adversarial training.

torch and trainguard.adversarial are imported inside the handlers only: the agent package
must never pull torch in at import time.

Exit codes of `robust eval`: 0 when every gradient-masking check passed (or could not run),
1 when a check failed (the robustness numbers are likely overstated), 2 on usage errors.
"""

from __future__ import annotations

import argparse
import getpass
import json
from pathlib import Path
from typing import Any

from trainguard.cli.context import Context
from trainguard.core.errors import EXIT_FINDINGS, EXIT_OK, TrainguardError, UsageError
from trainguard.core.fs import atomic_output

ATTACK_CHOICES = ("fgsm", "pgd", "apgd", "all")
METHOD_CHOICES = ("fgsm-rs", "pgd", "trades", "standard")
EVAL_EVENT = "robustness-eval"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    robust = sub.add_parser("robust", help="adversarial robustness: evaluate and train models")
    rsub = robust.add_subparsers(dest="robust_command", metavar="COMMAND")
    robust.set_defaults(func=_no_subcommand(robust))

    ev = rsub.add_parser("eval", help="robust accuracy per epsilon and attack, masking checks")
    ev.add_argument("--model", required=True, help="MODULE:FACTORY returning an nn.Module")
    ev.add_argument("--weights", required=True, type=Path, help="state dict saved by torch.save")
    ev.add_argument("--dataset", required=True, help="digits | mnist:DIR (test split is used)")
    ev.add_argument(
        "--eps", default="0.1,0.2,0.3", help="comma-separated radii (default %(default)s)"
    )
    ev.add_argument("--norm", choices=("linf", "l2"), default="linf")
    ev.add_argument("--attack", choices=ATTACK_CHOICES, default="all")
    ev.add_argument("--steps", type=int, default=50, help="iterations for pgd/apgd")
    ev.add_argument(
        "--step-size", type=float, default=None, help="PGD step (default 2.5*eps/steps)"
    )
    ev.add_argument("--restarts", type=int, default=1)
    ev.add_argument("--limit", type=int, default=None, help="evaluate the first N test samples")
    ev.add_argument("--batch-size", type=int, default=256)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
    ev.add_argument("--svg", type=Path, default=None, help="write a plot of accuracy vs eps")
    ev.add_argument("--out", type=Path, default=None, help="also write the JSON result here")
    ev.set_defaults(func=handle_eval)

    tr = rsub.add_parser("train", help="adversarial training (FGSM-RS, PGD-AT, TRADES)")
    tr.add_argument("--dataset", required=True, help="digits | mnist:DIR (train split is used)")
    tr.add_argument("--method", required=True, choices=METHOD_CHOICES)
    tr.add_argument("--eps", required=True, type=float, help="Linf radius, e.g. 0.1")
    tr.add_argument("--epochs", required=True, type=int)
    tr.add_argument("--out", required=True, type=Path, help="where to write the state dict")
    tr.add_argument("--model", default=None, help="MODULE:FACTORY (default: reference model)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--batch-size", type=int, default=64)
    tr.add_argument("--lr", type=float, default=2e-3)
    tr.add_argument("--steps", type=int, default=10, help="attack steps for pgd and trades")
    tr.add_argument("--beta", type=float, default=6.0, help="TRADES weight of the KL term")
    tr.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
    tr.set_defaults(func=handle_train)


def _no_subcommand(parser: argparse.ArgumentParser) -> Any:
    def handler(args: argparse.Namespace, ctx: Context) -> int:
        raise UsageError("robust needs a sub-command", tip="trainguard robust eval|train --help")

    return handler


def _parse_eps(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise UsageError(f"--eps {text!r} is not a comma-separated list of numbers") from exc
    if not values or any(not v > 0 for v in values):
        raise UsageError(f"--eps {text!r}: every radius must be > 0")
    return values


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA device is available", tip="use --device cpu")
    return name


def _scanner() -> Any:
    """The supply-chain helper's scanner; weights are never loaded without it."""
    try:
        from trainguard.integrity.scanner import require_safe
    except ImportError as exc:
        raise TrainguardError(
            "the artifact scanner (trainguard.integrity.scanner.require_safe) is not available "
            "in this build; refusing to load weights that were not scanned",
            tip="install a trainguard build that includes the scanner",
        ) from exc
    return require_safe


def _record(ctx: Context, summary: dict[str, Any]) -> dict[str, Any]:
    """Record the evaluation as audit evidence; report, never hide, a failure to record."""
    data = {
        k: summary[k]
        for k in ("model", "weights_sha256", "dataset", "samples", "norm", "clean_accuracy")
    }
    data["worst_case"] = summary["worst_case"]["per_eps"]
    data["failed_checks"] = [c["name"] for c in summary["checks"] if c["passed"] is False]
    try:
        ctx.audit.record(EVAL_EVENT, getpass.getuser(), data)
    except (ImportError, TrainguardError, OSError) as exc:
        detail = exc.message if isinstance(exc, TrainguardError) else str(exc)
        ctx.info(f"warning: robustness result not recorded in the audit log: {detail}")
        return {"recorded": False, "detail": detail}
    return {"recorded": True, "event": EVAL_EVENT}


def handle_eval(args: argparse.Namespace, ctx: Context) -> int:
    from trainguard.adversarial import AttackKind, EvalConfig, Norm, render_svg
    from trainguard.adversarial.runner import eval_summary, run_eval

    attacks = tuple(AttackKind) if args.attack == "all" else (AttackKind(args.attack),)
    cfg = EvalConfig(
        eps=_parse_eps(args.eps),
        attacks=attacks,
        steps=args.steps,
        step_size=args.step_size,
        restarts=args.restarts,
        norm=Norm(args.norm),
        batch_size=args.batch_size,
        seed=args.seed,
    )
    if errors := cfg.validate():
        raise UsageError("; ".join(errors))
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be >= 1")
    report, meta = run_eval(
        args.model,
        args.weights,
        args.dataset,
        cfg,
        scan=_scanner(),
        limit=args.limit,
        device=_device(args.device),
        progress=ctx.info,
    )
    summary = eval_summary(report, **meta)
    if args.svg:
        with atomic_output(args.svg) as tmp:
            tmp.write_text(render_svg(report), encoding="utf-8")
        summary["svg"] = str(args.svg)
    summary["audit"] = _record(ctx, summary)
    if args.out:
        with atomic_output(args.out) as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    ctx.emit(summary, _render_eval)
    return EXIT_FINDINGS if report.suspicious else EXIT_OK


def _render_eval(s: dict[str, Any]) -> str:
    lines = [f"clean accuracy {s['clean_accuracy']:.4f} on {s['samples']} samples ({s['norm']})"]
    for p in s["robust"]:
        lines.append(f"  eps {p['eps']:<6g} {p['attack']:<5} {p['accuracy']:.4f}")
    for p in s["worst_case"]["per_eps"]:
        lines.append(f"  eps {p['eps']:<6g} worst {p['accuracy']:.4f}")
    for c in s["checks"]:
        mark = {True: "ok  ", False: "FAIL", None: "skip"}[c["passed"]]
        lines.append(f"{mark} {c['name']}: {c['detail']}")
    return "\n".join(lines)


def handle_train(args: argparse.Namespace, ctx: Context) -> int:
    import torch
    from trainguard.adversarial import Method
    from trainguard.adversarial.runner import TrainSettings, run_train

    if args.eps < 0 or args.epochs < 1:
        raise UsageError("--eps must be >= 0 and --epochs >= 1")
    settings = TrainSettings(
        dataset=args.dataset,
        method=Method(args.method),
        eps=args.eps,
        epochs=args.epochs,
        model=args.model,
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
        steps=args.steps,
        beta=args.beta,
        device=_device(args.device),
    )
    model, result, summary = run_train(settings, progress=ctx.info)
    if result.stopped_early:
        ctx.info(f"warning: {result.reason}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_output(args.out) as tmp:
        torch.save(state, tmp)
    summary["out"] = str(args.out)
    ctx.emit(
        summary, lambda s: f"wrote {s['out']} (test clean accuracy {s['test_clean_accuracy']:.4f})"
    )
    return EXIT_OK
