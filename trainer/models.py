"""Model factories and datasets for the example jobs (``model.factory = "MODULE:FACTORY"``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

__all__ = ["Dataset", "digits_mlp", "load_dataset", "mlp", "resolve"]


def mlp(in_features: int = 64, hidden: int = 64, out_features: int = 10, depth: int = 1) -> nn.Module:
    """A plain ReLU MLP with `depth` hidden layers of width `hidden`. It flattens its input, so
    8x8 images (as `trainguard robust eval --dataset digits` feeds them) and flat rows both work."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def digits_mlp(hidden: int = 64) -> nn.Module:
    """The MLP for scikit-learn's 8x8 digits (64 inputs, 10 classes)."""
    return mlp(64, hidden, 10, depth=1)


@dataclass(frozen=True)
class Dataset:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def _digits(test_fraction: float) -> Dataset:
    from sklearn.datasets import load_digits  # lazy: sklearn is heavy

    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.int64)
    # A fixed split (independent of train.seed), so runs with different seeds are comparable.
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1234))
    n_test = int(len(y) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return Dataset(x[train], y[train], x[test], y[test])


def resolve(spec: str) -> Callable[..., Any]:
    """Import "MODULE:ATTR" with the adversarial area's checks: a bad spec is a ModelSpecError
    (exit 2) naming what is missing, not a traceback."""
    from trainguard.adversarial.models import load_factory

    return cast(Callable[..., Any], load_factory(spec))


def load_dataset(spec: str, test_fraction: float) -> Dataset:
    """`digits` or "MODULE:FUNCTION" returning a Dataset (called with test_fraction)."""
    if spec == "digits":
        return _digits(test_fraction)
    out = resolve(spec)(test_fraction)
    if not isinstance(out, Dataset):
        raise TypeError(f"{spec} returned {type(out).__name__}, not a Dataset")
    return out


def synthetic(test_fraction: float, *, n: int = 4096, features: int = 512, classes: int = 10) -> Dataset:
    """Random linearly separable data for benchmarks (no download, any size)."""
    g = torch.Generator().manual_seed(7)
    w = torch.randn(features, classes, generator=g)
    x = torch.randn(n, features, generator=g)
    y = (x @ w).argmax(dim=1)
    n_test = int(n * test_fraction)
    return Dataset(x[n_test:], y[n_test:], x[:n_test], y[:n_test])
