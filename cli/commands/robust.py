"""`trainguard robust eval|certify|train`: robustness evaluation, certification, training.

torch and trainguard.adversarial are imported inside the handlers only: the agent package
must never pull torch in at import time.

Exit codes of `robust eval`: 0 when every gradient-masking check passed (or could not run),
1 when a check failed (the robustness numbers are likely overstated), 2 on usage errors.
`robust certify` exits 0 once certified (abstentions are results, not failures).

Both `eval` and `certify` record a `robustness-eval` audit event, the report's robustness
evidence. Its data: model, weights_sha256, dataset, samples, norm, clean_accuracy;
``evidence`` ("empirical", "certified" or "empirical+certified"); for attacks ``attacks``
(the attack names run), ``budget``, ``worst_case`` [{eps, accuracy}] (per-sample worst case
over the attacks), ``empirical`` [{eps, attack, accuracy}] (every figure, with the auto
sequence's per-component ones as auto/<name>) and ``failed_checks``; and ``certified``:
null, or {method: "randomized-smoothing", norm: "l2", sigma, n0, n, alpha, samples,
base_clean_accuracy, smoothed_accuracy, abstain_rate, mean_certified_radius, per_radius:
[{radius, accuracy}]}. Accuracies are fractions.
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

ATTACK_NAMES = ("fgsm", "pgd", "apgd", "apgd-dlr", "apgd-t", "fab", "fab-t", "square", "auto")
ALL_ATTACKS = ("fgsm", "pgd", "apgd", "auto")  # every masking check can run
METHOD_CHOICES = ("fgsm-rs", "pgd", "trades", "standard", "gaussian")
EVAL_EVENT = "robustness-eval"
BUDGET_HELP = (
    "auto sequence budget (default %(default)s): standard = APGD-CE 100 steps, APGD-T and "
    "FAB-T 100 steps x 9 target classes, Square 5000 queries (AutoAttack standard); fast = "
    "25 steps, 3 target classes, 1000 queries. Also sets the target classes and queries of "
    "single apgd-t / fab-t / square runs"
)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    robust = sub.add_parser(
        "robust", help="adversarial robustness: evaluate, certify and train models"
    )
    rsub = robust.add_subparsers(dest="robust_command", metavar="COMMAND")
    robust.set_defaults(func=_no_subcommand(robust))

    ev = rsub.add_parser("eval", help="robust accuracy per epsilon and attack, masking checks")
    ev.add_argument("--model", required=True, help="MODULE:FACTORY returning an nn.Module")
    ev.add_argument("--weights", required=True, type=Path, help="state dict saved by torch.save")
    ev.add_argument("--dataset", required=True, help="digits | mnist:DIR (test split is used)")
    ev.add_argument(
        "--eps", default="0.1,0.2,0.3", help="comma-separated radii (default %(default)s)"
    )
    ev.add_argument("--norm", choices=("linf", "l2"), default="linf",
                    help="threat model: L-inf or L2 ball of radius eps (default %(default)s)")
    ev.add_argument(
        "--attack",
        default="auto",
        help="comma-separated: "
        + ", ".join(ATTACK_NAMES)
        + ", or all (= "
        + ",".join(ALL_ATTACKS)
        + "); default %(default)s: APGD-CE -> APGD-T -> FAB-T -> "
        "Square, each on the points still robust (AutoAttack standard)",
    )
    ev.add_argument("--budget", choices=("fast", "standard"), default="standard", help=BUDGET_HELP)
    ev.add_argument(
        "--steps", type=int, default=50, help="iterations of single pgd/apgd/apgd-*/fab/fab-t runs"
    )
    ev.add_argument(
        "--step-size", type=float, default=None, help="PGD step (default 2.5*eps/steps)"
    )
    ev.add_argument("--restarts", type=int, default=1,
                    help="random restarts per attack; the worst case per sample counts")
    ev.add_argument("--limit", type=int, default=None, help="evaluate the first N test samples")
    ev.add_argument("--batch-size", type=int, default=256, help="samples per batch")
    ev.add_argument("--seed", type=int, default=0, help="seed of the attacks' randomness")
    ev.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
    ev.add_argument("--svg", type=Path, default=None, help="write a plot of accuracy vs eps")
    ev.add_argument("--out", type=Path, default=None, help="also write the JSON result here")
    ev.add_argument(
        "--certify-sigma",
        type=float,
        default=None,
        help="also certify (L2, randomized smoothing) with this sigma, as `robust certify`",
    )
    ev.add_argument("--certify-n", type=int, default=1000, help="estimation samples (certify)")
    ev.add_argument("--certify-alpha", type=float, default=0.001, help="failure probability")
    ev.set_defaults(func=handle_eval)

    ce = rsub.add_parser(
        "certify",
        help="certified L2 accuracy by randomized smoothing (Cohen et al. 2019)",
        description="CERTIFY: n0 noisy samples pick the class, n more bound its probability "
        "from below (Clopper-Pearson at level 1 - alpha); the smoothed classifier is certified "
        "at radius sigma * Phi^-1(p_lower) or abstains. Train the model with "
        "`robust train --method gaussian --sigma S` for the same sigma.",
    )
    ce.add_argument("--model", required=True, help="MODULE:FACTORY returning an nn.Module")
    ce.add_argument("--weights", required=True, type=Path, help="state dict saved by torch.save")
    ce.add_argument("--dataset", required=True, help="digits | mnist:DIR (test split is used)")
    ce.add_argument("--sigma", required=True, type=float, help="noise standard deviation")
    ce.add_argument(
        "--n", type=int, default=10_000, help="estimation samples (default %(default)s)"
    )
    ce.add_argument("--n0", type=int, default=100, help="selection samples (default %(default)s)")
    ce.add_argument("--alpha", type=float, default=0.001, help="failure probability")
    ce.add_argument(
        "--radii",
        default="0,0.25,0.5,0.75,1,1.25,1.5,2",
        help="comma-separated L2 radii to report (default %(default)s)",
    )
    ce.add_argument("--limit", type=int, default=None, help="certify the first N test samples")
    ce.add_argument("--batch", type=int, default=4096, help="noisy copies per forward pass")
    ce.add_argument("--seed", type=int, default=0, help="seed of the Monte Carlo noise")
    ce.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
    ce.add_argument("--out", type=Path, default=None, help="also write the JSON result here")
    ce.set_defaults(func=handle_certify)

    tr = rsub.add_parser(
        "train", help="adversarial training (FGSM-RS, PGD-AT, TRADES) or Gaussian noise training"
    )
    tr.add_argument("--dataset", required=True, help="digits | mnist:DIR (train split is used)")
    tr.add_argument("--method", required=True, choices=METHOD_CHOICES,
                    help="training method (standard is the undefended baseline)")
    tr.add_argument(
        "--eps", type=float, default=None, help="radius in --norm, e.g. 0.1 (not for gaussian)"
    )
    tr.add_argument(
        "--norm", choices=("linf", "l2"), default="linf", help="threat model of fgsm-rs and pgd"
    )
    tr.add_argument(
        "--sigma", type=float, default=0.25, help="noise of --method gaussian (default %(default)s)"
    )
    tr.add_argument("--epochs", required=True, type=int, help="passes over the training set")
    tr.add_argument("--out", required=True, type=Path, help="where to write the state dict")
    tr.add_argument("--model", default=None, help="MODULE:FACTORY (default: reference model)")
    tr.add_argument("--seed", type=int, default=0, help="seed of initialisation and data order")
    tr.add_argument("--batch-size", type=int, default=64, help="samples per step")
    tr.add_argument("--lr", type=float, default=2e-3, help="learning rate (Adam)")
    tr.add_argument("--steps", type=int, default=10, help="attack steps for pgd and trades")
    tr.add_argument("--beta", type=float, default=6.0, help="TRADES weight of the KL term")
    tr.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
    tr.set_defaults(func=handle_train)


def _no_subcommand(parser: argparse.ArgumentParser) -> Any:
    def handler(args: argparse.Namespace, ctx: Context) -> int:
        raise UsageError(
            "robust needs a sub-command", tip="trainguard robust eval|certify|train --help"
        )

    return handler


def _parse_attacks(text: str) -> tuple[str, ...]:
    names: list[str] = []
    for raw in text.split(","):
        name = raw.strip()
        if name == "all":
            names.extend(ALL_ATTACKS)
        elif name in ATTACK_NAMES:
            names.append(name)
        elif name:
            raise UsageError(
                f"--attack {text!r}: unknown attack {name!r}",
                tip="choose from " + ", ".join((*ATTACK_NAMES, "all")),
            )
    if not names:
        raise UsageError("--attack needs at least one attack")
    return tuple(dict.fromkeys(names))


def _parse_radii(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise UsageError(f"--radii {text!r} is not a comma-separated list of numbers") from exc
    if not values or any(v < 0 for v in values):
        raise UsageError(f"--radii {text!r}: every radius must be >= 0")
    return values


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


def _event(summary: dict[str, Any]) -> dict[str, Any]:
    """The robustness-eval event data (keys in the module docstring)."""
    certified = summary.get("certified")
    empirical = summary.get("robust", [])
    data = {
        k: summary[k]
        for k in ("model", "weights_sha256", "dataset", "samples", "norm", "clean_accuracy")
    }
    data["evidence"] = "+".join(
        part for part, present in (("empirical", empirical), ("certified", certified)) if present
    )
    data["attacks"] = summary.get("worst_case", {}).get("attacks", [])
    data["budget"] = summary.get("settings", {}).get("budget")
    data["worst_case"] = summary.get("worst_case", {}).get("per_eps", [])
    data["empirical"] = empirical
    data["failed_checks"] = [c["name"] for c in summary.get("checks", []) if c["passed"] is False]
    data["certified"] = certified
    return data


def _record(ctx: Context, summary: dict[str, Any]) -> dict[str, Any]:
    """Record the evaluation as audit evidence; report, never hide, a failure to record."""
    try:
        ctx.audit.record(EVAL_EVENT, getpass.getuser(), _event(summary))
    except (ImportError, TrainguardError, OSError) as exc:
        detail = exc.message if isinstance(exc, TrainguardError) else str(exc)
        ctx.info(f"warning: robustness result not recorded in the audit log: {detail}")
        return {"recorded": False, "detail": detail}
    return {"recorded": True, "event": EVAL_EVENT}


def _certify_config(sigma: float, n: int, n0: int, alpha: float, **extra: Any) -> Any:
    from trainguard.adversarial import CertifyConfig

    cfg = CertifyConfig(sigma=sigma, n=n, n0=n0, alpha=alpha, **extra)
    if errors := cfg.validate():
        raise UsageError("; ".join(errors))
    return cfg


def handle_eval(args: argparse.Namespace, ctx: Context) -> int:
    from trainguard.adversarial import AttackKind, Budget, EvalConfig, Norm, render_svg
    from trainguard.adversarial.runner import eval_summary, run_eval

    attacks = tuple(AttackKind(a) for a in _parse_attacks(args.attack))
    certify = None
    if args.certify_sigma is not None:
        certify = _certify_config(args.certify_sigma, args.certify_n, 100, args.certify_alpha)
    cfg = EvalConfig(
        eps=_parse_eps(args.eps),
        attacks=attacks,
        budget=Budget(args.budget),
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
        certify=certify,
    )
    summary = eval_summary(report, **meta)
    summary.setdefault("certified", None)
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
        lines.append(f"  eps {p['eps']:<6g} {p['attack']:<12} {p['accuracy']:.4f}")
    for p in s["worst_case"]["per_eps"]:
        lines.append(f"  eps {p['eps']:<6g} worst {p['accuracy']:.4f}")
    for c in s["checks"]:
        mark = {True: "ok  ", False: "FAIL", None: "skip"}[c["passed"]]
        lines.append(f"{mark} {c['name']}: {c['detail']}")
    if s.get("certified"):
        lines.append(_render_certified(s["certified"]))
    return "\n".join(lines)


def _render_certified(c: dict[str, Any]) -> str:
    lines = [
        f"certified (L2, randomized smoothing, sigma {c['sigma']:g}, n {c['n']}, "
        f"alpha {c['alpha']:g}) on {c['samples']} samples: smoothed accuracy "
        f"{c['smoothed_accuracy']:.4f}, abstain {c['abstain_rate']:.4f}, base clean "
        f"{c['base_clean_accuracy']:.4f}"
    ]
    for p in c["per_radius"]:
        lines.append(f"  radius {p['radius']:<6g} certified {p['accuracy']:.4f}")
    return "\n".join(lines)


def handle_certify(args: argparse.Namespace, ctx: Context) -> int:
    from trainguard.adversarial.runner import certify_summary, run_certify

    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be >= 1")
    cfg = _certify_config(
        args.sigma,
        args.n,
        args.n0,
        args.alpha,
        radii=_parse_radii(args.radii),
        batch=args.batch,
        seed=args.seed,
    )
    report, meta = run_certify(
        args.model,
        args.weights,
        args.dataset,
        cfg,
        scan=_scanner(),
        limit=args.limit,
        device=_device(args.device),
        progress=ctx.info,
    )
    summary: dict[str, Any] = {
        **meta,
        "samples": report.samples,
        "norm": "l2",
        "clean_accuracy": report.clean_accuracy,
        "certified": certify_summary(report),
    }
    summary["audit"] = _record(ctx, summary)
    if args.out:
        with atomic_output(args.out) as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    ctx.emit(summary, lambda s: _render_certified(s["certified"]))
    return EXIT_OK


def handle_train(args: argparse.Namespace, ctx: Context) -> int:
    import torch
    from trainguard.adversarial import Method, Norm
    from trainguard.adversarial.runner import TrainSettings, run_train

    method = Method(args.method)
    if args.eps is None and method not in (Method.GAUSSIAN, Method.STANDARD):
        raise UsageError(f"--method {method.value} needs --eps", tip="e.g. --eps 0.1")
    eps = 0.0 if args.eps is None else args.eps
    if eps < 0 or args.epochs < 1:
        raise UsageError("--eps must be >= 0 and --epochs >= 1")
    if method is Method.GAUSSIAN and not args.sigma > 0:
        raise UsageError("--sigma must be > 0 for --method gaussian")
    if method is Method.TRADES and args.norm == "l2":
        raise UsageError("trades is implemented for linf only", tip="use --method pgd --norm l2")
    settings = TrainSettings(
        dataset=args.dataset,
        method=method,
        eps=eps,
        norm=Norm(args.norm),
        sigma=args.sigma,
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
