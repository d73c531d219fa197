"""Attack speed and strength, as JSON on stdout.

Speed: time per batch of trainguard's PGD, APGD and Square against baselines run in the same
process on the same model, batch, eps and iteration (query) count: torchattacks.PGD / APGD /
Square when torchattacks is importable (it is not a dependency: install it outside the
project, e.g. ``pip install --target /tmp/ta --no-deps torchattacks``; the bench adds
``--torchattacks-path`` (default $TORCHATTACKS_PATH or /tmp/ta) to sys.path when it exists),
and always a naive reference PGD loop written here. Ratios are trainguard / baseline (below 1
means trainguard is faster; 0.67 is 1.5x faster); ``speedup_vs_*`` is the inverse.

Work: for PGD and APGD each row also counts the samples that went through the model in one
extra, untimed run of each contender: ``point_iterations_*`` (passes with an input gradient,
the iterations) and ``forward_only_passes_*`` (the checks); ``point_iterations_saved`` is
trainguard's saving against torchattacks. Early stopping saves model passes; this says how
many, next to the robust accuracies that show it did not weaken the attack. torchattacks'
PGD draws its random start from the global generator: it is seeded with the seed trainguard's
PGD uses, so both start from the same points and their robust accuracies are comparable
(``trainguard_not_weaker``). APGD's and Square's random draws differ between the libraries.

Thread budgets: the rows run first with ``--threads`` (default 1) intra-op threads for both
libraries, timed in CPU seconds of the process; then the PGD / APGD rows as robust eval runs
them again with an equal thread budget of ``--budget-threads`` (default os.cpu_count())
given to both through torch.set_num_threads(N) (``--budget-only``: these rows alone). With
several threads CPU seconds no longer measure speed, so those rows are timed in wall
seconds (``speed_metric``); on a shared machine they depend on the load
(``load_average_1m`` per row).

Strength: an FGSM-RS model trained on digits (eps 0.1) and an undefended one, attacked with
FGSM, PGD-50 x 10 restarts and APGD-CE; the per-sample worst case must not exceed any attack.

    python tests/bench/bench_attacks.py [--quick] [--threads N] [--budget-threads N]
        [--budget-only] [--no-strength] [--eval-only]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from trainguard.adversarial import (
    APGD,
    PGD,
    AdversarialStep,
    EvalConfig,
    Square,
    evaluate_robustness,
    load_digits,
    train_adversarial,
)
from trainguard.adversarial.models import digits_cnn, mnist_cnn


def naive_pgd(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, alpha: float, steps: int
) -> Tensor:
    """The textbook loop (Madry et al.), the baseline when torchattacks is not installed."""
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        model.zero_grad()
        loss.backward()
        with torch.no_grad():
            x_adv = x_adv + alpha * x_adv.grad.sign()
            x_adv = (x + (x_adv - x).clamp(-eps, eps)).clamp(0, 1)
    return x_adv.detach()


class _Counting(nn.Module):
    """The model, counting the samples that pass through it: with an input gradient to
    come (an attack iteration) or forward only (a check)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.grad_samples = 0
        self.forward_samples = 0

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            self.grad_samples += int(x.shape[0])
        else:
            self.forward_samples += int(x.shape[0])
        out: Tensor = self.model(x)
        return out


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _time_interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Run the contenders in turn, round after round, so that load changes on a shared
    machine hit all of them alike; report the median and the best round of each, in CPU
    seconds of this process (with one thread, the least disturbed by other load) and wall
    seconds. Returns the timings and each contender's last output."""
    last = {name: fn() for name, fn in fns.items()}  # warm-up
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    wall: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            c0, t0 = _cpu_seconds(), time.perf_counter()
            last[name] = fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(_cpu_seconds() - c0)
    stats = {
        n: {
            "median": statistics.median(cpu[n]),
            "min": min(cpu[n]),
            "wall_median": statistics.median(wall[n]),
        }
        for n in fns
    }
    return stats, last


def _torchattacks() -> Any:
    try:
        import torchattacks
    except ImportError:
        return None
    return torchattacks


def _contenders(
    attack: str,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    steps: int,
    eps: float,
    early_stop: bool,
    alpha: float | None,
    fast: bool,
) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    """trainguard's attack and its baselines, all on the same model, batch, eps and budget."""
    ta = _torchattacks()
    info: dict[str, Any] = {}
    if ta is None:
        info["torchattacks"] = "not installed: compared with the naive loop only"
    else:
        info["torchattacks_version"] = ta.__version__
    fns: dict[str, Callable[[], Any]] = {}
    if attack == "pgd":
        a = alpha if alpha is not None else 2.5 * eps / steps
        fns["trainguard"] = lambda: PGD(model, eps, a, steps, early_stop=early_stop, seed=0)(x, y)
        fns["naive_loop"] = lambda: naive_pgd(model, x, y, eps, a, steps)
        if ta is not None:
            ta_pgd = ta.PGD(model, eps=eps, alpha=a, steps=steps)

            def seeded() -> Tensor:
                torch.manual_seed(0)  # the same random start as trainguard's seed=0
                return ta_pgd(x, y)  # type: ignore[no-any-return]

            fns["torchattacks"] = seeded
    elif attack == "apgd":
        fns["trainguard"] = lambda: APGD(model, eps, steps, early_stop=early_stop)(x, y)
        if ta is not None:
            fns["torchattacks"] = ta.APGD(model, eps=eps, steps=steps, loss="ce")
    else:
        fns["trainguard"] = lambda: Square(model, eps, steps, fast=fast)(x, y)
        if ta is not None:
            fns["torchattacks"] = ta.Square(model, eps=eps, n_queries=steps)
    for name in list(fns):
        if name == "torchattacks" and attack != "pgd":
            atk = fns[name]
            fns[name] = lambda atk=atk: atk(x, y)
    return fns, info


def _compared(attack: str, steps: int, early_stop: bool) -> str:
    """What a row compares, in words: the same job for every contender."""
    unit = "queries" if attack == "square" else "steps"
    same = f"same model, same points (the whole batch), same eps, {steps} {unit}, 1 restart"
    if attack == "square":
        return same + "; both libraries query only points still classified correctly"
    if attack == "apgd":
        same += "; torchattacks' APGD skips points misclassified clean"
    if attack == "pgd":
        same += "; torchattacks seeded like trainguard: same random start"
    if early_stop:
        return (
            same + "; torchattacks iterates every point for every step, trainguard stops "
            "iterating a point once it is misclassified (as robust eval does) and runs "
            "max-pooling on a channels-last copy and before the ReLU (bitwise the same "
            "results) and the first convolution's input gradient with torch's im2col kernel "
            "(equal to float rounding); each one's robust accuracy is reported next to its time"
        )
    return same + "; both iterate every point for every step"


def _speed_case(
    name: str,
    attack: str,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    steps: int,
    repeats: int,
    eps: float = 0.3,
    early_stop: bool = False,
    alpha: float | None = None,
    fast: bool = True,
) -> dict[str, Any]:
    """Same model, batch, eps, step size and steps for every contender. With ``early_stop``
    trainguard's PGD / APGD stop on fooled samples (what `robust eval` does): same robust
    accuracy, less work, so only meaningful on a trained model. torchattacks' APGD and both
    Square attacks skip misclassified points by design, so they run on a trained model.
    Every row also reports each contender's robust accuracy: faster must not mean weaker."""
    model.eval()
    fns, info = _contenders(attack, model, x, y, steps, eps, early_stop, alpha, fast)
    row: dict[str, Any] = {
        "case": name,
        "compared": _compared(attack, steps, early_stop),
        "attack": attack,
        "batch": int(x.shape[0]),
        "steps_or_queries": steps,
        "eps": eps,
        "trainguard_early_stop": early_stop,
        "trainguard_square_fast_path": fast if attack == "square" else None,
        **info,
    }
    t, outputs = _time_interleaved(fns, repeats)
    for n, v in t.items():
        row[f"{n}_cpu_s_per_batch_median"] = round(v["median"], 4)
        row[f"{n}_wall_s_per_batch_median"] = round(v["wall_median"], 4)
        with torch.no_grad():
            row[f"{n}_robust_accuracy"] = round(
                float((model(outputs[n]).argmax(1) == y).float().mean()), 4
            )
    if "torchattacks" in t:
        row["trainguard_not_weaker"] = (
            row["trainguard_robust_accuracy"] <= row["torchattacks_robust_accuracy"]
        )
    if attack in ("pgd", "apgd"):
        row.update(_point_passes(attack, model, x, y, steps, eps, early_stop, alpha))
    ours = t.pop("trainguard")
    for n, v in t.items():
        row[f"ratio_vs_{n}_median"] = round(ours["median"] / v["median"], 3)
        row[f"ratio_vs_{n}_best"] = round(ours["min"] / v["min"], 3)
        row[f"speedup_vs_{n}_median"] = round(v["median"] / ours["median"], 2)
        row[f"speedup_vs_{n}_wall_median"] = round(v["wall_median"] / ours["wall_median"], 2)
    threads = torch.get_num_threads()
    row["threads"] = threads
    # one thread: CPU seconds of the process, the least disturbed by other load; several
    # threads: only wall seconds say how soon the answer comes
    row["speed_metric"] = "cpu" if threads == 1 else "wall"
    row["load_average_1m"] = round(os.getloadavg()[0], 2)
    return row


def _point_passes(
    attack: str,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    steps: int,
    eps: float,
    early_stop: bool,
    alpha: float | None,
) -> dict[str, Any]:
    """Samples through the model in one untimed run of trainguard and of torchattacks:
    point-iterations (forward and input-gradient backward) and forward-only checks."""
    counted = _Counting(model)
    fns, _ = _contenders(attack, counted, x, y, steps, eps, early_stop, alpha, True)
    out: dict[str, Any] = {}
    for name in ("trainguard", "torchattacks"):
        if name in fns:
            counted.grad_samples = counted.forward_samples = 0
            fns[name]()
            out[f"point_iterations_{name}"] = counted.grad_samples
            out[f"forward_only_passes_{name}"] = counted.forward_samples
    if "point_iterations_torchattacks" in out:
        saved = 1 - out["point_iterations_trainguard"] / out["point_iterations_torchattacks"]
        out["point_iterations_saved"] = round(saved, 3)
    return out


def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return round(float((model(x).argmax(1) == y).float().mean()), 4)


def _strength(epochs: int, steps: int, restarts: int) -> dict[str, Any]:
    train, test = load_digits("train"), load_digits("test")
    out: dict[str, Any] = {}
    for label, method, eps_list in (
        ("fgsm-rs", "fgsm-rs", (0.1, 0.2, 0.3)),
        ("undefended", "standard", (0.1, 0.3)),
    ):
        torch.manual_seed(0)
        model = digits_cnn()
        t0 = time.perf_counter()
        train_adversarial(
            model, train, AdversarialStep(method, 0.1), epochs=epochs, batch_size=64, lr=2e-3
        )
        train_s = time.perf_counter() - t0
        cfg = EvalConfig(eps=eps_list, steps=steps, restarts=restarts)
        t0 = time.perf_counter()
        report = evaluate_robustness(model, test.x, test.y, cfg)
        doc = report.to_dict()
        doc["train_seconds"] = round(train_s, 1)
        doc["eval_seconds"] = round(time.perf_counter() - t0, 1)
        worst_ok = all(report.worst_case_at(p.eps) <= p.accuracy for p in report.robust)
        doc["worst_case_le_each_attack"] = worst_ok
        try:
            import torchattacks
        except ImportError:
            pass
        else:
            ref = {}
            for eps in eps_list:
                ta = torchattacks.PGD(
                    model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True
                )
                ref[str(eps)] = _accuracy(model, ta(test.x, test.y), test.y)
            doc["torchattacks_pgd_accuracy"] = ref
        out[label] = doc
    return out


def _trained(
    model: nn.Module, epochs: int, method: str = "standard", eps: float = 0.0
) -> nn.Module:
    torch.manual_seed(0)
    train_adversarial(
        model,
        load_digits("train"),
        AdversarialStep(method, eps),
        epochs=epochs,
        batch_size=64,
        lr=2e-3,
    )
    return model.eval()


def _speed(args: argparse.Namespace) -> list[dict[str, Any]]:
    steps = 10 if args.quick else 50
    queries = 100 if args.quick else 500
    r = args.repeats
    test = load_digits("test")
    xd, yd = test.x[:256], test.y[:256]
    mnist_x = torch.rand(128 if args.quick else 256, 1, 28, 28)
    mnist_y = torch.randint(0, 10, (mnist_x.shape[0],))
    # undefended (standard training) and adversarially trained (FGSM-RS, eps 0.1): on the
    # second most points survive, so stopping early on broken points saves less
    std = _trained(digits_cnn(), 5)
    adv = _trained(digits_cnn(), 5, "fgsm-rs", 0.1)
    full, ev = "full work", "as in robust eval"
    es = {"eps": 0.1, "early_stop": True}
    cases: list[tuple[str, str, nn.Module, Tensor, Tensor, int, dict[str, Any]]] = [
        # raw throughput, full work on every sample: the model's forward/backward dominates
        (f"digits_cnn untrained, {full}", "pgd", digits_cnn(), xd, yd, steps, {}),
        (f"mnist_cnn untrained, {full}", "pgd", mnist_cnn(), mnist_x, mnist_y, steps, {}),
        (f"digits_cnn standard-trained, {full}", "pgd", std, xd, yd, steps, {"eps": 0.1}),
        (f"digits_cnn standard-trained, {full}", "apgd", std, xd, yd, steps, {"eps": 0.1}),
        # as robust eval runs them: no work on samples already broken
        (f"digits_cnn standard-trained, {ev}", "pgd", std, xd, yd, steps, es),
        (f"digits_cnn standard-trained, {ev}", "apgd", std, xd, yd, steps, es),
        (f"digits_cnn FGSM-RS-trained, {ev}", "pgd", adv, xd, yd, steps, es),
        (f"digits_cnn FGSM-RS-trained, {ev}", "apgd", adv, xd, yd, steps, es),
        (
            "digits_cnn standard-trained, eager queries",
            "square",
            std,
            xd,
            yd,
            queries,
            {"eps": 0.05, "fast": False},
        ),
        (f"digits_cnn standard-trained, {ev}", "square", std, xd, yd, queries, {"eps": 0.05}),
        (f"digits_cnn FGSM-RS-trained, {ev}", "square", adv, xd, yd, queries, {"eps": 0.05}),
    ]
    rows = [
        _speed_case(name, attack, model, x, y, n, r, **kw)
        for name, attack, model, x, y, n, kw in cases
        if (not args.eval_only or name.endswith(ev)) and not args.budget_only
    ]
    if args.budget_threads > 1 and args.budget_threads != args.threads:
        # the equal thread budget: both libraries get the same cores (see the docstring)
        torch.set_num_threads(args.budget_threads)
        try:
            rows += [
                _speed_case(
                    f"{name}, {args.budget_threads} threads each", attack, m, x, y, n, r, **kw
                )
                for name, attack, m, x, y, n, kw in cases
                if name.endswith(ev) and attack in ("pgd", "apgd")
            ]
        finally:
            torch.set_num_threads(args.threads)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads for both")
    ap.add_argument(
        "--budget-threads",
        type=int,
        default=os.cpu_count() or 1,
        help="equal thread budget for both in the extra PGD/APGD rows (1: none)",
    )
    ap.add_argument("--budget-only", action="store_true", help="only the equal-thread-budget rows")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--no-strength", action="store_true", help="speed only")
    ap.add_argument(
        "--eval-only", action="store_true", help="only the rows run as robust eval runs them"
    )
    ap.add_argument(
        "--torchattacks-path",
        default=os.environ.get("TORCHATTACKS_PATH", "/tmp/ta"),
        help="a folder holding torchattacks (pip install --target); added to sys.path if present",
    )
    args = ap.parse_args()
    if os.path.isdir(args.torchattacks_path):
        sys.path.append(args.torchattacks_path)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result: dict[str, Any] = {
        "torch": torch.__version__,
        "threads": args.threads,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "speed": _speed(args),
    }
    if not args.no_strength:
        steps = 10 if args.quick else 50
        result["strength"] = _strength(
            epochs=5 if args.quick else 30, steps=steps, restarts=2 if args.quick else 10
        )
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
