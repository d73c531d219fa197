"""Differential privacy for a federation: client-side fixed clipping, Gaussian noise on the
mean, and the privacy accounting (Rényi DP of the Gaussian mechanism).

The mechanism is Flower's "central DP with client-side fixed clipping"
(`DifferentialPrivacyClientSideFixedClipping` + `fixedclipping_mod`, McMahan et al. 2018): each
site clips its update (new weights - global weights) to L2 norm `clip_norm` with Flower's own
`clip_inputs_inplace`; the server clips every row again (a site that skips clipping cannot
break the bound), averages the n rows and adds N(0, sigma^2) per coordinate with
sigma = noise_multiplier * clip_norm / n (Flower's `compute_stdv`). One site's data changes the
mean by at most clip_norm / n, so each round is a Gaussian mechanism of noise multiplier z.

Accounting (Mironov 2017; the conversion of Balle et al. 2020 that Opacus' RDPAccountant uses):
with every site in every round there is no subsampling, so one round has RDP
alpha / (2 z^2) at order alpha, T rounds compose to T alpha / (2 z^2), and

    epsilon(delta) = min over alpha of  rdp(alpha) + log((alpha - 1) / alpha)
                                        - (log(delta) + log(alpha)) / (alpha - 1)

over Opacus' default orders. The guarantee is site-level (one site's whole shard) and holds
for the released global models only if the server is the honest party adding the noise.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import numpy as np
from flwr.supercore.differential_privacy import clip_inputs_inplace, compute_stdv

__all__ = ["ORDERS", "PrivacyAccountant", "add_noise", "clip_update", "epsilon"]

# Opacus' RDPAccountant.DEFAULT_ALPHAS
ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))


def epsilon(noise_multiplier: float, rounds: int, delta: float,
            orders: tuple[float, ...] = ORDERS) -> float:
    """The (epsilon, delta)-DP epsilon after `rounds` full-participation Gaussian rounds."""
    if noise_multiplier <= 0 or not 0 < delta < 1:
        raise ValueError("noise_multiplier must be positive and delta in (0, 1)")
    if rounds <= 0:
        return 0.0
    best = math.inf
    for a in orders:
        rdp = rounds * a / (2.0 * noise_multiplier**2)
        eps = rdp + math.log1p(-1.0 / a) - (math.log(delta) + math.log(a)) / (a - 1.0)
        best = min(best, eps)
    return max(best, 0.0)


@dataclass
class PrivacyAccountant:
    """Epsilon after each round of one federation."""

    noise_multiplier: float
    clip_norm: float
    delta: float
    rounds: int = 0

    def step(self) -> dict[str, float]:
        """Account one more round; returns the privacy record for this round."""
        self.rounds += 1
        return self.report()

    def report(self) -> dict[str, float]:
        return {"epsilon": epsilon(self.noise_multiplier, self.rounds, self.delta),
                "delta": self.delta, "noise_multiplier": self.noise_multiplier,
                "clip_norm": self.clip_norm, "rounds": self.rounds}


def clip_update(update: list[np.ndarray], clip_norm: float) -> list[np.ndarray]:
    """A copy of `update` scaled to L2 norm <= clip_norm over all arrays together."""
    out = [np.array(a, dtype=np.float32, copy=True) for a in update]
    if any(a.size for a in out):
        clip_inputs_inplace(out, clip_norm)
    return out


def add_noise(mean: np.ndarray, noise_multiplier: float, clip_norm: float, n: int,
              rng: np.random.Generator | None = None) -> np.ndarray:
    """`mean` of n clipped rows plus Gaussian noise of std z * C / n (fresh OS entropy by
    default; pass `rng` only in tests)."""
    gen = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
    std = compute_stdv(noise_multiplier, clip_norm, n)
    return (mean + gen.normal(0.0, std, size=mean.shape)).astype(np.float32)
