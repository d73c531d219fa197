"""White-box evasion attacks: FGSM, PGD (Linf / L2, random start, restarts) and APGD-CE.

Every attack is a callable object in the style users know from torchattacks:
``PGD(model, eps=0.3, alpha=0.01, steps=50, restarts=10)(x, y) -> x_adv``. Common behaviour:

* the model is switched to eval mode for the attack and every submodule's mode is restored;
* inputs must lie in the declared range ``clip`` (default [0, 1]) and outputs are clamped to it
  and to the eps-ball around the input;
* randomness comes from a ``torch.Generator`` seeded from ``seed`` on each call (on the inputs'
  device), never from the global RNG, so the same call gives the same result;
* iterative attacks keep, per sample, the worst case seen over all iterates and restarts:
  a misclassifying point beats any correctly classified one, then the higher loss wins.
  Restarts after the first only run on samples that are still classified correctly.
"""

from __future__ import annotations

import contextlib
import enum
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from trainguard.adversarial.errors import AdversarialError

__all__ = ["APGD", "FGSM", "PGD", "Attack", "Norm", "eval_mode"]

Clip = tuple[float, float]


class Norm(enum.StrEnum):
    LINF = "linf"
    L2 = "l2"


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode; restore each one's own mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.train(training)


def _per_sample_norm(t: Tensor) -> Tensor:
    """L2 norm of each sample, shaped to broadcast against ``t``."""
    flat: Tensor = t.flatten(1).norm(p=2, dim=1)
    return flat.view(-1, *([1] * (t.dim() - 1)))


def project(delta: Tensor, norm: Norm, eps: float | Tensor) -> Tensor:
    """Project perturbations onto the eps-ball of ``norm``."""
    if norm is Norm.LINF:
        if isinstance(eps, Tensor):
            return torch.maximum(torch.minimum(delta, eps), -eps)
        return delta.clamp(-eps, eps)
    n = _per_sample_norm(delta)
    factor = torch.clamp(eps / (n + 1e-12), max=1.0)
    return delta * factor


def ascent_direction(grad: Tensor, norm: Norm) -> Tensor:
    """The steepest-ascent direction of unit size in ``norm`` (sign for Linf)."""
    if norm is Norm.LINF:
        return grad.sign()
    return grad / (_per_sample_norm(grad) + 1e-12)


def random_start(x: Tensor, norm: Norm, eps: float, gen: torch.Generator) -> Tensor:
    """A uniformly random perturbation inside the eps-ball (Linf) or on a random radius (L2)."""
    if norm is Norm.LINF:
        u = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        return (2 * u - 1) * eps
    d = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    r = torch.rand((x.shape[0],), generator=gen, device=x.device, dtype=x.dtype)
    r = r.view(-1, *([1] * (x.dim() - 1)))
    return d / (_per_sample_norm(d) + 1e-12) * r * eps


def loss_and_grad(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Logits, per-sample cross-entropy and its gradient with respect to ``x``.

    Only the input gradient is computed; parameter ``.grad`` fields are left untouched.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        loss = F.cross_entropy(logits, y, reduction="none")
        (grad,) = torch.autograd.grad(loss.sum(), x)
    return logits.detach(), loss.detach(), grad.detach()


class _Best:
    """Per-sample worst case: fooled beats not fooled, then the higher loss wins."""

    def __init__(self, x: Tensor) -> None:
        self.x = x.detach().clone()
        self.loss = torch.full((x.shape[0],), -math.inf, device=x.device, dtype=x.dtype)
        self.fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

    def update(self, x: Tensor, logits: Tensor, loss: Tensor, y: Tensor, idx: Tensor) -> None:
        fooled = logits.argmax(dim=1) != y
        old_fooled, old_loss = self.fooled[idx], self.loss[idx]
        better = (fooled & ~old_fooled) | ((fooled == old_fooled) & (loss > old_loss))
        sel = idx[better]
        self.x[sel] = x.detach()[better]
        self.loss[sel] = loss[better]
        self.fooled[sel] = fooled[better]


class Attack:
    """Base class: validation, eval-mode switching, generator seeding and restarts."""

    def __init__(
        self,
        model: nn.Module,
        *,
        eps: float,
        norm: Norm | str = Norm.LINF,
        clip: Clip = (0.0, 1.0),
        seed: int = 0,
        restarts: int = 1,
    ) -> None:
        self.model = model
        self.norm = Norm(norm)
        self.eps = float(eps)
        self.clip = (float(clip[0]), float(clip[1]))
        self.seed = int(seed)
        self.restarts = int(restarts)
        if self.eps < 0 or not math.isfinite(self.eps):
            raise AdversarialError(f"eps must be a finite number >= 0, got {eps}")
        if not self.clip[0] < self.clip[1]:
            raise AdversarialError(f"clip range must have low < high, got {clip}")
        if self.restarts < 1:
            raise AdversarialError(f"restarts must be >= 1, got {restarts}")

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        """Return adversarial examples for the batch ``x`` with labels ``y``."""
        self._check_inputs(x, y)
        if self.eps == 0 or x.shape[0] == 0:
            return x.detach().clone()
        gen = torch.Generator(device=x.device)
        gen.manual_seed(self.seed)
        with eval_mode(self.model):
            best = _Best(x)
            todo = torch.arange(x.shape[0], device=x.device)
            for _ in range(self.restarts):
                self._run(x[todo], y[todo], gen, best, todo)
                todo = todo[~best.fooled[todo]]
                if todo.numel() == 0:
                    break
        return best.x

    def _check_inputs(self, x: Tensor, y: Tensor) -> None:
        if not x.is_floating_point():
            raise AdversarialError(f"inputs must be floating point, got {x.dtype}")
        if y.shape[0] != x.shape[0]:
            raise AdversarialError(f"{x.shape[0]} inputs but {y.shape[0]} labels")
        if x.numel() and (x.min() < self.clip[0] - 1e-6 or x.max() > self.clip[1] + 1e-6):
            raise AdversarialError(
                f"inputs lie outside the declared range {self.clip} "
                f"(min {x.min().item():.4g}, max {x.max().item():.4g})",
                tip="attack the model on raw inputs and put normalisation inside the model, "
                "or declare the range with clip=(low, high)",
            )

    def _finish(self, x0: Tensor, x_adv: Tensor) -> Tensor:
        """Stay inside the eps-ball around ``x0`` and inside the declared range."""
        delta = project(x_adv - x0, self.norm, self.eps)
        return (x0 + delta).clamp(*self.clip)

    def _run(self, x: Tensor, y: Tensor, gen: torch.Generator, best: _Best, idx: Tensor) -> None:
        raise NotImplementedError


class FGSM(Attack):
    """Fast gradient sign method (Goodfellow et al. 2015); one step of size eps.

    With ``norm="l2"`` it is the fast gradient method: one step of L2 length eps.
    """

    def __init__(
        self,
        model: nn.Module,
        eps: float = 0.3,
        *,
        norm: Norm | str = Norm.LINF,
        clip: Clip = (0.0, 1.0),
        seed: int = 0,
    ) -> None:
        super().__init__(model, eps=eps, norm=norm, clip=clip, seed=seed, restarts=1)

    def _run(self, x: Tensor, y: Tensor, gen: torch.Generator, best: _Best, idx: Tensor) -> None:
        _, _, grad = loss_and_grad(self.model, x, y)
        x_adv = self._finish(x, x + self.eps * ascent_direction(grad, self.norm))
        with torch.no_grad():
            logits = self.model(x_adv)
            loss = F.cross_entropy(logits, y, reduction="none")
        # FGSM returns its one point, whatever its loss: no worst-case tracking by design.
        best.x[idx] = x_adv
        best.loss[idx] = loss
        best.fooled[idx] = logits.argmax(1) != y


class PGD(Attack):
    """Projected gradient descent (Madry et al. 2018) on the cross-entropy loss.

    Args:
        eps: radius of the threat model. alpha: step size (default 2.5 * eps / steps).
        steps: iterations per restart. restarts: random restarts; the per-sample worst case
        over all restarts and iterates is returned. random_start: begin at a uniformly random
        point of the ball (always on for restarts after the first). early_stop: stop
        iterating on a sample as soon as it is misclassified (same robust accuracy, less
        work; the returned point is the first one that fools the model, not the one with the
        highest loss).
    """

    def __init__(
        self,
        model: nn.Module,
        eps: float = 0.3,
        alpha: float | None = None,
        steps: int = 50,
        restarts: int = 1,
        *,
        norm: Norm | str = Norm.LINF,
        clip: Clip = (0.0, 1.0),
        seed: int = 0,
        random_start: bool = True,
        early_stop: bool = False,
    ) -> None:
        super().__init__(model, eps=eps, norm=norm, clip=clip, seed=seed, restarts=restarts)
        self.steps = int(steps)
        self.alpha = float(alpha) if alpha is not None else 2.5 * self.eps / max(self.steps, 1)
        self.random_start = random_start
        self.early_stop = early_stop
        if self.steps < 1 or (self.alpha <= 0 and self.eps > 0):
            raise AdversarialError(f"need steps >= 1 and alpha > 0 (got {steps}, {alpha})")

    def _run(self, x: Tensor, y: Tensor, gen: torch.Generator, best: _Best, idx: Tensor) -> None:
        first = bool((best.loss[idx] == -math.inf).all())
        if self.random_start or not first:
            x_adv = (x + random_start(x, self.norm, self.eps, gen)).clamp(*self.clip)
        else:
            x_adv = x.clone()
        for _ in range(self.steps):
            logits, loss, grad = loss_and_grad(self.model, x_adv, y)
            best.update(x_adv, logits, loss, y, idx)
            if self.early_stop:
                keep = ~best.fooled[idx]
                if not keep.any():
                    return
                x, y, x_adv, idx, grad = x[keep], y[keep], x_adv[keep], idx[keep], grad[keep]
            x_adv = self._finish(x, x_adv + self.alpha * ascent_direction(grad, self.norm))
        with torch.no_grad():
            logits = self.model(x_adv)
            best.update(x_adv, logits, F.cross_entropy(logits, y, reduction="none"), y, idx)


class APGD(Attack):
    """Auto-PGD on the cross-entropy loss (Croce & Hein, ICML 2020), Linf or L2.

    Step size starts at 2 * eps and is halved per sample at checkpoints w_j (p_0 = 0,
    p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)) when fewer than 75% of
    the steps since the last checkpoint increased the loss, or when the step size was not
    reduced at the last checkpoint and the best loss did not improve; on a halving the
    iterate restarts from the best point. Momentum 0.75.
    """

    rho = 0.75
    momentum = 0.75

    def __init__(
        self,
        model: nn.Module,
        eps: float = 0.3,
        steps: int = 100,
        restarts: int = 1,
        *,
        norm: Norm | str = Norm.LINF,
        clip: Clip = (0.0, 1.0),
        seed: int = 0,
    ) -> None:
        super().__init__(model, eps=eps, norm=norm, clip=clip, seed=seed, restarts=restarts)
        self.steps = int(steps)
        if self.steps < 1:
            raise AdversarialError(f"steps must be >= 1, got {steps}")

    @staticmethod
    def checkpoints(steps: int) -> list[int]:
        """Iteration indices w_j at which the step-size rule is applied."""
        p = [0.0, 0.22]
        while p[-1] < 1:
            p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
        # round before ceil: 0.41 * 100 is 41.000000000000004 in floating point
        return sorted({math.ceil(round(q * steps, 6)) for q in p[1:] if q <= 1} - {0})

    def _run(self, x: Tensor, y: Tensor, gen: torch.Generator, best: _Best, idx: Tensor) -> None:
        n = x.shape[0]
        shape = (n, *([1] * (x.dim() - 1)))
        eta = torch.full(shape, 2 * self.eps, device=x.device, dtype=x.dtype)
        x_cur = (x + random_start(x, self.norm, self.eps, gen)).clamp(*self.clip)
        logits, loss, grad = loss_and_grad(self.model, x_cur, y)
        best.update(x_cur, logits, loss, y, idx)
        x_max, loss_max, grad_max = x_cur.clone(), loss.clone(), grad.clone()
        checkpoints = set(self.checkpoints(self.steps))
        increases = torch.zeros(n, device=x.device)
        since, last_loss = 0, loss
        loss_max_at_check = loss_max.clone()
        reduced_at_check = torch.ones(n, dtype=torch.bool, device=x.device)
        x_prev = x_cur
        for k in range(self.steps):
            z = self._finish(x, x_cur + eta * ascent_direction(grad, self.norm))
            a = 1.0 if k == 0 else self.momentum
            x_next = self._finish(x, x_cur + a * (z - x_cur) + (1 - a) * (x_cur - x_prev))
            x_prev, x_cur = x_cur, x_next
            logits, loss, grad = loss_and_grad(self.model, x_cur, y)
            best.update(x_cur, logits, loss, y, idx)
            increases += (loss > last_loss).float()
            last_loss = loss
            since += 1
            improved = loss > loss_max
            x_max[improved], loss_max[improved] = x_cur[improved], loss[improved]
            grad_max[improved] = grad[improved]
            if k + 1 in checkpoints:
                oscillating = increases < self.rho * since
                stalled = ~reduced_at_check & (loss_max_at_check >= loss_max)
                halve = oscillating | stalled
                eta[halve] /= 2
                x_cur[halve], grad[halve] = x_max[halve], grad_max[halve]
                x_prev = torch.where(halve.view(shape), x_cur, x_prev)
                reduced_at_check, loss_max_at_check = halve, loss_max.clone()
                increases.zero_()
                since = 0
