"""Fixtures for the adversarial tests: one thread, quickly trained digits models, a masked one."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn
from trainguard.adversarial import AdversarialStep, Dataset, load_digits, train_adversarial
from trainguard.adversarial.models import digits_cnn, digits_mlp


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits_test() -> Dataset:
    return load_digits("test")


def _undefended(factory: Callable[[], nn.Module], epochs: int) -> nn.Module:
    torch.manual_seed(0)
    model = factory()
    train_adversarial(
        model, load_digits("train"), AdversarialStep("standard", 0.0), epochs=epochs, batch_size=64
    )
    return model.eval()


@pytest.fixture(scope="session")
def trained_mlp() -> nn.Module:
    """An undefended MLP on digits (about 95% clean accuracy, a few seconds)."""
    return _undefended(digits_mlp, 8)


@pytest.fixture(scope="session")
def trained_cnn() -> nn.Module:
    """An undefended digits CNN with max-pooling (2 epochs, a few seconds)."""
    return _undefended(digits_cnn, 2)


class RoundingModel(nn.Module):
    """Gradient masking by construction: inputs are quantised with torch.round, whose gradient
    is zero everywhere, before a normal network sees them."""

    def __init__(self, inner: nn.Module, levels: int = 4) -> None:
        super().__init__()
        self.inner = inner
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * self.levels) / self.levels)


@pytest.fixture(scope="session")
def masked_model(trained_mlp: nn.Module) -> nn.Module:
    return RoundingModel(trained_mlp).eval()
