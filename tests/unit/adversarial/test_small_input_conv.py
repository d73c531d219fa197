"""Convolutions of inputs with few channels inside attacks (fastpath.fast_cpu_pooling): the
forward is bitwise the eager one, gradients agree with oneDNN's to float rounding, anything
else runs eagerly, and PGD finds the same adversarial points."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from trainguard.adversarial import PGD, fastpath
from trainguard.adversarial.fastpath import fast_cpu_pooling
from trainguard.adversarial.models import digits_cnn

CPU = torch.device("cpu")

CONVS = [
    dict(in_channels=1, out_channels=8, kernel_size=3, padding=1),
    dict(in_channels=1, out_channels=16, kernel_size=4, stride=2, padding=1),  # mnist_cnn's
    dict(in_channels=3, out_channels=5, kernel_size=(3, 2), stride=(2, 1), bias=False),
    dict(in_channels=2, out_channels=4, kernel_size=5, padding=2, padding_mode="reflect"),
]


def _grads(
    conv: nn.Conv2d, x: Tensor, fast: bool, inputs_only: bool
) -> tuple[Tensor, list[Tensor | None], str]:
    conv.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    with fast_cpu_pooling(CPU) if fast else torch.enable_grad():
        out = conv(x)
        weights = torch.linspace(-1, 1, out.numel()).view_as(out)
        loss = (out * weights).sum()
        if inputs_only:
            (gx,) = torch.autograd.grad(loss, x)
        else:
            loss.backward()
            gx = x.grad
    params = [conv.weight.grad, None if conv.bias is None else conv.bias.grad]
    return torch.cat([out.detach().flatten(), gx.flatten()]), params, type(out.grad_fn).__name__


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kw", CONVS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_forward_is_eager_and_gradients_agree(kw: dict[str, Any], dtype: torch.dtype):
    torch.manual_seed(0)
    conv = nn.Conv2d(**kw).to(dtype)
    x = torch.rand(6, kw["in_channels"], 12, 11, dtype=dtype)
    n_out = conv(x).numel()
    for inputs_only in (True, False):
        got, got_params, name = _grads(conv, x, True, inputs_only)
        ref, ref_params, ref_name = _grads(conv, x, False, inputs_only)
        assert name == "_SmallInputConv2dBackward" and "Convolution" in ref_name
        assert torch.equal(got[:n_out], ref[:n_out])  # the forward: bitwise the eager one
        torch.testing.assert_close(got[n_out:], ref[n_out:])  # input gradient: float rounding
        for g, r in zip(got_params, ref_params, strict=True):
            if inputs_only or r is None:
                assert g is None  # autograd.grad(loss, x) leaves parameters alone
            else:  # sums over the whole batch: float32 rounding reaches about 1e-5
                scale = float(r.abs().max())
                torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5 * scale)


def test_other_convolutions_and_no_grad_run_eagerly():
    torch.manual_seed(0)
    cases = [
        (nn.Conv2d(4, 3, 3), torch.rand(2, 4, 7, 7)),  # more input channels than measured
        (nn.Conv2d(1, 3, 3, dilation=2), torch.rand(2, 1, 9, 9)),
        (nn.Conv2d(2, 4, 3, groups=2), torch.rand(2, 2, 7, 7)),
        (nn.Conv2d(1, 3, 3, padding="same"), torch.rand(2, 1, 7, 7)),
    ]
    for conv, x in cases:
        got, _, name = _grads(conv, x, True, True)
        ref, _, _ = _grads(conv, x, False, True)
        assert "Convolution" in name and torch.equal(got, ref)
    conv, x = nn.Conv2d(1, 3, 3), torch.rand(2, 1, 7, 7)
    with fast_cpu_pooling(CPU):
        assert "Convolution" in type(conv(x).grad_fn).__name__  # input needs no gradient
        with torch.no_grad():
            assert torch.equal(conv(x.requires_grad_(True)), F.conv2d(x, conv.weight, conv.bias))


def test_pgd_finds_the_same_points(digits_test, trained_cnn, monkeypatch):
    x, y = digits_test.x[:192], digits_test.y[:192]

    def attack() -> Tensor:
        x_adv = PGD(trained_cnn, 0.1, steps=10, early_stop=True)(x, y)
        with torch.no_grad():
            return trained_cnn(x_adv).argmax(1) != y

    fooled = attack()
    monkeypatch.setattr(fastpath, "SMALL_CONV_CHANNELS", 0)  # oneDNN's backward everywhere
    ref = attack()
    assert ref.any() and not ref.all()
    assert (fooled != ref).sum() <= 1  # the same attack: at most a tie broken otherwise


def test_digits_cnn_takes_the_fast_backward(digits_test):
    torch.manual_seed(0)
    model = digits_cnn().eval()
    x = digits_test.x[:8].clone().requires_grad_(True)
    with fast_cpu_pooling(CPU, model):
        out = model[0](x)
    assert type(out.grad_fn).__name__ == "_SmallInputConv2dBackward"
