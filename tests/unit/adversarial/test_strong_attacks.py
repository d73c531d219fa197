"""APGD-DLR, APGD-T, FAB-T, Square and targeted attacks: each on a model where its known
behaviour shows (scale invariance, reaching the target, exact boundary distance on a linear
model, breaking a gradient-masked model)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from trainguard.adversarial import APGD, APGDT, FAB, FABT, PGD, AdversarialError, Norm, Square
from trainguard.adversarial.fab import project_onto_hyperplane


def _tiny_model(seed: int = 0, classes: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, classes)).eval()


def _batch(seed: int, n: int = 6, low: float = 0.0, high: float = 1.0, classes: int = 5):
    g = torch.Generator().manual_seed(seed)
    x = low + (high - low) * torch.rand((n, 1, 4, 4), generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


ATTACKS = {
    "apgd-dlr": lambda m, eps, norm, clip: APGD(m, eps, 6, norm=norm, clip=clip, loss="dlr"),
    "apgd-t": lambda m, eps, norm, clip: APGDT(m, eps, 4, norm=norm, clip=clip, target_classes=2),
    "fab": lambda m, eps, norm, clip: FAB(m, eps, 4, 2, norm=norm, clip=clip),
    "fab-t": lambda m, eps, norm, clip: FABT(m, eps, 4, 2, norm=norm, clip=clip, target_classes=2),
    "square": lambda m, eps, norm, clip: Square(m, eps, 20, norm=norm, clip=clip),
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
    assert x_adv.shape == x.shape and torch.isfinite(x_adv).all()
    assert x_adv.min() >= clip[0] and x_adv.max() <= clip[1]
    delta = (x_adv - x).flatten(1)
    if norm is Norm.LINF:
        assert delta.abs().max() <= eps + 1e-6
    else:
        assert (delta.norm(dim=1) <= eps * (1 + 1e-5) + 1e-6).all()


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_same_seed_same_result_and_modes_restored(name):
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Dropout(0.5), nn.Linear(8, 5))
    model.train()
    x, y = _batch(3, n=16)
    a = ATTACKS[name](model, 0.2, "linf", (0.0, 1.0))(x, y)
    b = ATTACKS[name](model, 0.2, "linf", (0.0, 1.0))(x, y)
    assert torch.equal(a, b)
    assert model.training and all(p.grad is None for p in model.parameters())


class Scaled(nn.Module):
    """Logits times 2**12: the softmax saturates, so cross-entropy gradients vanish in float32."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * 4096.0


def _acc(model, x_adv, y):
    with torch.no_grad():
        return (model(x_adv).argmax(1) == y).float().mean().item()


def test_apgd_dlr_is_invariant_to_logit_scaling_and_ce_is_not(digits_test, trained_mlp):
    x, y = digits_test.x[:96], digits_test.y[:96]
    scaled = Scaled(trained_mlp).eval()
    dlr = APGD(trained_mlp, 0.1, 15, loss="dlr")(x, y)
    dlr_scaled = APGD(scaled, 0.1, 15, loss="dlr")(x, y)
    # a power-of-two scale is exact in floating point: the same attack path, bit for bit
    assert torch.equal(dlr, dlr_scaled)
    ce = _acc(trained_mlp, APGD(trained_mlp, 0.1, 15)(x, y), y)
    ce_scaled = _acc(scaled, APGD(scaled, 0.1, 15)(x, y), y)
    assert ce_scaled > ce + 0.15, "CE on saturated logits should look (falsely) robust"
    assert _acc(scaled, dlr_scaled, y) <= ce + 0.05


@pytest.mark.parametrize("norm,eps", [("linf", 0.3), ("l2", 4.0)])
def test_targeted_pgd_and_apgd_reach_the_target(digits_test, trained_mlp, norm, eps):
    x, y = digits_test.x[:64], digits_test.y[:64]
    target = (y + 3) % 10
    for attack in (
        PGD(trained_mlp, eps, steps=30, norm=norm),
        APGD(trained_mlp, eps, 30, norm=norm),
        APGD(trained_mlp, eps, 30, norm=norm, loss="dlr"),
    ):
        x_adv = attack(x, y, target=target)
        with torch.no_grad():
            reached = (trained_mlp(x_adv).argmax(1) == target).float().mean().item()
        assert reached > 0.9, (type(attack).__name__, reached)


def test_targeted_flag_aims_at_the_runner_up_and_targets_are_checked(digits_test, trained_mlp):
    x, y = digits_test.x[:32], digits_test.y[:32]
    with torch.no_grad():
        runner_up = trained_mlp(x).scatter(1, y[:, None], -torch.inf).argmax(1)
    x_adv = PGD(trained_mlp, 0.3, steps=20, targeted=True)(x, y)
    with torch.no_grad():
        assert (trained_mlp(x_adv).argmax(1) == runner_up).float().mean() > 0.9
    with pytest.raises(AdversarialError, match="equals the true label"):
        PGD(trained_mlp, 0.1, steps=2)(x, y, target=y)


def test_apgd_t_is_at_least_as_strong_as_apgd_ce(digits_test, trained_mlp):
    x, y = digits_test.x[:128], digits_test.y[:128]
    ce = _acc(trained_mlp, APGD(trained_mlp, 0.07, 20)(x, y), y)
    t = _acc(trained_mlp, APGDT(trained_mlp, 0.07, 20, target_classes=3)(x, y), y)
    assert t <= ce + 0.02


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_fab_t_finds_the_exact_boundary_of_a_linear_model(norm):
    """For an affine classifier the closest point of class t is known in closed form; FAB-T
    reaches it within 2% and no attack can go below it."""
    torch.manual_seed(0)
    lin = nn.Linear(16, 5)
    model = nn.Sequential(nn.Flatten(), lin).eval()
    x = torch.rand(40, 1, 4, 4) * 0.2 + 0.4
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    w = lin.weight.detach()
    dual = 1 if norm == "linf" else 2  # distance to a hyperplane: |g| / ||w||_dual
    dists = []
    for t in range(5):
        g = z[:, t] - z[:, y.tolist()].diagonal()
        wd = w[t] - w[y]
        dists.append(torch.where(t == y, torch.inf, -g / wd.norm(p=dual, dim=1)))
    d_min = torch.stack(dists, 1).min(1).values
    eps = float(d_min.median())
    # the box never binds, so the closed form holds
    x_adv = FABT(model, eps, 30, norm=norm, clip=(-10.0, 10.0), target_classes=4)(x, y)
    with torch.no_grad():
        fooled = model(x_adv).argmax(1) != y
    assert fooled[d_min < eps / 1.02].all(), "FAB-T reaches the boundary within 2%"
    assert not fooled[d_min > eps].any(), "no attack goes below the true distance"


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_untargeted_fab_finds_the_closest_boundary_of_a_linear_model(norm):
    """Untargeted FAB picks, per step, the class whose boundary is closest: on an affine
    classifier it reaches min over classes of the exact distance within 2%, with no target
    list, in as few as 10 steps; no attack can go below the true distance."""
    torch.manual_seed(1)
    lin = nn.Linear(16, 6)
    with torch.no_grad():  # unequal weight norms: the runner-up logit is not always closest
        lin.weight.mul_(torch.tensor([1.0, 4.0, 0.5, 1.0, 4.0, 0.5]).unsqueeze(1))
    model = nn.Sequential(nn.Flatten(), lin).eval()
    x = torch.rand(60, 1, 4, 4) * 0.2 + 0.4
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    w = lin.weight.detach()
    dual = 1 if norm == "linf" else 2
    margins = z.gather(1, y.unsqueeze(1)) - z  # (B, K), >= 0
    gaps = (w[y].unsqueeze(1) - w.unsqueeze(0)).norm(p=dual, dim=2)  # (B, K)
    d_all = torch.where(margins > 0, margins / gaps, torch.inf)
    d_min = d_all.min(1).values
    eps = float(d_min.median())
    x_adv = FAB(model, eps, 10, norm=norm, clip=(-10.0, 10.0))(x, y)
    with torch.no_grad():
        fooled = model(x_adv).argmax(1) != y
    assert fooled[d_min < eps / 1.02].all(), "FAB reaches the closest boundary within 2%"
    assert not fooled[d_min > eps].any(), "no attack goes below the true distance"
    # among the points it reaches are some whose closest class is not the runner-up logit
    runner_up = z.scatter(1, y.unsqueeze(1), -torch.inf).argmax(1)
    assert (d_all.argmin(1) != runner_up)[d_min < eps / 1.02].any()


def test_untargeted_fab_refuses_targets_and_skips_misclassified_points():
    model = _tiny_model(3)
    x, y = _batch(5, n=20)
    with pytest.raises(AdversarialError):
        FAB(model, 0.3, 3)(x, y, target=(y + 1) % 5)
    with torch.no_grad():
        wrong = model(x).argmax(1) != y
    x_adv = FAB(model, 0.3, 3)(x, y)
    assert torch.equal(x_adv[wrong], x[wrong]), "points already misclassified are left as they are"


def test_hyperplane_projection_hits_the_plane_with_least_norm_in_the_box():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 10, generator=g)
    w = torch.randn(64, 10, generator=g)
    c = torch.randn(64, generator=g) * 0.3
    for norm in Norm:
        d = project_onto_hyperplane(x, w, c, norm, (0.0, 1.0))
        assert ((x + d) >= -1e-6).all() and ((x + d) <= 1 + 1e-6).all()
        reachable = (w.abs() * torch.where(w * c[:, None] > 0, 1 - x, x)).sum(1) >= c.abs()
        assert torch.allclose((w * d).sum(1)[reachable], c[reachable], atol=1e-4)
    # without a binding box: c w / ||w||_2^2 for L2, c sign(w) / ||w||_1 for Linf
    w1, c1, box = torch.tensor([[1.0, 2.0, -2.0]]), torch.tensor([1.5]), (-9.0, 9.0)
    d2 = project_onto_hyperplane(torch.zeros(1, 3), w1, c1, Norm.L2, box)
    dinf = project_onto_hyperplane(torch.zeros(1, 3), w1, c1, Norm.LINF, box)
    assert torch.allclose(d2, 1.5 * w1 / 9)
    assert torch.allclose(dinf, torch.tensor([[0.3, 0.3, -0.3]]))


def test_square_breaks_a_gradient_masked_model_that_pgd_cannot(digits_test, masked_model):
    x, y = digits_test.x[:100], digits_test.y[:100]
    clean = _acc(masked_model, x, y)
    pgd = _acc(masked_model, PGD(masked_model, 0.2, steps=20)(x, y), y)
    square = _acc(masked_model, Square(masked_model, 0.2, 300)(x, y), y)
    assert pgd > clean - 0.05, "masking hides the examples from the gradient attack"
    assert square < 0.2, "the score-based attack does not need gradients"


def test_square_l2_breaks_an_undefended_model_and_refuses_flat_inputs(digits_test, trained_mlp):
    x, y = digits_test.x[:64], digits_test.y[:64]
    assert _acc(trained_mlp, Square(trained_mlp, 2.0, 300, norm="l2")(x, y), y) < 0.5
    with pytest.raises(AdversarialError, match=r"\(N, C, H, W\)"):
        Square(trained_mlp, 0.1, 5)(x.flatten(1), y)
