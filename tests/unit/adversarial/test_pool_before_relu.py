"""ReLU -> MaxPool2d run as MaxPool2d -> ReLU inside attacks (fastpath.fast_cpu_pooling with a
model): logits and input gradients stay bitwise those of the eager model, anything the swap
does not recognise runs unchanged, and an attack returns exactly the same points."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from trainguard.adversarial import PGD, fastpath
from trainguard.adversarial.fastpath import fast_cpu_pooling
from trainguard.adversarial.models import digits_cnn

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _eager_convolutions(monkeypatch: pytest.MonkeyPatch) -> None:
    """The swap alone: first convolutions keep oneDNN's backward (test_small_input_conv.py)."""
    monkeypatch.setattr(fastpath, "SMALL_CONV_CHANNELS", 0)


POOLS = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=2, stride=1, dilation=2),
]


def _bits(t: Tensor) -> Tensor:
    return t.view(torch.int32)  # bitwise comparison that also holds for NaN and -0.0


def _net(kw: dict[str, Any], inplace: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=inplace), nn.MaxPool2d(**kw)
    ).eval()


def _inputs(kind: str) -> Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, 9, 9, generator=g)
    if kind == "ties":  # coarse values: equal maxima in a window, windows <= 0 everywhere
        x = torch.randint(-2, 2, x.shape, generator=g).float()
    if kind == "nan":
        x[0, :, 2, 3] = torch.nan
    return x


def _logits_and_grad(model: nn.Module, x: Tensor, fast: bool) -> tuple[Tensor, Tensor, Any]:
    x = x.clone().requires_grad_(True)
    weights = torch.linspace(-1, 1, 4000)
    if fast:
        with fast_cpu_pooling(CPU, model):
            out = model(x)
    else:
        out = model(x)
    (out.flatten() * weights[: out.numel()]).sum().backward()
    assert x.grad is not None
    return out.detach(), x.grad, out.grad_fn


@pytest.mark.parametrize("kind", ["random", "ties", "nan"])
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("kw", POOLS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_pool_first_is_bitwise_the_eager_model(kw, inplace, kind):
    model, x = _net(kw, inplace), _inputs(kind)
    out, grad, grad_fn = _logits_and_grad(model, x, fast=True)
    ref_out, ref_grad, ref_fn = _logits_and_grad(model, x, fast=False)
    assert "Relu" in type(grad_fn).__name__ and "Pool" in type(ref_fn).__name__  # it swapped
    assert torch.equal(_bits(out), _bits(ref_out)) and torch.equal(_bits(grad), _bits(ref_grad))
    assert "forward" not in model.__dict__  # the model is itself again after the block


class _OwnForward(nn.Sequential):
    def forward(self, x: Tensor) -> Tensor:
        for m in self:
            x = m(x)
        return x


def test_unrecognised_models_run_unchanged():
    seen: list[Tensor] = []
    hooked = _net(dict(kernel_size=2))
    hooked[1].register_forward_hook(lambda m, i, o: seen.append(o))
    own = _OwnForward(*_net(dict(kernel_size=2)))
    pool_first = nn.Sequential(nn.Conv2d(3, 6, 3), nn.MaxPool2d(2), nn.ReLU())
    x = _inputs("ties")
    for model in (hooked, own, pool_first):
        _, _, grad_fn = _logits_and_grad(model, x, fast=True)
        assert "Relu" not in type(grad_fn).__name__ or model is pool_first
    assert seen and seen[0].shape == (5, 6, 9, 9)  # the hook saw the ReLU's own output
    handle = nn.modules.module.register_module_forward_hook(lambda m, i, o: None)
    try:
        _, _, grad_fn = _logits_and_grad(_net(dict(kernel_size=2)), x, fast=True)
    finally:
        handle.remove()
    assert "Pool" in type(grad_fn).__name__  # a global hook: no swap anywhere


def test_nested_sequentials_swap_and_tracing_sees_the_plain_model():
    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = _net(dict(kernel_size=2))
            self.head = nn.Linear(6 * 4 * 4, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(self.features(x).flatten(1))

    model, x = Wrapper().eval(), _inputs("random")
    out, grad, _ = _logits_and_grad(model, x, fast=True)
    ref_out, ref_grad, _ = _logits_and_grad(model, x, fast=False)
    assert torch.equal(out, ref_out) and torch.equal(grad, ref_grad)
    with fast_cpu_pooling(CPU, model), torch.no_grad():
        traced = torch.jit.trace(model, x)
        assert "forward" in model.features.__dict__
    assert "forward" not in model.features.__dict__
    graph = str(traced.inlined_graph)
    assert graph.index("relu") < graph.index("max_pool2d")  # traced as written
    assert torch.equal(traced(x), ref_out)


class _ReluShapes(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.shapes: set[tuple[int, ...]] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func is F.relu:
            self.shapes.add(tuple(args[0].shape[1:]))
        return func(*args, **(kwargs or {}))


def test_pgd_returns_the_same_points_with_and_without_the_swap(digits_test):
    torch.manual_seed(0)
    model = digits_cnn().eval()
    plain = _OwnForward(*model)  # the same layers, in a container the swap does not touch
    x, y = digits_test.x[:96], digits_test.y[:96]
    with _ReluShapes() as seen:
        fast = PGD(model, 0.1, steps=8, early_stop=True)(x, y)
    assert (64, 4, 4) in seen.shapes and (64, 8, 8) not in seen.shapes  # ReLU ran pooled
    ref = PGD(plain, 0.1, steps=8, early_stop=True)(x, y)
    assert torch.equal(fast, ref)
    assert "forward" not in model.__dict__
