"""FAB, the Fast Adaptive Boundary attack (Croce & Hein, ICML 2020), untargeted (``FAB``) and
targeted (``FABT``), Linf or L2.

FAB looks for the smallest perturbation that crosses the decision boundary between the true
class y and a target class t. Each step linearises g(x) = z_t(x) - z_y(x) at the current
iterate x_k, projects both x_k and the clean point x_0 onto the hyperplane g = 0 (with the
box constraint of the input range, in the threat model's norm), and moves to a convex
combination of the two projections, biased towards x_0 (weight alpha <= alpha_max) so that
the result stays close to the input; ``eta`` overshoots the boundary a little. Once a point
is adversarial, the iterate steps back towards x_0 by the factor ``beta`` to look for a
closer one. FAB-T's targets are the most likely wrong classes at the clean input, in order.
Untargeted FAB (AutoAttack's ``fab``) linearises every class at each step (one backward pass
per class) and takes, per sample, the class j whose linearised boundary is closest:
argmin_j |z_j - z_y| / ||grad (z_j - z_y)||_dual (L1 for Linf, L2 for L2).

For the fixed-radius evaluation here, a sample counts as broken when FAB finds an
adversarial point within eps; samples are dropped from the search once that happens.

The box-constrained projection onto a hyperplane w . d = c solves
min ||d|| s.t. w . d = c, lo <= x + d <= hi: each coordinate moves in the direction of
sign(w_i c) by min(mu * a_i, room_i), with a_i = 1 (Linf) or |w_i| (L2) and room_i the
distance to the box; the reach h(mu) = sum |w_i| min(mu * a_i, room_i) is piecewise linear and
increasing, so the smallest mu with h(mu) = |c| is found from sorted breakpoints and prefix
sums, without iteration. When even the whole box cannot reach the plane, the projection goes
as far as the box allows.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from trainguard.adversarial.attacks import (
    Attack,
    Clip,
    Norm,
    _Best,
    lp_norm,
    top_wrong_classes,
)
from trainguard.adversarial.errors import AdversarialError

__all__ = ["FAB", "FABT", "project_onto_hyperplane"]


def project_onto_hyperplane(x: Tensor, w: Tensor, c: Tensor, norm: Norm, clip: Clip) -> Tensor:
    """The smallest step ``d`` (per row, in ``norm``) with w . d = c and x + d inside ``clip``.

    Args: x, w: (B, D); c: (B,). Returns d: (B, D).
    """
    lo, hi = clip
    s = torch.where(c >= 0, 1.0, -1.0).to(w.dtype).unsqueeze(1)
    w = w * s
    target = c.abs()
    room = torch.where(w > 0, hi - x, x - lo).clamp(min=0)
    aw = w.abs()
    rate = torch.ones_like(aw) if norm is Norm.LINF else aw
    live = aw > 0
    tau = torch.where(live, room / torch.where(live, rate, 1.0), torch.inf)
    tau_s, order = tau.sort(dim=1)
    aw_s, room_s, rate_s = aw.gather(1, order), room.gather(1, order), rate.gather(1, order)
    capped = aw_s * room_s
    before = capped.cumsum(1) - capped  # reach of the coordinates already at their box edge
    lin = aw_s * rate_s
    after = lin.flip(1).cumsum(1).flip(1)  # slope from the coordinates still moving
    reach = torch.where(torch.isfinite(tau_s), before + tau_s * after, torch.inf)
    k = (reach < target.unsqueeze(1)).sum(1)
    feasible = k < reach.shape[1]
    kk = k.clamp(max=reach.shape[1] - 1).unsqueeze(1)
    slope = after.gather(1, kk).squeeze(1)
    mu = (target - before.gather(1, kk).squeeze(1)) / slope.clamp(min=1e-30)
    mu = torch.where(feasible & (slope > 0), mu, torch.full_like(mu, 1e30)).clamp(min=0)
    step = torch.minimum(mu.unsqueeze(1) * rate, room)
    return torch.sign(w) * step  # w already carries the sign of c


class FAB(Attack):
    """Untargeted FAB, Linf or L2: at each step the closest linearised boundary of any class.

    Args:
        steps: iterations per restart (AutoAttack: 100).
        restarts: runs after the first start from a random point at half the distance found
        so far (or eps). alpha_max, eta, beta: the paper's 0.1, 1.05, 0.9.
    """

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
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
        chunk: int | None = None,
    ) -> None:
        super().__init__(
            model, eps=eps, norm=norm, clip=clip, seed=seed, restarts=restarts, chunk=chunk
        )
        self.steps = int(steps)
        self.alpha_max, self.eta, self.beta = float(alpha_max), float(eta), float(beta)
        if self.steps < 1:
            raise AdversarialError(f"need steps >= 1 (got {steps})")

    def _attack(
        self, x: Tensor, y: Tensor, target: Tensor | None, gen: torch.Generator, best: _Best
    ) -> None:
        if target is not None:
            raise AdversarialError("FAB is untargeted; use FABT for targets", tip="FABT(...)")
        with torch.no_grad():
            logits = self.model(x)
        todo = (logits.argmax(1) == y).nonzero().squeeze(1)  # FAB needs a correct start
        dist = torch.full((x.shape[0],), torch.inf, device=x.device, dtype=x.dtype)
        for restart in range(self.restarts):
            if todo.numel() == 0:
                return
            self._search(x, y, None, todo, restart > 0, gen, best, dist)
            todo = todo[~best.fooled[todo]]

    def _linearise(self, x1: Tensor, y: Tensor, t: Tensor | None) -> tuple[Tensor, Tensor]:
        """g = z_t - z_y at ``x1`` and its input gradient (flat); untargeted (``t`` None):
        t is, per sample, the class whose linearised boundary is closest."""
        x1 = x1.detach().requires_grad_(True)
        ar = torch.arange(x1.shape[0], device=x1.device)
        with torch.enable_grad():
            z = self.model(x1)
            if t is not None:
                g = z[ar, t] - z[ar, y]
                (dg,) = torch.autograd.grad(g.sum(), x1)
                return g.detach(), dg.detach().flatten(1)
            k = z.shape[1]
            jac = torch.stack(
                [
                    torch.autograd.grad(z[:, j].sum(), x1, retain_graph=j < k - 1)[0].flatten(1)
                    for j in range(k)
                ],
                dim=1,
            )  # (B, K, D)
        z = z.detach()
        df = z - z[ar, y].unsqueeze(1)
        dg = jac - jac[ar, y].unsqueeze(1)
        dual = 1 if self.norm is Norm.LINF else 2
        closeness = df.abs() / (dg.norm(p=dual, dim=2) + 1e-12)
        closeness[ar, y] = torch.inf
        j = closeness.argmin(1)
        return df[ar, j], dg[ar, j]

    def _search(
        self,
        x_all: Tensor,
        y_all: Tensor,
        t_all: Tensor | None,
        idx: Tensor,
        random_start: bool,
        gen: torch.Generator,
        best: _Best,
        dist: Tensor,
    ) -> None:
        x0, y = x_all[idx], y_all[idx]
        t = None if t_all is None else t_all[idx]
        shape = (-1, *([1] * (x0.dim() - 1)))
        x1 = x0.clone()
        if random_start:
            r = dist[idx].clamp(max=self.eps).view(shape)
            if self.norm is Norm.LINF:
                u = 2 * torch.rand(x0.shape, generator=gen, device=x0.device) - 1
            else:
                u = torch.randn(x0.shape, generator=gen, device=x0.device)
            u = u / (lp_norm(u, self.norm).view(shape) + 1e-12)
            x1 = (x0 + 0.5 * r * u).clamp(*self.clip)
        x0f = x0.flatten(1)
        for _ in range(self.steps):
            g, dg = self._linearise(x1, y, t)
            x1f = x1.detach().flatten(1)
            # the hyperplane g(x1) + dg . (p - x1) = 0, seen from x1 and from x0
            c1 = -g
            c0 = (dg * (x1f - x0f)).sum(1) - g
            d = project_onto_hyperplane(
                torch.cat([x1f, x0f]),
                torch.cat([dg, dg]),
                torch.cat([c1, c0]),
                self.norm,
                self.clip,
            )
            d1, d2 = d[: x1f.shape[0]], d[x1f.shape[0] :]
            a1 = lp_norm(d1, self.norm).clamp(min=1e-8)
            a2 = lp_norm(d2, self.norm).clamp(min=1e-8)
            alpha = (a1 / (a1 + a2)).clamp(0, self.alpha_max).unsqueeze(1)
            x1f = ((x1f + self.eta * d1) * (1 - alpha) + (x0f + self.eta * d2) * alpha).clamp(
                *self.clip
            )
            x1 = x1f.view_as(x0)
            with torch.no_grad():
                is_adv = self.model(x1).argmax(1) != y
            size = lp_norm(x1 - x0, self.norm)
            closer = is_adv & (size < dist[idx])
            if closer.any():
                sel = idx[closer]
                dist[sel] = size[closer]
                inside = closer & (size <= self.eps * (1 + 1e-6))
                if inside.any():
                    x_in = self._finish(x0[inside], x1[inside])
                    best.update(x_in, torch.ones_like(inside[inside]), -size[inside], idx[inside])
            x1 = torch.where(is_adv.view(shape), x0 + (x1 - x0) * self.beta, x1)
            keep = ~best.fooled[idx]
            if not keep.any():
                return
            if not keep.all():
                x0, x0f, x1, y, idx = x0[keep], x0f[keep], x1[keep], y[keep], idx[keep]
                t = None if t is None else t[keep]


class FABT(FAB):
    """Targeted FAB (FAB-T) against the top ``target_classes`` wrong classes, Linf or L2.

    Args:
        steps: iterations per target and restart (AutoAttack standard: 100).
        restarts: runs per target; runs after the first start from a random point at half
        the distance found so far (or eps). alpha_max, eta, beta: the paper's 0.1, 1.05, 0.9.
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
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
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
            alpha_max=alpha_max,
            eta=eta,
            beta=beta,
            chunk=chunk,
        )
        self.target_classes = int(target_classes)
        if self.target_classes < 1:
            raise AdversarialError(f"need target_classes >= 1 (got {target_classes})")

    def _attack(
        self, x: Tensor, y: Tensor, target: Tensor | None, gen: torch.Generator, best: _Best
    ) -> None:
        if target is not None:
            raise AdversarialError("FABT chooses its own targets; do not pass target")
        with torch.no_grad():
            logits = self.model(x)
        k = min(self.target_classes, logits.shape[1] - 1)
        targets = top_wrong_classes(logits, y, k)
        todo = (logits.argmax(1) == y).nonzero().squeeze(1)  # FAB needs a correct start
        dist = torch.full((x.shape[0],), torch.inf, device=x.device, dtype=x.dtype)
        for rank in range(k):
            for restart in range(self.restarts):
                if todo.numel() == 0:
                    return
                self._search(x, y, targets[:, rank], todo, restart > 0, gen, best, dist)
                todo = todo[~best.fooled[todo]]
