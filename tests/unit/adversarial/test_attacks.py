"""Attacks: threat-model constraints, determinism, mode restoration, worst case over restarts."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from trainguard.adversarial import APGD, FGSM, PGD, AdversarialError, Norm


def _tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3)).eval()


def _batch(seed: int, n: int = 6, low: float = 0.0, high: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    x = low + (high - low) * torch.rand((n, 1, 4, 4), generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


ATTACKS = {
    "fgsm": lambda m, eps, norm, clip: FGSM(m, eps, norm=norm, clip=clip),
    "pgd": lambda m, eps, norm, clip: PGD(m, eps, steps=5, restarts=2, norm=norm, clip=clip),
    "apgd": lambda m, eps, norm, clip: APGD(m, eps, steps=6, norm=norm, clip=clip),
}


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    eps=st.floats(0.001, 3.0),
    norm=st.sampled_from(list(Norm)),
    attack=st.sampled_from(sorted(ATTACKS)),
    clip=st.sampled_from([(0.0, 1.0), (-1.0, 1.0), (0.2, 0.4)]),
)
def test_outputs_stay_in_eps_ball_and_range(seed, eps, norm, attack, clip):
    model = _tiny_model(seed % 7)
    x, y = _batch(seed, low=clip[0], high=clip[1])
    x_adv = ATTACKS[attack](model, eps, norm, clip)(x, y)
    assert x_adv.shape == x.shape
    assert x_adv.min() >= clip[0] and x_adv.max() <= clip[1]
    delta = (x_adv - x).flatten(1)
    if norm is Norm.LINF:
        assert delta.abs().max() <= eps + 1e-6
    else:
        assert (delta.norm(dim=1) <= eps * (1 + 1e-5) + 1e-6).all()


@pytest.mark.parametrize("cls", [PGD, APGD])
def test_same_seed_same_result_other_seed_differs(cls, digits_test, trained_mlp):
    x, y = digits_test.x[:32], digits_test.y[:32]
    a = cls(trained_mlp, eps=0.1, steps=5, seed=3)(x, y)
    b = cls(trained_mlp, eps=0.1, steps=5, seed=3)(x, y)
    c = cls(trained_mlp, eps=0.1, steps=5, seed=4)(x, y)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_global_rng_is_not_used_or_disturbed(digits_test, trained_mlp):
    x, y = digits_test.x[:16], digits_test.y[:16]
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    PGD(trained_mlp, eps=0.1, steps=3, restarts=2)(x, y)
    assert torch.equal(torch.rand(3), expected_next)


def test_model_modes_restored_and_parameter_grads_untouched():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    model.train()
    model[2].eval()  # a mixed-mode model: each submodule must get its own mode back
    x, y = _batch(1)
    for attack in (FGSM(model, 0.1), PGD(model, 0.1, steps=3), APGD(model, 0.1, steps=3)):
        attack(x, y)
        assert model.training and model[1].training and not model[2].training
        assert all(p.grad is None for p in model.parameters())


def test_attacks_run_in_eval_mode():
    seen = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(16, 3)

        def forward(self, x):
            seen.append(self.training)
            return self.lin(x.flatten(1))

    model = Spy().train()
    PGD(model, 0.1, steps=2)(*_batch(2))
    assert seen and not any(seen)
    assert model.training


@pytest.mark.parametrize("cls", [PGD, APGD])
def test_more_restarts_never_weaker_per_sample(cls, digits_test, trained_mlp):
    x, y = digits_test.x[:128], digits_test.y[:128]

    def fooled(restarts):
        x_adv = cls(trained_mlp, eps=0.06, steps=5, restarts=restarts, seed=0)(x, y)
        with torch.no_grad():
            return trained_mlp(x_adv).argmax(1) != y

    one, many = fooled(1), fooled(4)
    assert (many | ~one).all(), "a sample fooled by one restart survived four"
    assert many.sum() >= one.sum()


def test_iterative_attacks_beat_fgsm_on_a_trained_model(digits_test, trained_mlp):
    x, y = digits_test.x, digits_test.y

    def acc(attack):
        with torch.no_grad():
            return (trained_mlp(attack(x, y)).argmax(1) == y).float().mean().item()

    clean = (trained_mlp(x).argmax(1) == y).float().mean().item()
    fgsm = acc(FGSM(trained_mlp, 0.1))
    pgd = acc(PGD(trained_mlp, 0.1, steps=20))
    apgd = acc(APGD(trained_mlp, 0.1, steps=20))
    assert clean > 0.9
    assert pgd <= fgsm and apgd <= fgsm
    assert acc(PGD(trained_mlp, 0.3, steps=20)) < 0.02


def test_l2_pgd_reduces_accuracy(digits_test, trained_mlp):
    x, y = digits_test.x[:128], digits_test.y[:128]
    x_adv = PGD(trained_mlp, eps=1.5, steps=20, norm="l2")(x, y)
    with torch.no_grad():
        assert (trained_mlp(x_adv).argmax(1) == y).float().mean() < 0.5


def test_apgd_checkpoints_follow_croce_hein_schedule():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)
    assert APGD.checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_inputs_outside_declared_range_are_refused():
    model = _tiny_model()
    x, y = _batch(0)
    with pytest.raises(AdversarialError, match="outside the declared range"):
        PGD(model, 0.1, steps=2)(x * 255, y)
    with pytest.raises(AdversarialError):
        PGD(model, eps=-0.1)
    with pytest.raises(AdversarialError):
        PGD(model, eps=0.1, restarts=0)


def test_eps_zero_returns_inputs():
    model = _tiny_model()
    x, y = _batch(0)
    assert torch.equal(PGD(model, eps=0.0)(x, y), x)


@pytest.mark.gpu
def test_cuda_device_follows_inputs():
    model = _tiny_model().cuda()
    x, y = _batch(0)
    a = PGD(model, 0.1, steps=3, seed=1)(x.cuda(), y.cuda())
    b = PGD(model, 0.1, steps=3, seed=1)(x.cuda(), y.cuda())
    assert a.is_cuda and torch.equal(a, b)
    assert (a.cpu() - x).abs().max() <= 0.1 + 1e-6


def test_early_stop_changes_work_not_robust_accuracy(digits_test, trained_mlp):
    x, y = digits_test.x[:128], digits_test.y[:128]

    def correct(early_stop):
        x_adv = PGD(trained_mlp, 0.08, steps=10, restarts=2, early_stop=early_stop)(x, y)
        assert (x_adv - x).abs().max() <= 0.08 + 1e-6
        with torch.no_grad():
            return trained_mlp(x_adv).argmax(1) == y

    assert torch.equal(correct(True), correct(False))
