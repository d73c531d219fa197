"""The frozen CPU forward of the Square attack changes speed, never results: a model that
cannot be frozen faithfully falls back to the eager model."""

from __future__ import annotations

import torch
from torch import nn
from trainguard.adversarial.fastpath import inference_forward
from trainguard.adversarial.models import digits_cnn


class Branchy(nn.Module):
    """Data-dependent control flow: a traced copy would follow one branch only."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        self.b = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) if float(x.mean()) > 0.3 else self.b(x)


def test_frozen_forward_agrees_or_falls_back(digits_test):
    torch.manual_seed(0)
    cnn = digits_cnn().eval()
    x = digits_test.x[:32]
    fast = inference_forward(cnn, x)
    with torch.no_grad():
        assert torch.allclose(fast(x[:5]), cnn(x[:5]), atol=1e-4)
    assert inference_forward(cnn, x[:1]) is cnn  # too small to check a second batch size
    # the trace sees the first two samples (bright: branch a), the batch takes branch b
    branchy = Branchy().eval()
    z = torch.zeros(8, 1, 8, 8)
    z[:2] = 1.0
    assert inference_forward(branchy, z) is branchy
