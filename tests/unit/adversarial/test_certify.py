"""Randomized smoothing: the bound, the radius on a model whose answer is known in closed
form, abstention, and Gaussian training making a model certifiable."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from trainguard.adversarial import (
    AdversarialError,
    AdversarialStep,
    CertifyConfig,
    certify,
    certify_robustness,
    load_digits,
    train_adversarial,
)
from trainguard.adversarial.certify import ABSTAIN, clopper_pearson_lower
from trainguard.adversarial.models import digits_mlp


def test_clopper_pearson_lower_bound_known_values():
    n, alpha = 1000, 0.001
    lower = clopper_pearson_lower(torch.tensor([0, n, 500]), n, alpha)
    assert lower[0] == 0.0
    assert abs(float(lower[1]) - alpha ** (1 / n)) < 1e-9  # all successes: alpha^(1/n)
    assert 0.44 < float(lower[2]) < 0.5  # below the point estimate 0.5, not far


class Linear2(nn.Module):
    """Two classes split by the hyperplane w . x = b: the smoothed classifier is known exactly,
    its radius at x is the L2 distance |w . x - b| / ||w|| (Cohen et al. 2019, section 3)."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w, self.b = w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1) @ self.w - self.b
        return torch.stack([s, -s], dim=1)


def test_radius_of_a_linear_classifier_is_close_to_and_below_the_true_distance():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, generator=g)
    model = Linear2(w, 0.0)
    x = torch.rand(40, 1, 4, 4, generator=g) - 0.5
    dist = (x.flatten(1) @ w).abs() / w.norm()
    sigma = 0.5
    cert = certify(model, x, CertifyConfig(sigma=sigma, n0=64, n=4000, alpha=0.001))
    truth = (x.flatten(1) @ w < 0).long()  # class 1 where s < 0
    certified = cert.prediction != ABSTAIN
    assert (cert.prediction[certified] == truth[certified]).all()
    assert (cert.radius <= dist + 1e-4).all(), "a certificate beyond the true distance is unsound"
    near = certified & (dist < 2 * sigma) & (dist > 0.1)
    assert near.sum() > 10
    assert (cert.radius[near] > dist[near] - 0.1).all()  # the confidence bound costs little


def test_coin_flip_model_abstains_and_bad_settings_are_refused():
    model = Linear2(torch.ones(16), 0.0)
    cert = certify(model, torch.zeros(8, 1, 4, 4), CertifyConfig(sigma=0.5, n0=32, n=400))
    assert (cert.prediction == ABSTAIN).all() and (cert.radius == 0).all()
    with pytest.raises(AdversarialError, match="alpha"):
        certify(model, torch.zeros(1, 1, 4, 4), CertifyConfig(alpha=1.5))


def test_same_seed_same_certificates():
    model = Linear2(torch.linspace(-1, 1, 16), 0.1)
    x = torch.rand(6, 1, 4, 4)
    cfg = CertifyConfig(sigma=0.3, n0=16, n=200, seed=5)
    a, b = certify(model, x, cfg), certify(model, x, cfg)
    assert torch.equal(a.prediction, b.prediction) and torch.equal(a.radius, b.radius)


def test_gaussian_training_makes_a_model_certifiable(digits_test):
    data = digits_test.take(120)
    cfg = CertifyConfig(sigma=0.5, n0=32, n=400, radii=(0.0, 0.5, 1.0))
    reports = {}
    for method in ("standard", "gaussian"):
        torch.manual_seed(0)
        model = digits_mlp()
        step = AdversarialStep(method, 0.0, sigma=0.5)
        train_adversarial(model, load_digits("train"), step, epochs=8, batch_size=64)
        reports[method] = certify_robustness(model, data.x, data.y, cfg)
    plain, noisy = reports["standard"], reports["gaussian"]
    assert noisy.accuracy_at(0.5) > plain.accuracy_at(0.5) + 0.05, (noisy, plain)
    accs = [p.accuracy for p in noisy.per_radius]
    assert accs == sorted(accs, reverse=True) and accs[0] == noisy.smoothed_accuracy
