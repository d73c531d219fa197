"""Square attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020): score-based, no gradients.

Random search on the margin loss z_y - max_{i != y} z_i: each query changes one random
square window of the current best perturbation and keeps the change if the margin falls.
It only reads the model's output scores, so gradient masking (non-differentiable
preprocessing, shattered or saturated gradients) does not hide adversarial examples from it;
it is the last attack of the AutoAttack "standard" sequence for that reason.

* Linf: vertical-stripe initialisation at the corners of the ball; a query sets one square
  (of side s, per sample at a random place, one random sign per channel) to x +- eps.
* L2: initialisation by a grid of the paper's "pseudo-Gaussian" windows scaled to norm eps; a
  query moves mass between two random windows of side s: the first gets the pseudo-Gaussian
  pattern with a random sign added to its normalised old content and is rescaled so the
  total norm stays eps, the second window is emptied.

The side s follows the paper's schedule of p, the fraction of pixels changed, rescaled to
the query budget. Queries only run on samples whose margin is still positive, in
``torch.inference_mode``. Inputs must be images shaped (N, C, H, W).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from trainguard.adversarial.attacks import Attack, Clip, Norm, _Best, lp_norm
from trainguard.adversarial.errors import AdversarialError
from trainguard.adversarial.fastpath import inference_forward
from trainguard.adversarial.losses import margin

__all__ = ["Square"]

# (upper end of the phase in queries per 10000, divisor of p_init)
_P_SCHEDULE = (
    (10, 1),
    (50, 2),
    (200, 4),
    (500, 8),
    (1000, 16),
    (2000, 32),
    (4000, 64),
    (6000, 128),
    (8000, 256),
)


def p_fraction(i: int, queries: int, p_init: float) -> float:
    """The share of pixels a query changes at iteration ``i`` (paper schedule, rescaled)."""
    it = int(i / queries * 10000)
    for end, div in _P_SCHEDULE:
        if it <= end:
            return p_init / div
    return p_init / 512


def _rectangle(h: int, w: int) -> Tensor:
    """Concentric rectangles weighted 1/(k+1)^2 around the centre, unit L2 norm."""
    i = torch.arange(h).view(-1, 1)
    j = torch.arange(w).view(1, -1)
    ci, cj = h // 2, w // 2
    # ring index: the Chebyshev distance of a cell from the centre cell
    ring = torch.maximum((i - ci).abs(), (j - cj).abs())
    rings = max(h // 2 + 1, w // 2 + 1)
    weights = 1.0 / (torch.arange(rings, dtype=torch.float32) + 1) ** 2
    # cell value: the sum of weights of every ring k >= its own ring index
    cum = weights.flip(0).cumsum(0).flip(0)
    out = cum[ring.clamp(max=rings - 1)]
    return out / out.norm()


def pseudo_gaussian(s: int) -> Tensor:
    """The s x s window of the L2 Square attack: two opposite-signed rectangle halves."""
    out = torch.cat([_rectangle(s // 2, s), -_rectangle(s - s // 2, s)], dim=0)
    return out / out.norm()


def _window_mask(n: int, h: int, w: int, s: int, gen: torch.Generator, device: torch.device):
    """A (n, 1, h, w) bool mask with one s x s square per sample at a random place."""
    vh = torch.randint(0, h - s + 1, (n, 1, 1), generator=gen, device=device)
    vw = torch.randint(0, w - s + 1, (n, 1, 1), generator=gen, device=device)
    rows = torch.arange(h, device=device).view(1, -1, 1)
    cols = torch.arange(w, device=device).view(1, 1, -1)
    mask = (rows >= vh) & (rows < vh + s) & (cols >= vw) & (cols < vw + s)
    return mask.unsqueeze(1), vh.view(-1), vw.view(-1)


def _place(pattern: Tensor, vh: Tensor, vw: Tensor, h: int, w: int) -> Tensor:
    """Put an (n, s, s) pattern into (n, 1, h, w) zeros at per-sample offsets (vh, vw)."""
    n, s, _ = pattern.shape
    rows = torch.arange(h, device=pattern.device).view(1, -1) - vh.view(-1, 1)  # (n, h)
    cols = torch.arange(w, device=pattern.device).view(1, -1) - vw.view(-1, 1)  # (n, w)
    inside = ((rows >= 0) & (rows < s)).unsqueeze(2) & ((cols >= 0) & (cols < s)).unsqueeze(1)
    r = rows.clamp(0, s - 1).unsqueeze(2).expand(n, h, w)
    c = cols.clamp(0, s - 1).unsqueeze(1).expand(n, h, w)
    b = torch.arange(n, device=pattern.device).view(-1, 1, 1).expand(n, h, w)
    return (pattern[b, r, c] * inside).unsqueeze(1)


class Square(Attack):
    """Square attack, Linf or L2; untargeted, on the margin loss.

    Args:
        queries: model evaluations per sample and restart (AutoAttack standard: 5000).
        p_init: initial share of pixels changed per query (0.8 as in the paper).
        restarts: further runs (fresh random draws) on the samples still unbroken.
        fast: on CPU, query a frozen TorchScript copy of the model when it agrees with the
        model on the batch (``fastpath.py``: half the CPU time per forward pass on the
        reference CNNs, about 1.2x per Square run); the eager model re-checks the final
        points.
    """

    def __init__(
        self,
        model: nn.Module,
        eps: float = 0.3,
        queries: int = 5000,
        restarts: int = 1,
        *,
        norm: Norm | str = Norm.LINF,
        clip: Clip = (0.0, 1.0),
        seed: int = 0,
        p_init: float = 0.8,
        fast: bool = True,
        chunk: int | None = None,
    ) -> None:
        super().__init__(
            model, eps=eps, norm=norm, clip=clip, seed=seed, restarts=restarts, chunk=chunk
        )
        self.fast = fast
        self._forward: Callable[[Tensor], Tensor] = model
        self.queries = int(queries)
        self.p_init = float(p_init)
        if self.queries < 1 or not 0 < self.p_init <= 1:
            raise AdversarialError(f"need queries >= 1 and 0 < p_init <= 1 ({queries}, {p_init})")

    def _check_inputs(self, x: Tensor, y: Tensor, target: Tensor | None = None) -> None:
        super()._check_inputs(x, y, target)
        if x.dim() != 4:
            raise AdversarialError(
                f"the Square attack needs images shaped (N, C, H, W), got {tuple(x.shape)}"
            )
        if target is not None:
            raise AdversarialError("the Square attack is untargeted; do not pass target")

    cpu_chunk = 1 << 30  # whole batches: the frozen forward is most efficient on big ones

    def _prepare(self, x: Tensor) -> None:
        self._forward = inference_forward(self.model, x) if self.fast else self.model

    def _margin(self, x: Tensor, y: Tensor) -> Tensor:
        return margin(self._forward(x), y)

    def _run(
        self,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        gen: torch.Generator,
        best: _Best,
        idx: Tensor,
    ) -> None:
        with torch.inference_mode():
            x_best, m_best = self._search(x, y, gen)
        # clones leave inference mode: the result may be used with autograd afterwards;
        # the eager model has the last word on every point (the search may use a frozen copy)
        x_best = x_best.clone()
        with torch.no_grad():
            m_best = margin(self.model(x_best), y)
        best.update(x_best, m_best <= 0, -m_best, idx)

    def _search(self, x: Tensor, y: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        n, c, h, w = x.shape
        lo, hi = self.clip
        if self.norm is Norm.LINF:
            signs = torch.randint(0, 2, (n, c, 1, w), generator=gen, device=x.device) * 2 - 1
            x_best = (x + self.eps * signs.to(x.dtype)).clamp(lo, hi)
        else:
            x_best = (x + self._l2_init(x, gen)).clamp(lo, hi)
        m_best = self._margin(x_best, y)
        for i in range(self.queries):
            act = (m_best > 0).nonzero().squeeze(1)
            if act.numel() == 0:
                break
            xa, xb = x[act], x_best[act]
            p = p_fraction(i, self.queries, self.p_init)
            if self.norm is Norm.LINF:
                s = min(max(round(math.sqrt(p * h * w)), 1), h, w)
                x_new = self._linf_query(xa, xb, s, gen)
            else:
                s = min(max(round(math.sqrt(p * h * w)), 3), h, w)
                s = s + 1 if s % 2 == 0 and s < min(h, w) else s
                x_new = self._l2_query(xa, xb, s, gen)
            m_new = self._margin(x_new, y[act])
            better = m_new < m_best[act]
            take = act[better]
            x_best[take] = x_new[better]
            m_best[take] = m_new[better]
        return x_best, m_best

    def _linf_query(self, x: Tensor, x_best: Tensor, s: int, gen: torch.Generator) -> Tensor:
        n, c, h, w = x.shape
        mask, _, _ = _window_mask(n, h, w, s, gen, x.device)
        signs = torch.randint(0, 2, (n, c, 1, 1), generator=gen, device=x.device) * 2 - 1
        corner = (x + self.eps * signs.to(x.dtype)).clamp(*self.clip)
        return torch.where(mask, corner, x_best)

    def _l2_init(self, x: Tensor, gen: torch.Generator) -> Tensor:
        n, c, h, w = x.shape
        s = max(min(h, w) // 5, 1)
        tiles_h, tiles_w = h // s, w // s
        tile = pseudo_gaussian(s).to(x.device, x.dtype)
        signs = torch.randint(0, 2, (n, c, tiles_h, tiles_w), generator=gen, device=x.device)
        grid = (signs * 2 - 1).to(x.dtype).repeat_interleave(s, 2).repeat_interleave(s, 3)
        delta = torch.zeros_like(x)
        top, left = (h - s * tiles_h) // 2, (w - s * tiles_w) // 2
        delta[:, :, top : top + s * tiles_h, left : left + s * tiles_w] = grid * tile.repeat(
            tiles_h, tiles_w
        )
        return delta / (lp_norm(delta, Norm.L2).view(-1, 1, 1, 1) + 1e-12) * self.eps

    def _l2_query(self, x: Tensor, x_best: Tensor, s: int, gen: torch.Generator) -> Tensor:
        n, c, h, w = x.shape
        delta = x_best - x
        m1, vh, vw = _window_mask(n, h, w, s, gen, x.device)
        m2, _, _ = _window_mask(n, h, w, s, gen, x.device)
        both = m1 | m2
        norm_img = lp_norm(delta, Norm.L2).view(-1, 1, 1, 1)
        norm_both = lp_norm(delta * both, Norm.L2).view(-1, 1, 1, 1)
        old = delta * m1
        norm_old = old.pow(2).sum(dim=(2, 3), keepdim=True).sqrt()  # per channel
        base = pseudo_gaussian(s).to(x.device, x.dtype)
        flip = torch.rand((n,), generator=gen, device=x.device) < 0.5
        pattern = torch.where(flip.view(-1, 1, 1), base.t(), base).expand(n, s, s)
        eta = _place(pattern, vh, vw, h, w)  # (n, 1, h, w)
        signs = torch.randint(0, 2, (n, c, 1, 1), generator=gen, device=x.device) * 2 - 1
        new = eta * signs.to(x.dtype) + old / (norm_old + 1e-12)
        new_norm = new.pow(2).sum(dim=(2, 3), keepdim=True).sqrt()
        budget = ((self.eps**2 - norm_img**2).clamp(min=0) / c + norm_both**2).sqrt()
        new = new / (new_norm + 1e-12) * budget
        delta = torch.where(both, torch.zeros_like(delta), delta)
        delta = torch.where(m1, new, delta)
        delta = delta / (lp_norm(delta, Norm.L2).view(-1, 1, 1, 1) + 1e-12) * self.eps
        return (x + delta).clamp(*self.clip)
