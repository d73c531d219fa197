"""Adversarial training: FGSM-RS, PGD-AT and TRADES (Linf or L2), Gaussian noise augmentation
for randomized smoothing, alone or as a trainer step component.

Use inside any training loop (this is the component a trainer calls once per batch)::

    step = AdversarialStep("fgsm-rs", eps=0.1)
    for x, y in loader:
        optimizer.zero_grad()
        step.loss(model, x, y).backward()   # under DDP: step.loss(ddp, x, y, attack_model=ddp.module)
        optimizer.step()

``loss`` crafts the perturbation with the model in eval mode (its modes are restored) and
returns the training loss on the perturbed batch with a graph to the parameters. Use
``train_adversarial`` for a complete loop with the catastrophic-overfitting guard.
"""

from __future__ import annotations

import copy
import enum
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from trainguard.adversarial.attacks import (
    PGD,
    Norm,
    ascent_direction,
    eval_mode,
    loss_and_grad,
    project,
    random_start,
)
from trainguard.adversarial.data import Dataset
from trainguard.adversarial.errors import AdversarialError

__all__ = [
    "AdversarialStep",
    "EpochReport",
    "Method",
    "OverfitGuard",
    "TrainResult",
    "train_adversarial",
]

log = logging.getLogger(__name__)


class Method(enum.StrEnum):
    FGSM_RS = "fgsm-rs"  # Wong, Rice & Kolter 2020
    PGD = "pgd"  # Madry et al. 2018
    TRADES = "trades"  # Zhang et al. 2019
    STANDARD = "standard"  # no defence: the baseline to compare against
    GAUSSIAN = "gaussian"  # noise augmentation (Cohen et al. 2019): for certification


class AdversarialStep:
    """The loss of one adversarial training step.

    Args:
        method: fgsm-rs | pgd | trades | standard | gaussian.
        eps: radius in ``norm``. alpha: step size (fgsm-rs default 1.25 * eps; pgd and trades
        default 2.5 * eps / steps). steps: attack iterations for pgd and trades.
        beta: TRADES weight of the KL term. clip: input range. seed: seeds the generator
        used for random starts and noise (one generator per device, advanced batch after
        batch). norm: linf (default) or l2 for fgsm-rs and pgd. sigma: the standard
        deviation of the Gaussian noise of ``gaussian`` (train with the sigma you certify
        with); the noise is not clipped to the input range, as in Cohen et al.
    """

    def __init__(
        self,
        method: Method | str,
        eps: float,
        *,
        alpha: float | None = None,
        steps: int = 10,
        beta: float = 6.0,
        clip: tuple[float, float] = (0.0, 1.0),
        seed: int = 0,
        norm: Norm | str = Norm.LINF,
        sigma: float = 0.25,
    ) -> None:
        self.method = Method(method)
        self.norm = Norm(norm)
        self.sigma = float(sigma)
        self.eps = float(eps)
        self.steps = int(steps)
        self.beta = float(beta)
        self.clip = clip
        self.seed = seed
        if self.eps < 0 or self.steps < 1:
            raise AdversarialError(f"need eps >= 0 and steps >= 1 (got {eps}, {steps})")
        if self.method is Method.GAUSSIAN and not self.sigma > 0:
            raise AdversarialError(f"gaussian training needs sigma > 0 (got {sigma})")
        if self.norm is Norm.L2 and self.method is Method.TRADES:
            raise AdversarialError(
                "trades is implemented for linf only", tip="use --method pgd with --norm l2"
            )
        default_alpha = (
            1.25 * self.eps if self.method is Method.FGSM_RS else 2.5 * self.eps / self.steps
        )
        self.alpha = float(alpha) if alpha is not None else default_alpha
        self._gens: dict[torch.device, torch.Generator] = {}

    def _gen(self, device: torch.device) -> torch.Generator:
        if device not in self._gens:
            g = torch.Generator(device=device)
            g.manual_seed(self.seed)
            self._gens[device] = g
        return self._gens[device]

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The adversarial batch this method trains on (``x`` itself for standard)."""
        if self.method is Method.GAUSSIAN:
            noise = torch.randn(x.shape, generator=self._gen(x.device), device=x.device)
            return x + self.sigma * noise.to(x.dtype)
        if self.method is Method.STANDARD or self.eps == 0:
            return x
        gen = self._gen(x.device)
        if self.norm is Norm.L2:
            with eval_mode(model):
                return self._l2(model, x, y, gen)
        with eval_mode(model):
            if self.method is Method.FGSM_RS:
                return self._fgsm_rs(model, x, y, gen)
            if self.method is Method.PGD:
                return self._pgd(model, x, y, gen)
            return self._trades_attack(model, x, gen)

    def loss(
        self, model: nn.Module, x: Tensor, y: Tensor, *, attack_model: nn.Module | None = None
    ) -> Tensor:
        """Scalar training loss with a graph to the parameters of ``model``.

        ``attack_model`` crafts the perturbation instead of ``model``; under
        DistributedDataParallel pass ``ddp.module`` so the extra forward passes of the attack
        do not go through DDP's gradient-synchronisation hooks.
        """
        x_adv = self.perturb(attack_model or model, x, y).detach()
        if self.method is Method.TRADES:
            logits = model(x)
            kl = F.kl_div(
                F.log_softmax(model(x_adv), dim=1),
                F.softmax(logits, dim=1),
                reduction="batchmean",
            )
            return F.cross_entropy(logits, y) + self.beta * kl
        return F.cross_entropy(model(x_adv), y)

    def _fgsm_rs(self, model: nn.Module, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        delta = random_start(x, Norm.LINF, self.eps, gen)
        x0 = (x + delta).clamp(*self.clip)
        _, _, grad = loss_and_grad(model, x0, y)
        delta = (x0 - x + self.alpha * grad.sign()).clamp(-self.eps, self.eps)
        return (x + delta).clamp(*self.clip)

    def _pgd(self, model: nn.Module, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        x_adv = (x + random_start(x, Norm.LINF, self.eps, gen)).clamp(*self.clip)
        for _ in range(self.steps):
            _, _, grad = loss_and_grad(model, x_adv, y)
            delta = (x_adv - x + self.alpha * grad.sign()).clamp(-self.eps, self.eps)
            x_adv = (x + delta).clamp(*self.clip)
        return x_adv

    def _l2(self, model: nn.Module, x: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        """FGSM-RS (one step) or PGD in the L2 ball; linf keeps its own code paths above."""
        steps = 1 if self.method is Method.FGSM_RS else self.steps
        x_adv = (x + random_start(x, Norm.L2, self.eps, gen)).clamp(*self.clip)
        for _ in range(steps):
            _, _, grad = loss_and_grad(model, x_adv, y)
            step = x_adv - x + self.alpha * ascent_direction(grad, Norm.L2)
            x_adv = (x + project(step, Norm.L2, self.eps)).clamp(*self.clip)
        return x_adv

    def _trades_attack(self, model: nn.Module, x: Tensor, gen: torch.Generator) -> Tensor:
        """Maximise KL(f(x) || f(x')) from a small Gaussian start (the official recipe)."""
        with torch.no_grad():
            p_clean = F.softmax(model(x), dim=1)
        noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        x_adv = (x + 0.001 * noise).clamp(*self.clip)
        for _ in range(self.steps):
            x_adv = x_adv.detach().requires_grad_(True)
            with torch.enable_grad():
                kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), p_clean, reduction="sum")
                (grad,) = torch.autograd.grad(kl, x_adv)
            delta = (x_adv.detach() - x + self.alpha * grad.sign()).clamp(-self.eps, self.eps)
            x_adv = (x + delta).clamp(*self.clip)
        return x_adv.detach()


@dataclass(frozen=True)
class OverfitGuard:
    """Catastrophic-overfitting guard (Wong et al. 2020, early stopping).

    After each epoch, PGD accuracy on a held-out batch is measured; when it falls more than
    ``max_drop`` below the best seen so far, training stops and the best weights are restored.
    """

    eps: float
    steps: int = 10
    batch: int = 256
    max_drop: float = 0.2
    norm: Norm = Norm.LINF


@dataclass(frozen=True)
class EpochReport:
    epoch: int
    loss: float
    train_accuracy: float
    holdout_pgd_accuracy: float | None


@dataclass(frozen=True)
class TrainResult:
    epochs: list[EpochReport] = field(default_factory=list)
    stopped_early: bool = False
    restored_epoch: int | None = None
    reason: str = ""


def _holdout_accuracy(model: nn.Module, data: Dataset, guard: OverfitGuard) -> float:
    x, y = data.x[: guard.batch], data.y[: guard.batch]
    attack = PGD(model, eps=guard.eps, steps=guard.steps, clip=data.clip, seed=1, norm=guard.norm)
    x_adv = attack(x, y)
    with torch.no_grad(), eval_mode(model):
        return float((model(x_adv).argmax(1) == y).float().mean())


class _Trainer:
    """One training run: optimiser, schedule and shuffling; ``epoch()`` runs one pass."""

    def __init__(
        self,
        model: nn.Module,
        train: Dataset,
        step: AdversarialStep,
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        seed: int,
    ) -> None:
        self.model, self.step, self.batch_size = model, step, batch_size
        device = next(model.parameters()).device
        self.x, self.y = train.x.to(device), train.y.to(device)
        self.opt = torch.optim.Adam(model.parameters(), lr=lr)
        total = epochs * ((len(train) + batch_size - 1) // batch_size)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda i: max(0.0, 1 - i / total))
        self.shuffle = torch.Generator().manual_seed(seed)

    def epoch(self) -> tuple[float, float]:
        """Train one pass; return the mean loss and the accuracy on the clean batches."""
        self.model.train()
        n = self.y.shape[0]
        order = torch.randperm(n, generator=self.shuffle).to(self.x.device)
        loss_sum, correct = 0.0, 0
        for i in range(0, n, self.batch_size):
            idx = order[i : i + self.batch_size]
            x, y = self.x[idx], self.y[idx]
            self.opt.zero_grad(set_to_none=True)
            loss = self.step.loss(self.model, x, y)
            torch.autograd.backward(loss)
            self.opt.step()
            self.sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            with torch.no_grad(), eval_mode(self.model):
                correct += int((self.model(x).argmax(1) == y).sum())
        return loss_sum / n, correct / n


def train_adversarial(
    model: nn.Module,
    train: Dataset,
    step: AdversarialStep,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    holdout: Dataset | None = None,
    guard: OverfitGuard | None = None,
    seed: int = 0,
    progress: Callable[[EpochReport], None] | None = None,
    measure: Callable[[nn.Module], float] | None = None,
) -> TrainResult:
    """Train ``model`` in place with Adam and a linear learning-rate decay.

    Returns the per-epoch reports. With ``guard`` and ``holdout`` the best-holdout weights are
    restored when robust accuracy collapses (catastrophic overfitting). ``measure`` replaces
    the held-out PGD accuracy (a seam for tests and for callers with their own metric).
    """
    if epochs < 1 or batch_size < 1:
        raise AdversarialError(f"need epochs >= 1 and batch size >= 1 (got {epochs}, {batch_size})")
    if guard is not None and measure is None and holdout is not None:
        measure = functools.partial(_holdout_accuracy, data=holdout, guard=guard)
    trainer = _Trainer(model, train, step, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    reports: list[EpochReport] = []
    best: tuple[float, int, dict[str, Tensor]] | None = None
    for epoch in range(1, epochs + 1):
        loss, acc = trainer.epoch()
        robust = measure(model) if guard is not None and measure is not None else None
        reports.append(EpochReport(epoch, loss, acc, robust))
        if progress:
            progress(reports[-1])
        if robust is None or guard is None:
            continue
        if best is None or robust > best[0]:
            best = (robust, epoch, copy.deepcopy(model.state_dict()))
        elif robust < best[0] - guard.max_drop:
            model.load_state_dict(best[2])
            reason = (
                f"catastrophic overfitting: held-out PGD accuracy fell from {best[0]:.3f} "
                f"(epoch {best[1]}) to {robust:.3f} (epoch {epoch}); restored epoch {best[1]}"
            )
            log.warning(reason)
            model.eval()
            return TrainResult(reports, True, best[1], reason)
    model.eval()
    return TrainResult(reports)
