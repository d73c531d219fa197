"""Certified L2 robustness by randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019).

The smoothed classifier g(x) = argmax_c P(f(x + N(0, sigma^2 I)) = c) is provably constant
within the L2 radius sigma * Phi^-1(p_A) of x, where p_A is the probability of its top class.
CERTIFY estimates that with two independent Monte Carlo samples:

1. selection: ``n0`` noisy copies; the most frequent class is the guess c_A;
2. estimation: ``n`` fresh noisy copies; n_A = how often f says c_A; p_A_lower is the
   one-sided Clopper-Pearson lower confidence bound on p_A at level 1 - ``alpha``;
3. if p_A_lower > 1/2 the prediction c_A is certified at radius sigma * Phi^-1(p_A_lower),
   otherwise the classifier abstains (counted as wrong at every radius).

With probability at least 1 - alpha over the sampling, each certificate is correct. The
certified accuracy at radius r is the share of samples predicted correctly with a radius of
at least r. A certificate is a statement about the smoothed classifier, not the base model:
train the base model with Gaussian noise of the same sigma (`robust train --method gaussian`)
or the smoothed classifier abstains on most inputs. Noise is added without clipping to the
input range, as in the paper. All sampling runs in ``torch.inference_mode``, batched over
images and noise draws, on the inputs' device, from a seeded ``torch.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from trainguard.adversarial.attacks import eval_mode
from trainguard.adversarial.errors import AdversarialError

__all__ = [
    "ABSTAIN",
    "CertifiedPoint",
    "CertifyConfig",
    "CertifyReport",
    "Certificates",
    "certify",
    "certify_robustness",
    "clopper_pearson_lower",
]

ABSTAIN = -1
DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)


@dataclass(frozen=True)
class CertifyConfig:
    """Smoothing noise ``sigma``, sample counts ``n0`` (selection) and ``n`` (estimation),
    failure probability ``alpha``; ``batch`` caps the noisy copies per forward pass."""

    sigma: float = 0.25
    n0: int = 100
    n: int = 10_000
    alpha: float = 0.001
    batch: int = 4096
    seed: int = 0
    radii: tuple[float, ...] = DEFAULT_RADII

    def validate(self) -> list[str]:
        errors = []
        if not self.sigma > 0 or not math.isfinite(self.sigma):
            errors.append("sigma must be > 0")
        if self.n0 < 1 or self.n < 1:
            errors.append("n0 and n must be >= 1")
        if not 0 < self.alpha < 1:
            errors.append("alpha must lie in (0, 1)")
        if self.batch < 1:
            errors.append("batch must be >= 1")
        if not self.radii or any(r < 0 for r in self.radii):
            errors.append("radii must be >= 0")
        return errors


def clopper_pearson_lower(successes: Tensor, trials: int, alpha: float) -> Tensor:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion."""
    # scipy ships with scikit-learn (a dependency); imported here, as importing
    # trainguard.adversarial (the trainer does) should not pay for scipy.stats
    from scipy.stats import beta as beta_dist

    k = successes.detach().cpu().double().numpy()
    lower = beta_dist.ppf(alpha, k, trials - k + 1)
    out = torch.as_tensor(lower, dtype=torch.float64).nan_to_num(0.0)  # k = 0 gives nan
    return out.to(successes.device)


def _counts(
    model: nn.Module, x: Tensor, num: int, sigma: float, batch: int, gen: torch.Generator
) -> Tensor:
    """(B, classes) counts of the base model's predictions on ``num`` noisy copies of each x."""
    b = x.shape[0]
    per_image = max(1, batch // max(b, 1))
    counts: Tensor | None = None
    done = 0
    while done < num:
        m = min(per_image, num - done)
        rep = x.repeat_interleave(m, dim=0)
        noise = torch.randn(rep.shape, generator=gen, device=x.device, dtype=x.dtype)
        logits = model(rep + sigma * noise)
        pred = logits.argmax(1).view(b, m)
        if counts is None:
            counts = torch.zeros((b, logits.shape[1]), dtype=torch.long, device=x.device)
        counts.scatter_add_(1, pred, torch.ones_like(pred))
        done += m
    assert counts is not None
    return counts


@dataclass(frozen=True)
class Certificates:
    """Per sample: the certified class (ABSTAIN = -1), its L2 radius (0 when abstaining)
    and the lower confidence bound p_A_lower."""

    prediction: Tensor
    radius: Tensor
    p_lower: Tensor


def certify(model: nn.Module, x: Tensor, cfg: CertifyConfig) -> Certificates:
    """CERTIFY (Cohen et al. 2019, Algorithm 1) for every sample of ``x``."""
    if errors := cfg.validate():
        raise AdversarialError("bad certification settings: " + "; ".join(errors))
    gen = torch.Generator(device=x.device)
    gen.manual_seed(cfg.seed)
    with eval_mode(model), torch.inference_mode():
        guess = _counts(model, x, cfg.n0, cfg.sigma, cfg.batch, gen).argmax(1)
        counts = _counts(model, x, cfg.n, cfg.sigma, cfg.batch, gen)
        n_a = counts.gather(1, guess.unsqueeze(1)).squeeze(1)
    p_lower = clopper_pearson_lower(n_a, cfg.n, cfg.alpha).to(x.device)
    certified = p_lower > 0.5
    normal = torch.distributions.Normal(0.0, 1.0)
    radius = cfg.sigma * normal.icdf(p_lower.clamp(0.5, 1 - 1e-12).float())
    return Certificates(
        prediction=torch.where(certified, guess, torch.full_like(guess, ABSTAIN)),
        radius=torch.where(certified, radius, torch.zeros_like(radius)),
        p_lower=p_lower.float(),
    )


@dataclass(frozen=True)
class CertifiedPoint:
    radius: float
    accuracy: float


@dataclass(frozen=True)
class CertifyReport:
    """Certified accuracy of the smoothed classifier at each radius (fractions)."""

    samples: int
    sigma: float
    n0: int
    n: int
    alpha: float
    clean_accuracy: float  # the base model on clean inputs
    smoothed_accuracy: float  # certified prediction correct, any radius (= radius 0)
    abstain_rate: float
    mean_certified_radius: float  # over correctly certified samples
    per_radius: list[CertifiedPoint]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def accuracy_at(self, radius: float) -> float:
        for p in self.per_radius:
            if abs(p.radius - radius) < 1e-12:
                return p.accuracy
        raise KeyError(radius)


def certified_accuracy(
    cert: Certificates, y: Tensor, radii: Sequence[float]
) -> list[CertifiedPoint]:
    """The share of samples certified correct with radius >= r, for each r."""
    ok = cert.prediction == y
    return [
        CertifiedPoint(float(r), round(float((ok & (cert.radius >= r)).float().mean()), 6))
        for r in radii
    ]


def certify_robustness(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    cfg: CertifyConfig | None = None,
    *,
    batch_images: int = 64,
    progress: Callable[[str], None] | None = None,
) -> CertifyReport:
    """Certify every sample of (x, y) and summarise per radius."""
    cfg = cfg or CertifyConfig()
    if errors := cfg.validate():
        raise AdversarialError("bad certification settings: " + "; ".join(errors))
    if x.shape[0] == 0:
        raise AdversarialError("no samples to certify")
    parts = []
    for start in range(0, x.shape[0], batch_images):
        sub = CertifyConfig(**{**asdict(cfg), "seed": cfg.seed + start})
        parts.append(certify(model, x[start : start + batch_images], sub))
        if progress:
            done = min(start + batch_images, x.shape[0])
            progress(f"certified {done}/{x.shape[0]} samples (sigma {cfg.sigma:g}, n {cfg.n})")
    cert = Certificates(
        torch.cat([p.prediction for p in parts]),
        torch.cat([p.radius for p in parts]),
        torch.cat([p.p_lower for p in parts]),
    )
    with eval_mode(model), torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    ok = cert.prediction == y
    radii = sorted(set(cfg.radii) | {0.0})
    return CertifyReport(
        samples=x.shape[0],
        sigma=cfg.sigma,
        n0=cfg.n0,
        n=cfg.n,
        alpha=cfg.alpha,
        clean_accuracy=round(clean, 6),
        smoothed_accuracy=round(float(ok.float().mean()), 6),
        abstain_rate=round(float((cert.prediction == ABSTAIN).float().mean()), 6),
        mean_certified_radius=round(float(cert.radius[ok].mean()) if ok.any() else 0.0, 6),
        per_radius=certified_accuracy(cert, y, radii),
        settings={"seed": cfg.seed, "batch": cfg.batch, "norm": "l2"},
    )
