"""Robust aggregation rules over the gathered update rows (one row per rank).

Every rule is a pure function of a (n, d) tensor, built from deterministic elementwise ops,
so every rank computes bit-identical results from the same rows. The coordinate-wise median and
the trimmed mean use a sorting network (Batcher's odd-even merge sort: a fixed sequence of
compare-exchange steps done with `torch.minimum` / `torch.maximum` on whole rows) instead of
`torch.sort`, so the work is a fixed schedule of vectorised ops whatever the data.
"""

from __future__ import annotations

import functools

import torch

__all__ = [
    "centered_clip",
    "coordinate_median",
    "krum",
    "krum_scores",
    "mean",
    "sort_rows",
    "sorting_network",
    "trimmed_mean",
]


@functools.lru_cache(maxsize=64)
def sorting_network(n: int) -> tuple[tuple[int, int], ...]:
    """Compare-exchange pairs of Batcher's odd-even merge sort for `n` inputs (n a power of 2)."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"sorting network size must be a power of two, got {n}")
    pairs: list[tuple[int, int]] = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return tuple(pairs)


def sort_rows(rows: torch.Tensor) -> torch.Tensor:
    """Sort each column of `rows` (n, d) ascending with the sorting network.

    NaN is not ordered by min/max: callers sanitise NaN first.
    """
    return torch.stack(_sorted(rows))


def _sorted(rows: torch.Tensor) -> list[torch.Tensor]:
    """The sorted rows as a list (no stacking copy: the rules read only some of them)."""
    n = rows.shape[0]
    size = 1 << max(0, (n - 1).bit_length())
    cols: list[torch.Tensor] = list(rows.unbind(0))
    if size > n:
        pad = torch.full_like(rows[0], float("inf"))
        cols.extend([pad] * (size - n))
    for a, b in sorting_network(size):
        lo = torch.minimum(cols[a], cols[b])
        hi = torch.maximum(cols[a], cols[b])
        cols[a], cols[b] = lo, hi
    return cols[:n]


def mean(rows: torch.Tensor) -> torch.Tensor:
    return rows.mean(dim=0)


def coordinate_median(rows: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median; for an even count, the mean of the two middle values."""
    n = rows.shape[0]
    if n == 1:
        return rows[0].clone()
    s = _sorted(rows)
    if n % 2:
        return s[n // 2]
    return (s[n // 2 - 1] + s[n // 2]) / 2


def trimmed_mean(rows: torch.Tensor, trim: int) -> torch.Tensor:
    """Drop the `trim` smallest and largest values of each coordinate, average the rest."""
    n = rows.shape[0]
    trim = min(trim, (n - 1) // 2)
    kept = _sorted(rows)[trim : n - trim]
    return torch.stack(kept).mean(dim=0) if len(kept) > 1 else kept[0].clone()


def centered_clip(
    rows: torch.Tensor, center: torch.Tensor, tau: float, iters: int = 1
) -> torch.Tensor:
    """Centered clipping (Karimireddy, He, Jaggi 2021): move `center` by the mean of the
    row deviations, each clipped to norm `tau`; repeated `iters` times."""
    v = center
    for _ in range(iters):
        diff = rows - v
        norms = torch.linalg.vector_norm(diff, dim=1, keepdim=True)
        scale = torch.clamp(tau / torch.clamp(norms, min=1e-12), max=1.0)
        v = v + (diff * scale).mean(dim=0)
    return v


def krum_scores(rows: torch.Tensor, f: int) -> torch.Tensor:
    """Krum score of each row: the sum of squared distances to its n - f - 2 nearest rows."""
    n = rows.shape[0]
    x = rows.to(torch.float64)
    sq = (x * x).sum(dim=1)
    d2 = torch.clamp(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), min=0.0)
    d2.fill_diagonal_(float("inf"))
    k = max(1, n - f - 2)
    nearest = torch.sort(d2, dim=1).values[:, :k]  # n x n distances, not the coordinates
    return nearest.sum(dim=1)


def krum(rows: torch.Tensor, f: int, m: int = 1) -> tuple[torch.Tensor, list[int]]:
    """Krum (m = 1) or Multi-Krum (mean of the m best-scored rows). Ties go to the lower rank.

    Returns the aggregate and the selected row indices.
    """
    scores = krum_scores(rows, f)
    order = torch.argsort(scores, stable=True)
    chosen = sorted(int(i) for i in order[: max(1, m)])
    return rows[chosen].mean(dim=0), chosen
