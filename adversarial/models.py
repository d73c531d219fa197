"""Small reference models and the MODULE:FACTORY loader used by `robust eval/train`.

Factories take no required arguments and return an ``nn.Module`` mapping images in [0, 1]
shaped (N, 1, H, W) to logits. Normalisation, if any, belongs inside the model so that
attacks work in input space.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from torch import nn
from trainguard.adversarial.errors import ModelSpecError

__all__ = ["build_model", "digits_cnn", "digits_mlp", "load_factory", "mnist_cnn", "mnist_mlp"]


def digits_mlp() -> nn.Module:
    """Two hidden layers for 8x8 digits."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 256),
        nn.ReLU(),
        nn.Linear(256, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def digits_cnn() -> nn.Module:
    """A small CNN for 8x8 digits."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def mnist_cnn() -> nn.Module:
    """The small MNIST CNN of Wong, Rice & Kolter 2020 ("Fast is better than free")."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )


def mnist_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )


def load_factory(spec: str) -> Callable[[], nn.Module]:
    """Import ``MODULE:FACTORY`` and return the factory (not yet called).

    Importing a module runs its code: only name modules you trust (your own package).
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ModelSpecError(f"model spec {spec!r} is not MODULE:FACTORY")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelSpecError(f"cannot import module {module_name!r}: {exc}") from exc
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)  # type: ignore[assignment]
        if factory is None:
            raise ModelSpecError(f"module {module_name!r} has no attribute {attr!r}")
    if not callable(factory):
        raise ModelSpecError(f"{spec} is not callable")
    return factory


def build_model(spec: str) -> nn.Module:
    """Call the factory named by ``spec`` and check that it returns a torch module."""
    model = load_factory(spec)()
    if not isinstance(model, nn.Module):
        raise ModelSpecError(f"{spec} returned {type(model).__name__}, not a torch nn.Module")
    return model
