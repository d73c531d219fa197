"""Attack speed and strength, as JSON on stdout.

Speed: time per batch of trainguard's PGD (restarts=1, random start) against baselines run in
the same process on the same model and batch: torchattacks.PGD when it is importable (it is
not a dependency), and always a naive reference PGD loop written here. Ratios are
trainguard / baseline (below 1 means trainguard is faster).

Strength: an FGSM-RS model trained on digits (eps 0.1) and an undefended one, attacked with
FGSM, PGD-50 x 10 restarts and APGD-CE; the per-sample worst case must not exceed any attack.

    python tests/bench/bench_attacks.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from trainguard.adversarial import (
    PGD,
    AdversarialStep,
    EvalConfig,
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


def _time_interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int
) -> dict[str, dict[str, float]]:
    """Run the contenders in turn, round after round, so that load changes on a shared
    machine hit all of them alike; report the median and the best round of each."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {n: {"median": statistics.median(t), "min": min(t)} for n, t in times.items()}


def _speed_case(
    name: str,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    steps: int,
    repeats: int,
    eps: float = 0.3,
    early_stop: bool = False,
) -> dict[str, Any]:
    """Same model, batch, eps, step size and steps for every contender. With ``early_stop``
    the trainguard contender stops on fooled samples (what `robust eval` does): same robust
    accuracy, less work, so only meaningful on a trained model."""
    model.eval()
    alpha = eps / 30
    fns: dict[str, Callable[[], Any]] = {
        "trainguard": lambda: PGD(model, eps, alpha, steps, restarts=1, early_stop=early_stop)(
            x, y
        ),
        "naive_loop": lambda: naive_pgd(model, x, y, eps, alpha, steps),
    }
    row: dict[str, Any] = {
        "case": name,
        "batch": int(x.shape[0]),
        "steps": steps,
        "eps": eps,
        "trainguard_early_stop": early_stop,
    }
    try:
        import torchattacks
    except ImportError:
        row["torchattacks"] = "not installed: compared with the naive loop only"
    else:
        ta = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
        fns["torchattacks"] = lambda: ta(x, y)
        row["torchattacks_version"] = torchattacks.__version__
    t = _time_interleaved(fns, repeats)
    for n, v in t.items():
        row[f"{n}_s_per_batch_median"] = round(v["median"], 4)
    ours = t.pop("trainguard")
    for n, v in t.items():
        row[f"ratio_vs_{n}_median"] = round(ours["median"] / v["median"], 3)
        row[f"ratio_vs_{n}_best"] = round(ours["min"] / v["min"], 3)
    return row


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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--no-strength", action="store_true", help="speed only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    steps = 10 if args.quick else 50
    test = load_digits("test")
    mnist_x = torch.rand(128 if args.quick else 256, 1, 28, 28)
    mnist_y = torch.randint(0, 10, (mnist_x.shape[0],))
    speed = [
        _speed_case(
            "digits_cnn, digits test batch",
            digits_cnn(),
            test.x[:256],
            test.y[:256],
            steps,
            args.repeats,
        ),
        _speed_case(
            "mnist_cnn (Wong et al.), 28x28 batch",
            mnist_cnn(),
            mnist_x,
            mnist_y,
            steps,
            args.repeats,
        ),
    ]
    torch.manual_seed(0)
    trained = digits_cnn()
    train_adversarial(
        trained,
        load_digits("train"),
        AdversarialStep("standard", 0.0),
        epochs=5,
        batch_size=64,
        lr=2e-3,
    )
    speed.append(
        _speed_case(
            "digits_cnn trained (undefended), eps 0.1, as in robust eval",
            trained,
            test.x[:256],
            test.y[:256],
            steps,
            args.repeats,
            eps=0.1,
            early_stop=True,
        )
    )
    result: dict[str, Any] = {
        "torch": torch.__version__,
        "threads": args.threads,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "speed": speed,
    }
    if not args.no_strength:
        result["strength"] = _strength(
            epochs=5 if args.quick else 30, steps=steps, restarts=2 if args.quick else 10
        )
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
