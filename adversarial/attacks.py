"""White-box evasion attacks: the common base, FGSM and PGD (Linf / L2, random start, restarts).

Every attack is a callable object in the style users know from torchattacks:
``PGD(model, eps=0.3, alpha=0.01, steps=50, restarts=10)(x, y) -> x_adv``. Common behaviour:

* the model is switched to eval mode for the attack and every submodule's mode is restored;
* inputs must lie in the declared range ``clip`` (default [0, 1]) and outputs are clamped to it
  and to the eps-ball around the input;
* randomness comes from a ``torch.Generator`` seeded from ``seed`` on each call (on the inputs'
  device), never from the global RNG, so the same call gives the same result;
* iterative attacks keep, per sample, the worst case seen over all iterates and restarts:
  a successful point beats any unsuccessful one, then the higher loss wins.
  Restarts after the first only run on samples not yet broken;
* targeted attacks: pass ``target`` (one class per sample) to the call, or build the attack
  with ``targeted=True`` to aim at each sample's most likely wrong class. Success then means
  "classified as the target", not merely "misclassified";
* on CPU, batches are attacked in chunks of ``chunk`` samples (default 128) so that a chunk's
  activations stay in cache (about 6% less CPU time on the reference models; the Square
  attack takes whole batches); on accelerators whole batches run at once;
* on CPU, max-pooling runs on a channels-last copy (``fastpath.fast_cpu_pooling``): bitwise
  the same logits and gradients, about 15% less time per step on digits_cnn. Whole models
  in channels-last were measured and left out: the layout copies cost more than they save.
  ReLU -> MaxPool2d pairs in ``nn.Sequential`` models run pooling first (bitwise the same,
  about 6% less time per step on digits_cnn), and the first convolution's input gradient
  (1-3 input channels) comes from torch's im2col kernel, 2-5x faster than oneDNN's there
  (equal up to float rounding, not bitwise).
"""

from __future__ import annotations

import contextlib
import enum
import functools
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from trainguard.adversarial.errors import AdversarialError
from trainguard.adversarial.fastpath import fast_cpu_pooling
from trainguard.adversarial.losses import Loss, attack_loss

__all__ = ["FGSM", "PGD", "Attack", "Norm", "eval_mode"]

Clip = tuple[float, float]
CPU_CHUNK = 128


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


def lp_norm(t: Tensor, norm: Norm) -> Tensor:
    """Per-sample norm of ``t`` as a flat vector."""
    flat = t.flatten(1)
    return flat.abs().amax(dim=1) if norm is Norm.LINF else flat.norm(p=2, dim=1)


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


Objective = Callable[[Tensor], Tensor]


def objective_and_grad(
    model: nn.Module, x: Tensor, objective: Objective
) -> tuple[Tensor, Tensor, Tensor]:
    """Logits, the per-sample ``objective(logits)`` and its gradient with respect to ``x``.

    Only the input gradient is computed; parameter ``.grad`` fields are left untouched.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        loss = objective(logits)
        (grad,) = torch.autograd.grad(loss.sum(), x)
    return logits.detach(), loss.detach(), grad.detach()


def loss_and_grad(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Logits, per-sample cross-entropy and its gradient with respect to ``x``."""
    return objective_and_grad(model, x, lambda z: F.cross_entropy(z, y, reduction="none"))


def success(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """Per sample: misclassified (untargeted) or classified as ``target`` (targeted)."""
    pred = logits.argmax(dim=1)
    return pred != y if target is None else pred == target


def top_wrong_classes(logits: Tensor, y: Tensor, k: int) -> Tensor:
    """The ``k`` most likely classes other than ``y`` per sample, most likely first."""
    masked = logits.scatter(1, y.unsqueeze(1), -torch.inf)
    return masked.topk(k, dim=1).indices


def _take(t: Tensor | None, idx: Tensor) -> Tensor | None:
    return None if t is None else t[idx]


class _Best:
    """Per-sample worst case: success beats no success, then the higher loss wins."""

    def __init__(self, x: Tensor) -> None:
        self.x = x.detach().clone()
        self.loss = torch.full((x.shape[0],), -math.inf, device=x.device, dtype=x.dtype)
        self.fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

    def update(self, x: Tensor, fooled: Tensor, loss: Tensor, idx: Tensor) -> None:
        old_fooled, old_loss = self.fooled[idx], self.loss[idx]
        better = (fooled & ~old_fooled) | ((fooled == old_fooled) & (loss > old_loss))
        sel = idx[better]
        self.x[sel] = x.detach()[better]
        self.loss[sel] = loss[better]
        self.fooled[sel] = fooled[better]


class Attack:
    """Base class: validation, eval-mode switching, generator seeding, chunks and restarts."""

    cpu_chunk = CPU_CHUNK

    def __init__(
        self,
        model: nn.Module,
        *,
        eps: float,
        norm: Norm | str = Norm.LINF,
        clip: Clip = (0.0, 1.0),
        seed: int = 0,
        restarts: int = 1,
        targeted: bool = False,
        chunk: int | None = None,
    ) -> None:
        self.model = model
        self.norm = Norm(norm)
        self.eps = float(eps)
        self.clip = (float(clip[0]), float(clip[1]))
        self.seed = int(seed)
        self.restarts = int(restarts)
        self.targeted = bool(targeted)
        self.chunk = chunk
        if self.eps < 0 or not math.isfinite(self.eps):
            raise AdversarialError(f"eps must be a finite number >= 0, got {eps}")
        if not self.clip[0] < self.clip[1]:
            raise AdversarialError(f"clip range must have low < high, got {clip}")
        if self.restarts < 1:
            raise AdversarialError(f"restarts must be >= 1, got {restarts}")
        if chunk is not None and chunk < 1:
            raise AdversarialError(f"chunk must be >= 1, got {chunk}")

    def __call__(self, x: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
        """Return adversarial examples for the batch ``x`` with labels ``y``.

        ``target``: one class per sample for a targeted attack (optional).
        """
        self._check_inputs(x, y, target)
        if self.eps == 0 or x.shape[0] == 0:
            return x.detach().clone()
        gen = torch.Generator(device=x.device)
        gen.manual_seed(self.seed)
        chunk = self.chunk or (self.cpu_chunk if x.device.type == "cpu" else x.shape[0])
        with eval_mode(self.model), fast_cpu_pooling(x.device, self.model):
            if self.targeted and target is None:
                with torch.no_grad():
                    target = top_wrong_classes(self.model(x), y, 1)[:, 0]
            self._prepare(x)
            out = []
            for i in range(0, x.shape[0], chunk):
                sl = slice(i, i + chunk)
                best = _Best(x[sl])
                self._attack(x[sl], y[sl], None if target is None else target[sl], gen, best)
                out.append(best.x)
        return out[0] if len(out) == 1 else torch.cat(out)

    def _prepare(self, x: Tensor) -> None:
        """Once per call, in eval mode, before the chunks are attacked (a hook)."""

    def _attack(
        self, x: Tensor, y: Tensor, target: Tensor | None, gen: torch.Generator, best: _Best
    ) -> None:
        """Restarts, each on the samples that earlier ones did not break."""
        todo = torch.arange(x.shape[0], device=x.device)
        for _ in range(self.restarts):
            self._run(x[todo], y[todo], _take(target, todo), gen, best, todo)
            todo = todo[~best.fooled[todo]]
            if todo.numel() == 0:
                break

    def _check_inputs(self, x: Tensor, y: Tensor, target: Tensor | None = None) -> None:
        if not x.is_floating_point():
            raise AdversarialError(f"inputs must be floating point, got {x.dtype}")
        if y.shape[0] != x.shape[0]:
            raise AdversarialError(f"{x.shape[0]} inputs but {y.shape[0]} labels")
        if target is not None:
            if target.shape != y.shape:
                raise AdversarialError(f"{y.shape[0]} labels but {target.shape[0]} targets")
            if bool((target == y).any()):
                raise AdversarialError(
                    "a target class equals the true label",
                    tip="targets must be classes other than the label of each sample",
                )
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

    def _run(
        self,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        gen: torch.Generator,
        best: _Best,
        idx: Tensor,
    ) -> None:
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

    def _run(
        self,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        gen: torch.Generator,
        best: _Best,
        idx: Tensor,
    ) -> None:
        def objective(z: Tensor) -> Tensor:
            return attack_loss(Loss.CE, z, y, target)

        _, _, grad = objective_and_grad(self.model, x, objective)
        x_adv = self._finish(x, x + self.eps * ascent_direction(grad, self.norm))
        with torch.no_grad():
            logits = self.model(x_adv)
        # FGSM returns its one point, whatever its loss: no worst-case tracking by design.
        best.x[idx] = x_adv
        best.loss[idx] = objective(logits)
        best.fooled[idx] = success(logits, y, target)


class PGD(Attack):
    """Projected gradient descent (Madry et al. 2018) on the cross-entropy loss.

    Args:
        eps: radius of the threat model. alpha: step size (default 2.5 * eps / steps).
        steps: iterations per restart. restarts: random restarts; the per-sample worst case
        over all restarts and iterates is returned. random_start: begin at a uniformly random
        point of the ball (always on for restarts after the first). early_stop: stop
        iterating on a sample as soon as the attack succeeds on it (same robust accuracy,
        less work; the returned point is the first successful one, not the one with the
        highest loss). targeted: aim at the most likely wrong class when no ``target`` is
        passed to the call (targeted PGD descends the cross-entropy of the target).
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
        targeted: bool = False,
        chunk: int | None = None,
    ) -> None:
        super().__init__(
            model,
            eps=eps,
            norm=norm,
            clip=clip,
            seed=seed,
            restarts=restarts,
            targeted=targeted,
            chunk=chunk,
        )
        self.steps = int(steps)
        self.alpha = float(alpha) if alpha is not None else 2.5 * self.eps / max(self.steps, 1)
        self.random_start = random_start
        self.early_stop = early_stop
        if self.steps < 1 or (self.alpha <= 0 and self.eps > 0):
            raise AdversarialError(f"need steps >= 1 and alpha > 0 (got {steps}, {alpha})")

    def _run(
        self,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        gen: torch.Generator,
        best: _Best,
        idx: Tensor,
    ) -> None:
        first = bool((best.loss[idx] == -math.inf).all())
        if self.random_start or not first:
            x_adv = (x + random_start(x, self.norm, self.eps, gen)).clamp(*self.clip)
        else:
            x_adv = x.clone()
        for _ in range(self.steps):
            objective = functools.partial(attack_loss, Loss.CE, y=y, target=target)
            logits, loss, grad = objective_and_grad(self.model, x_adv, objective)
            best.update(x_adv, success(logits, y, target), loss, idx)
            if self.early_stop:
                keep = ~best.fooled[idx]
                if not keep.any():
                    return
                if not keep.all():
                    x, y, x_adv, idx, grad = x[keep], y[keep], x_adv[keep], idx[keep], grad[keep]
                    target = _take(target, keep)
            x_adv = self._finish(x, x_adv + self.alpha * ascent_direction(grad, self.norm))
        with torch.no_grad():
            logits = self.model(x_adv)
            loss = attack_loss(Loss.CE, logits, y, target)
        best.update(x_adv, success(logits, y, target), loss, idx)
