"""Per-sample attack objectives on logits: cross-entropy, DLR and targeted DLR, the margin.

Every function returns one value per sample, larger is better for the attacker.

DLR, the difference of logits ratio (Croce & Hein, ICML 2020), divides the margin by the gap
between the largest and the third largest logit, so it does not change when the logits are
scaled or shifted. A model whose softmax saturates (very large logits) gives cross-entropy
gradients that are exactly zero in float32, and fools CE attacks into reporting robustness;
DLR sees through that.
"""

from __future__ import annotations

import enum

import torch
import torch.nn.functional as F
from torch import Tensor
from trainguard.adversarial.errors import AdversarialError

__all__ = ["Loss", "attack_loss", "dlr_loss", "dlr_targeted_loss", "margin"]

_TINY = 1e-12


class Loss(enum.StrEnum):
    CE = "ce"
    DLR = "dlr"


def _others_max(logits: Tensor, y: Tensor) -> Tensor:
    """The largest logit other than the one of class ``y``."""
    masked = logits.scatter(1, y.unsqueeze(1), -torch.inf)
    return masked.amax(dim=1)


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """z_y - max_{i != y} z_i: positive while ``y`` is predicted (the attacker lowers it)."""
    return logits.gather(1, y.unsqueeze(1)).squeeze(1) - _others_max(logits, y)


def dlr_loss(logits: Tensor, y: Tensor) -> Tensor:
    """-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3): the untargeted DLR loss (needs 3 classes)."""
    if logits.shape[1] < 3:
        raise AdversarialError("the DLR loss needs at least 3 classes", tip="use the CE loss")
    top = logits.topk(3, dim=1).values
    return -margin(logits, y) / (top[:, 0] - top[:, 2] + _TINY)


def dlr_targeted_loss(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2): the targeted DLR loss (needs 4 classes)."""
    if logits.shape[1] < 4:
        raise AdversarialError(
            "the targeted DLR loss needs at least 4 classes", tip="use the CE loss"
        )
    top = logits.topk(4, dim=1).values
    z_y = logits.gather(1, y.unsqueeze(1)).squeeze(1)
    z_t = logits.gather(1, target.unsqueeze(1)).squeeze(1)
    return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + _TINY)


def attack_loss(loss: Loss, logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """The objective an attack ascends: untargeted when ``target`` is None."""
    if loss is Loss.CE:
        if target is None:
            return F.cross_entropy(logits, y, reduction="none")
        return -F.cross_entropy(logits, target, reduction="none")
    if target is None:
        return dlr_loss(logits, y)
    return dlr_targeted_loss(logits, y, target)
