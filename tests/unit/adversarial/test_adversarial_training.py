"""Adversarial training: the step component, the overfitting guard, and the digits targets."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from trainguard.adversarial import (
    AdversarialError,
    AdversarialStep,
    AttackKind,
    EvalConfig,
    Method,
    OverfitGuard,
    evaluate_robustness,
    load_digits,
    train_adversarial,
)
from trainguard.adversarial.models import digits_cnn, digits_mlp


@pytest.mark.parametrize("method", [m for m in Method if m is not Method.GAUSSIAN])
def test_step_loss_is_differentiable_and_perturbation_bounded(method, digits_test):
    torch.manual_seed(0)
    model = digits_mlp().train()
    x, y = digits_test.x[:16], digits_test.y[:16]
    step = AdversarialStep(method, eps=0.1, steps=3)
    x_adv = step.perturb(model, x, y)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    loss = step.loss(model, x, y)
    assert loss.dim() == 0 and loss.requires_grad
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.training  # the perturbation is crafted in eval mode, then the mode comes back


def test_trades_loss_is_clean_ce_plus_beta_times_the_kl_its_attack_maximises(digits_test):
    """TRADES (Zhang et al. 2019): CE on the clean batch + beta * KL(f(x) || f(x')), where
    x' is crafted to raise that KL: the term is positive and grows with beta."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = digits_mlp().eval()
    x, y = digits_test.x[:64], digits_test.y[:64]
    clean_ce = float(F.cross_entropy(model(x), y))
    assert float(AdversarialStep("trades", 0.1, beta=0.0).loss(model, x, y)) == pytest.approx(
        clean_ce, rel=1e-6
    )
    l1 = float(AdversarialStep("trades", 0.1, beta=1.0).loss(model, x, y))
    l6 = float(AdversarialStep("trades", 0.1, beta=6.0).loss(model, x, y))
    kl = l1 - clean_ce
    assert kl > 0 and l6 - clean_ce == pytest.approx(6 * kl, rel=1e-2)
    # the crafted point raises the KL well above what a random point of the ball gives
    x_rand = (x + 0.1 * (2 * torch.rand_like(x) - 1)).clamp(0, 1)
    with torch.no_grad():
        kl_rand = F.kl_div(
            F.log_softmax(model(x_rand), 1), F.softmax(model(x), 1), reduction="batchmean"
        )
    assert kl > 2 * float(kl_rand)


def test_fgsm_rs_defaults_follow_wong_et_al():
    step = AdversarialStep("fgsm-rs", eps=0.1)
    assert step.alpha == pytest.approx(0.125)  # alpha = 1.25 * eps
    assert AdversarialStep("pgd", eps=0.1, steps=10).alpha == pytest.approx(0.025)


def test_random_starts_differ_per_batch_but_repeat_per_seed(digits_test):
    torch.manual_seed(0)
    model = digits_mlp()
    x, y = digits_test.x[:8], digits_test.y[:8]
    a = AdversarialStep("fgsm-rs", eps=0.1, seed=5)
    b = AdversarialStep("fgsm-rs", eps=0.1, seed=5)
    first_a, first_b = a.perturb(model, x, y), b.perturb(model, x, y)
    assert torch.equal(first_a, first_b)
    assert not torch.equal(a.perturb(model, x, y), first_a)


def test_guard_rolls_back_on_collapse():
    torch.manual_seed(0)
    train = load_digits("train").take(128)
    model = digits_mlp()
    curve = iter([0.5, 0.8, 0.3, 0.9])
    snapshots: list[dict[str, torch.Tensor]] = []

    def measure(m: nn.Module) -> float:
        snapshots.append({k: v.clone() for k, v in m.state_dict().items()})
        return next(curve)

    result = train_adversarial(
        model,
        train,
        AdversarialStep("fgsm-rs", 0.1),
        epochs=4,
        guard=OverfitGuard(eps=0.1),
        measure=measure,
    )
    assert result.stopped_early and result.restored_epoch == 2
    assert len(result.epochs) == 3 and "catastrophic overfitting" in result.reason
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshots[1][k])


@pytest.mark.slow
def test_fgsm_rs_on_digits_meets_clean_and_robust_targets(digits_test):
    """FGSM-RS at eps 0.1: >= 96% clean and >= 85% worst-case robust accuracy (FGSM, PGD-50
    with restarts, APGD-50); an undefended model of the same shape falls to ~0% at eps 0.3."""
    train = load_digits("train")
    torch.manual_seed(0)
    robust = digits_cnn()
    result = train_adversarial(
        robust, train, AdversarialStep("fgsm-rs", 0.1), epochs=30, batch_size=64, lr=2e-3
    )
    assert not result.stopped_early
    cfg = EvalConfig(eps=(0.1,), steps=50, restarts=2)
    report = evaluate_robustness(robust, digits_test.x, digits_test.y, cfg)
    assert report.clean_accuracy >= 0.96
    assert report.worst_case_at(0.1) >= 0.85, report.robust
    assert not report.suspicious, report.checks

    torch.manual_seed(0)
    plain = digits_cnn()
    train_adversarial(
        plain, train, AdversarialStep("standard", 0.0), epochs=10, batch_size=64, lr=2e-3
    )
    cfg = EvalConfig(eps=(0.3,), attacks=(AttackKind.PGD,), steps=20)
    weak = evaluate_robustness(plain, digits_test.x, digits_test.y, cfg)
    assert weak.clean_accuracy >= 0.96
    assert weak.worst_case_at(0.3) <= 0.02


def test_attack_model_crafts_while_model_trains(digits_test):
    torch.manual_seed(0)
    inner = digits_mlp()
    calls = {"outer": 0}

    class Wrapper(nn.Module):  # stands in for DistributedDataParallel
        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls["outer"] += 1
            return self.module(x)

    wrapped = Wrapper(inner)
    x, y = digits_test.x[:8], digits_test.y[:8]
    AdversarialStep("pgd", eps=0.1, steps=3).loss(wrapped, x, y, attack_model=wrapped.module)
    assert calls["outer"] == 1  # only the training forward went through the wrapper


def test_l2_pgd_training_perturbs_inside_the_l2_ball_and_linf_is_unchanged(digits_test):
    x, y = digits_test.x[:32], digits_test.y[:32]
    torch.manual_seed(0)
    model = digits_mlp()
    x_l2 = AdversarialStep("pgd", 1.0, norm="l2", steps=5).perturb(model, x, y)
    assert ((x_l2 - x).flatten(1).norm(dim=1) <= 1.0 + 1e-5).all()
    assert (x_l2 - x).abs().max() > 0.3  # an L2 step concentrates mass: not an Linf ball
    a = AdversarialStep("pgd", 0.1, steps=3, seed=2).perturb(model, x, y)
    b = AdversarialStep("pgd", 0.1, steps=3, seed=2, norm="linf").perturb(model, x, y)
    assert torch.equal(a, b)
    with pytest.raises(AdversarialError, match="linf only"):
        AdversarialStep("trades", 0.5, norm="l2")


def test_gaussian_step_adds_unclipped_noise_of_sigma():
    x = torch.full((512, 1, 8, 8), 0.5)
    step = AdversarialStep("gaussian", 0.0, sigma=0.3, seed=1)
    noisy = step.perturb(nn.Identity(), x, torch.zeros(512, dtype=torch.long))
    assert abs(float((noisy - x).std()) - 0.3) < 0.01
    assert noisy.min() < 0 and noisy.max() > 1  # Cohen et al. do not clip the noise
