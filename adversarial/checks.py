"""Checks that flag likely gradient masking (Athalye, Carlini & Wagner 2018; Carlini et al.
2019): a robustness number that fails one of them is probably overstated.

* ``accuracy-falls-with-eps``: robust accuracy never rises with eps and ends below clean;
* ``iterative-beats-single-step``: FGSM must not beat an iterative attack;
* ``large-eps-accuracy-near-zero``: PGD at half the input range leaves almost nothing;
* ``nonzero-input-gradients``: few samples have an exactly zero input gradient;
* ``gradient-free-adds-little``: the gradient-free Square attack, run after the gradient
  attacks (in the AutoAttack sequence, or alone next to them), must break few points that
  every gradient attack left standing; when it does, the gradients lie.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from trainguard.adversarial.attacks import Norm
from trainguard.adversarial.evaluate import (
    ITERATIVE,
    AttackKind,
    CheckResult,
    EvalConfig,
    _frac,
    robust_correct,
    zero_gradient_share,
)

__all__ = ["run_checks"]


def run_checks(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    cfg: EvalConfig,
    eps_list: Sequence[float],
    clean: Tensor,
    per: dict[tuple[float, str], Tensor],
) -> list[CheckResult]:
    n = x.shape[0]
    tol = max(2 / n, 0.005)
    acc = {key: _frac(v) for key, v in per.items()}
    """Every masking check, in a fixed order (a check that cannot run says so, passed=None)."""
    return [
        _check_monotone(cfg, eps_list, _frac(clean), acc, tol),
        _check_iterative_beats_single(cfg, eps_list, acc, tol),
        _check_large_eps(model, x, y, cfg, clean),
        _check_gradients(model, x, y, cfg),
        _check_gradient_free(cfg, eps_list, clean, per, tol),
    ]


def _check_monotone(
    cfg: EvalConfig,
    eps_list: Sequence[float],
    clean_acc: float,
    acc: dict[tuple[float, str], float],
    tol: float,
) -> CheckResult:
    problems = []
    for kind in cfg.attacks:
        curve = [clean_acc] + [acc[(e, kind.value)] for e in eps_list]
        grid = [0.0, *eps_list]
        for i in range(1, len(curve)):
            if curve[i] > curve[i - 1] + tol:
                problems.append(
                    f"{kind.value}: {curve[i - 1]:.3f} at eps {grid[i - 1]:g} rises to "
                    f"{curve[i]:.3f} at eps {grid[i]:g}"
                )
        if clean_acc > 0 and curve[-1] >= clean_acc - tol:
            problems.append(
                f"{kind.value}: accuracy at eps {eps_list[-1]:g} ({curve[-1]:.3f}) is no lower "
                f"than clean ({clean_acc:.3f})"
            )
    detail = "; ".join(problems) or "robust accuracy falls as eps grows for every attack"
    return CheckResult("accuracy-falls-with-eps", not problems, detail)


def _check_iterative_beats_single(
    cfg: EvalConfig,
    eps_list: Sequence[float],
    acc: dict[tuple[float, str], float],
    tol: float,
) -> CheckResult:
    iterative = [k for k in cfg.attacks if k in ITERATIVE]
    if AttackKind.FGSM not in cfg.attacks or not iterative:
        return CheckResult(
            "iterative-beats-single-step",
            None,
            "not run: needs fgsm and an iterative attack (pgd, apgd, auto, ...); use --attack all",
        )
    problems = []
    for eps in eps_list:
        single = acc[(eps, AttackKind.FGSM.value)]
        for kind in iterative:
            if acc[(eps, kind.value)] > single + tol:
                problems.append(
                    f"eps {eps:g}: fgsm {single:.3f} beats {kind.value} {acc[(eps, kind.value)]:.3f}"
                )
    detail = "; ".join(problems) or "iterative attacks are at least as strong as FGSM at every eps"
    return CheckResult("iterative-beats-single-step", not problems, detail)


def _check_large_eps(
    model: nn.Module, x: Tensor, y: Tensor, cfg: EvalConfig, clean: Tensor
) -> CheckResult:
    width = cfg.clip[1] - cfg.clip[0]
    eps = cfg.large_eps if cfg.large_eps is not None else 0.5 * width
    if cfg.norm is Norm.L2:
        eps = cfg.large_eps if cfg.large_eps is not None else 0.5 * width * x[0].numel() ** 0.5
    limit = min(x.shape[0], 512)
    xs, ys = x[:limit], y[:limit]
    probe = EvalConfig(
        eps=(eps,),
        attacks=(AttackKind.PGD,),
        steps=cfg.steps,
        restarts=1,
        norm=cfg.norm,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        clip=cfg.clip,
    )
    ok = clean[:limit] & robust_correct(model, xs, ys, AttackKind.PGD, eps, probe)
    acc = _frac(ok)
    passed = acc <= cfg.large_eps_max_accuracy
    verdict = (
        "as expected" if passed else "an attack this large should win: gradients may be masked"
    )
    return CheckResult(
        "large-eps-accuracy-near-zero",
        passed,
        f"PGD-{cfg.steps} at eps {eps:g}: accuracy {acc:.3f} on {limit} samples "
        f"(threshold {cfg.large_eps_max_accuracy:g}); {verdict}",
    )


def _check_gradients(model: nn.Module, x: Tensor, y: Tensor, cfg: EvalConfig) -> CheckResult:
    share = zero_gradient_share(model, x, y, cfg.batch_size)
    passed = share <= cfg.zero_grad_max_share
    return CheckResult(
        "nonzero-input-gradients",
        passed,
        f"{share:.1%} of samples have an exactly zero input gradient "
        f"(threshold {cfg.zero_grad_max_share:.0%})",
    )


_GRADIENT_KINDS = tuple(k for k in ITERATIVE if k is not AttackKind.AUTO) + (AttackKind.FGSM,)


def _check_gradient_free(
    cfg: EvalConfig,
    eps_list: Sequence[float],
    clean: Tensor,
    per: dict[tuple[float, str], Tensor],
    tol: float,
) -> CheckResult:
    name = "gradient-free-adds-little"
    limit = max(cfg.square_gain_max_share, tol)
    gains = []
    for eps in eps_list:
        if AttackKind.AUTO in cfg.attacks:
            before, after = per[(eps, "auto/fab-t")], per[(eps, "auto/square")]
        elif AttackKind.SQUARE in cfg.attacks and any(k in cfg.attacks for k in _GRADIENT_KINDS):
            before = clean.clone()
            for kind in cfg.attacks:
                if kind in _GRADIENT_KINDS:
                    before &= per[(eps, kind.value)]
            after = before & per[(eps, AttackKind.SQUARE.value)]
        else:
            return CheckResult(
                name, None, "not run: needs auto, or square next to a gradient attack"
            )
        gains.append((eps, _frac(before & ~after)))
    bad = [
        f"eps {e:g}: square broke {g:.1%} of samples the gradient attacks left"
        for e, g in gains
        if g > limit
    ]
    if bad:
        detail = "; ".join(bad) + f" (threshold {limit:.1%}): gradients may be masked"
    else:
        worst = max(g for _, g in gains)
        detail = f"square broke at most {worst:.1%} of samples after the gradient attacks (threshold {limit:.1%})"
    return CheckResult(name, not bad, detail)
