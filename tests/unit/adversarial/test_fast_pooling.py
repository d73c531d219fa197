"""Channels-last max-pooling during attacks (fastpath.fast_cpu_pooling) changes time, never
results: values, indices and input gradients are bitwise those of torch's NCHW kernel; and
early stopping keeps every point that full-length PGD / APGD break."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from trainguard.adversarial import APGD, PGD, fastpath
from trainguard.adversarial.attacks import loss_and_grad
from trainguard.adversarial.fastpath import fast_cpu_pooling
from trainguard.adversarial.models import digits_cnn

CPU = torch.device("cpu")

POOLS = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=3, stride=1, padding=1),
    dict(kernel_size=2, stride=2, dilation=2),
    dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 0)),
]


def _inputs(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, 11, 9, generator=g)
    if kind == "ties":  # post-ReLU activations: many equal values in a window
        x = torch.relu(torch.randint(-2, 3, x.shape, generator=g).float())
    return x


def _pool_and_grad(x: torch.Tensor, kw: dict, fast: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    weights = torch.linspace(-1, 1, 4000)
    if fast:
        with fast_cpu_pooling(CPU):
            out = F.max_pool2d(x, **kw)
    else:
        out = F.max_pool2d(x, **kw)
    (out.flatten() * weights[: out.numel()]).sum().backward()
    assert x.grad is not None
    return out.detach(), x.grad


@pytest.mark.parametrize("kind", ["random", "ties"])
@pytest.mark.parametrize("kw", POOLS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_values_and_gradients_are_bitwise_torchs(kw, kind):
    x = _inputs(kind)
    out, grad = _pool_and_grad(x, kw, fast=True)
    ref_out, ref_grad = _pool_and_grad(x, kw, fast=False)
    assert torch.equal(out, ref_out) and torch.equal(grad, ref_grad)
    assert out.is_contiguous()  # the model after the pooling sees the layout it expects
    with torch.no_grad(), fast_cpu_pooling(CPU):
        assert torch.equal(F.max_pool2d(x, **kw), ref_out)


def test_indices_requests_and_other_layouts_pass_through_unchanged():
    x = _inputs("ties")
    with fast_cpu_pooling(CPU):
        out, idx = F.max_pool2d(x, 3, 2, 1, return_indices=True)
        cl = F.max_pool2d(x.contiguous(memory_format=torch.channels_last), 2)
    ref_out, ref_idx = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    assert torch.equal(out, ref_out) and torch.equal(idx, ref_idx)
    assert cl.is_contiguous(memory_format=torch.channels_last)


def test_an_attack_step_on_a_pooling_cnn_is_rerouted_and_unchanged(digits_test, monkeypatch):
    monkeypatch.setattr(fastpath, "SMALL_CONV_CHANNELS", 0)  # the pooling alone
    torch.manual_seed(0)
    model = digits_cnn().eval()
    x, y = digits_test.x[:64], digits_test.y[:64]
    ref_logits, ref_loss, ref_grad = loss_and_grad(model, x, y)
    with fast_cpu_pooling(CPU):
        logits, loss, grad = loss_and_grad(model, x, y)
        xr = x.clone().requires_grad_(True)
        out = model[4](model[3](model[2](model[1](model[0](xr)))))
    assert "ChannelsLastMaxPool2d" in type(out.grad_fn).__name__  # the fast kernel did run
    assert torch.equal(logits, ref_logits) and torch.equal(loss, ref_loss)
    assert torch.equal(grad, ref_grad)


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["pgd", "apgd"])
def test_early_stop_breaks_every_point_full_length_breaks(digits_test, trained_cnn, attack):
    """The first adversarial example kept per point: never weaker than running every point
    for every step, and every returned point is a valid one (eps-ball, [0, 1])."""
    x, y = digits_test.x[:192], digits_test.y[:192]
    eps = 0.1

    def fooled(early_stop: bool) -> torch.Tensor:
        if attack == "pgd":
            x_adv = PGD(trained_cnn, eps, steps=20, early_stop=early_stop)(x, y)
        else:
            x_adv = APGD(trained_cnn, eps, steps=20, early_stop=early_stop)(x, y)
        assert (x_adv - x).abs().max() <= eps + 1e-6
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        with torch.no_grad():
            return trained_cnn(x_adv).argmax(1) != y

    early, full = fooled(True), fooled(False)
    assert full.any() and not full.all()  # the case is neither trivial nor hopeless
    assert not (full & ~early).any()  # every point the full run breaks, early stop breaks
    assert (~early).float().mean() <= (~full).float().mean()
