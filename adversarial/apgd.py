"""Auto-PGD (Croce & Hein, ICML 2020): APGD on the CE or DLR loss, and APGD-T.

APGD needs no step-size tuning: the step starts at 2 * eps and is halved per sample at
checkpoints when progress stalls, restarting from the best point. APGD-T runs the targeted
DLR loss against each of the most likely wrong classes in turn (the top 9 by default), each
only on the samples that earlier targets did not break; it is the second attack of the
AutoAttack "standard" sequence.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor, nn
from trainguard.adversarial.attacks import (
    Attack,
    Clip,
    Norm,
    _Best,
    ascent_direction,
    objective_and_grad,
    random_start,
    success,
    top_wrong_classes,
)
from trainguard.adversarial.errors import AdversarialError
from trainguard.adversarial.losses import Loss, attack_loss

__all__ = ["APGD", "APGDT"]


class APGD(Attack):
    """Auto-PGD on the cross-entropy or DLR loss, Linf or L2, untargeted or targeted.

    Step size starts at 2 * eps and is halved per sample at checkpoints w_j (p_0 = 0,
    p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)) when fewer than 75% of
    the steps since the last checkpoint increased the loss, or when the step size was not
    reduced at the last checkpoint and the best loss did not improve; on a halving the
    iterate restarts from the best point. Momentum 0.75.

    Args:
        loss: "ce" (APGD-CE) or "dlr" (APGD-DLR: invariant to scaling of the logits).
        targeted: aim at the most likely wrong class when no ``target`` is passed to the
        call; a targeted run ascends -CE(target) or the targeted DLR loss.
        early_stop: stop iterating on a sample once the attack succeeds on it (what an
        evaluation needs: same robust accuracy, much less work once points start to fall;
        the returned point is then the first successful one, not the highest-loss one).
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
        loss: Loss | str = Loss.CE,
        targeted: bool = False,
        early_stop: bool = False,
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
        self.loss = Loss(loss)
        self.early_stop = early_stop
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

    def _success(self, logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
        return success(logits, y, target)

    def _run(
        self,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        gen: torch.Generator,
        best: _Best,
        idx: Tensor,
    ) -> None:
        n = x.shape[0]
        shape = (n, *([1] * (x.dim() - 1)))
        eta = torch.full(shape, 2 * self.eps, device=x.device, dtype=x.dtype)
        x_cur = (x + random_start(x, self.norm, self.eps, gen)).clamp(*self.clip)
        objective = functools.partial(attack_loss, self.loss, y=y, target=target)
        logits, loss, grad = objective_and_grad(self.model, x_cur, objective)
        best.update(x_cur, self._success(logits, y, target), loss, idx)
        x_max, loss_max, grad_max = x_cur.clone(), loss.clone(), grad.clone()
        checkpoints = set(self.checkpoints(self.steps))
        increases = torch.zeros(n, device=x.device)
        since, last_loss = 0, loss
        loss_max_at_check = loss_max.clone()
        reduced_at_check = torch.ones(n, dtype=torch.bool, device=x.device)
        x_prev = x_cur
        for k in range(self.steps):
            if self.early_stop:
                keep = ~best.fooled[idx]
                if not keep.any():
                    return
                if not keep.all():
                    # per-sample state only: dropping broken samples changes nothing for the rest
                    x, y, idx, eta, x_cur, x_prev, grad = (
                        t[keep] for t in (x, y, idx, eta, x_cur, x_prev, grad)
                    )
                    x_max, loss_max, grad_max, increases, last_loss = (
                        t[keep] for t in (x_max, loss_max, grad_max, increases, last_loss)
                    )
                    loss_max_at_check, reduced_at_check = (
                        loss_max_at_check[keep],
                        reduced_at_check[keep],
                    )
                    target = None if target is None else target[keep]
                    objective = functools.partial(attack_loss, self.loss, y=y, target=target)
                    shape = (x.shape[0], *shape[1:])
            z = self._finish(x, x_cur + eta * ascent_direction(grad, self.norm))
            a = 1.0 if k == 0 else self.momentum
            x_next = self._finish(x, x_cur + a * (z - x_cur) + (1 - a) * (x_cur - x_prev))
            x_prev, x_cur = x_cur, x_next
            logits, loss, grad = objective_and_grad(self.model, x_cur, objective)
            best.update(x_cur, self._success(logits, y, target), loss, idx)
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


class APGDT(APGD):
    """APGD-T: APGD on the targeted DLR loss against the top ``target_classes`` wrong classes.

    Targets are the most likely wrong classes at the clean input, tried in order of
    likelihood; each target gets ``restarts`` runs on the samples still classified correctly.
    Success is misclassification (any wrong class), as in AutoAttack. Needs at least four
    classes; with C classes at most C - 1 targets are tried.
    """

    def __init__(
        self,
        model: nn.Module,
        eps: float = 0.3,
        steps: int = 100,
        restarts: int = 1,
        *,
        target_classes: int = 9,
        norm: Norm | str = Norm.LINF,
        clip: Clip = (0.0, 1.0),
        seed: int = 0,
        early_stop: bool = False,
        chunk: int | None = None,
    ) -> None:
        super().__init__(
            model,
            eps,
            steps,
            restarts,
            norm=norm,
            clip=clip,
            seed=seed,
            loss=Loss.DLR,
            early_stop=early_stop,
            chunk=chunk,
        )
        self.target_classes = int(target_classes)
        if self.target_classes < 1:
            raise AdversarialError(f"target_classes must be >= 1, got {target_classes}")

    def _success(self, logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
        return success(logits, y, None)

    def _attack(
        self, x: Tensor, y: Tensor, target: Tensor | None, gen: torch.Generator, best: _Best
    ) -> None:
        if target is not None:
            raise AdversarialError(
                "APGDT chooses its own targets", tip="use APGD(..., loss='dlr') with target="
            )
        with torch.no_grad():
            logits = self.model(x)
        k = min(self.target_classes, logits.shape[1] - 1)
        targets = top_wrong_classes(logits, y, k)
        todo = torch.arange(x.shape[0], device=x.device)
        for rank in range(k):
            for _ in range(self.restarts):
                self._run(x[todo], y[todo], targets[todo, rank], gen, best, todo)
                todo = todo[~best.fooled[todo]]
                if todo.numel() == 0:
                    return
