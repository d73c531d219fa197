"""The CPU fast paths change speed, never results: channels-last weights are put back, models
that cannot take them or cannot be frozen fall back to the eager model."""

from __future__ import annotations

import torch
from torch import nn
from trainguard.adversarial import PGD
from trainguard.adversarial.fastpath import channels_last, inference_forward
from trainguard.adversarial.models import digits_cnn


class ViewModel(nn.Module):
    """Calls .view on a conv activation: fails on channels-last tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(torch.relu(self.conv(x)))
        return self.fc(h.view(h.shape[0], -1))


class Branchy(nn.Module):
    """Data-dependent control flow: a traced copy would follow one branch only."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        self.b = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) if float(x.mean()) > 0.3 else self.b(x)


def test_channels_last_restores_each_weight_and_keeps_logits(digits_test):
    torch.manual_seed(0)
    model = digits_cnn().eval()
    x = digits_test.x[:16]
    before = {n: (p.stride(), p.detach().clone()) for n, p in model.named_parameters()}
    with torch.no_grad():
        ref = model(x)
    with channels_last(model, x) as xs, torch.no_grad():
        assert model[2].weight.is_contiguous(memory_format=torch.channels_last)
        assert torch.allclose(model(xs), ref, atol=1e-5)
    for n, p in model.named_parameters():
        assert p.stride() == before[n][0] and torch.equal(p, before[n][1])


def test_a_model_that_views_activations_still_gets_attacked(digits_test):
    torch.manual_seed(0)
    model = ViewModel().eval()
    x, y = digits_test.x[:16], digits_test.y[:16]
    with channels_last(model, x) as xs:
        assert xs is x and model.conv2.weight.is_contiguous()
    x_adv = PGD(model, 0.1, steps=3)(x, y)
    assert x_adv.is_contiguous() and (x_adv - x).abs().max() <= 0.1 + 1e-6


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
