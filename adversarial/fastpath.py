"""Faster model passes on CPU: channels-last max-pooling for every attack, and a frozen
forward for score-only attacks (Square).

Max-pooling (``fast_cpu_pooling``): torch's CPU max-pooling kernel for the default NCHW
layout is slow on the small feature maps of these models (on digits_cnn it takes a sixth of
an attack step, about 4 ms for a (128, 64, 8, 8) batch); the channels-last kernel does the
same pooling about 15 times faster, and the layout copy costs less than it saves. During an
attack, a ``TorchFunctionMode`` routes ``F.max_pool2d`` on 4-D CPU tensors in the NCHW
layout through a channels-last copy and returns the result in NCHW, so the rest of the model
never sees another layout. The backward is torch's own NCHW max-pooling backward with the
same indices. Both kernels scan a window in the same order and pick the same element (ties
and NaN included), so logits and input gradients are bitwise those of the model run without
it: the attack follows exactly the same path, only faster. Converting whole models to
channels-last was measured and left out (copies between layouts cost more than they save).

Pooling before the ReLU (``fast_cpu_pooling(device, model)``): max(relu(a), relu(b)) is
relu(max(a, b)), so a ``ReLU -> MaxPool2d`` pair in a plain ``nn.Sequential`` runs as
``MaxPool2d -> ReLU`` during the attack: the ReLU and its backward then touch a quarter of
the elements (2x2 pooling) and two full-size activations are never allocated (about 6% of a
digits_cnn step). It is exact: a window whose maximum is positive picks the same element
(ReLU leaves positive values and their ties alone) and passes the same gradient; a window
with no positive value has a zero gradient either way; NaN propagates alike. Only the
container's ``forward`` is replaced, for the block's duration; subclasses with their own
``forward``, modules with hooks (or global hooks) and tracing run the model as written.

Frozen forward (``inference_forward``): gradient-free work calls the model thousands of times without autograd. On CPU the model
frozen to TorchScript with oneDNN layouts and fused convolution, ReLU and pooling kernels
(``torch.jit.optimize_for_inference``) runs the same network in about half the CPU time for
small convolutional models (digits_cnn, mnist_cnn at batch 256). It is the same model: the frozen copy is
checked against the eager model on the batch at hand (logits within float tolerance, same
predicted classes, also at another batch size) and any failure or mismatch falls back to the
eager model, which also decides every reported result. Data-dependent control flow is the
one thing tracing cannot see; callers therefore re-check their final answers eagerly.
Certification does not use it: a certificate must be about the model itself.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = ["fast_cpu_pooling", "inference_forward"]

log = logging.getLogger(__name__)

Forward = Callable[[Tensor], Tensor]


def _agrees(got: Tensor, ref: Tensor) -> bool:
    if got.shape != ref.shape or not torch.isfinite(got).all():
        return False
    scale = float(ref.abs().max()) + 1.0
    close = torch.allclose(got, ref, rtol=1e-4, atol=1e-5 * scale)
    return close and bool((got.argmax(1) == ref.argmax(1)).all())


def inference_forward(model: nn.Module, example: Tensor) -> Forward:
    """``model`` frozen for inference when that is safe and helps (CPU, 4-D inputs), else
    ``model`` itself. The model must already be in eval mode."""
    if example.device.type != "cpu" or example.dim() != 4 or example.shape[0] < 2:
        return model
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and TorchScript deprecation notices
            traced = torch.jit.trace(model, example[:2], check_trace=False)
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
            ref, got = model(example), frozen(example)
            ok = _agrees(got, ref) and _agrees(frozen(example[:1]), ref[:1])
    except Exception as exc:  # noqa: BLE001 - tracing fails in many ways; eager always works
        log.debug("no frozen fast path for %s: %s", type(model).__name__, exc)
        return model
    if not ok:
        log.debug("frozen %s disagrees with eager; using eager", type(model).__name__)
        return model
    return frozen  # type: ignore[no-any-return]


IntPair = list[int]


def _pair(v: int | tuple[int, ...] | list[int]) -> IntPair:
    return [int(v), int(v)] if isinstance(v, int) else [int(i) for i in v]


def _pool_args(
    input: Tensor,  # noqa: A002 - F.max_pool2d's own parameter names, so keywords bind alike
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> tuple[Tensor, IntPair, IntPair, IntPair, IntPair, bool, bool]:
    k = _pair(kernel_size)
    s = _pair(stride) if stride else k  # F.max_pool2d: stride None or () means kernel_size
    return input, k, s, _pair(padding), _pair(dilation), bool(ceil_mode), bool(return_indices)


class _ChannelsLastMaxPool2d(torch.autograd.Function):
    """Max-pooling of an NCHW tensor computed in channels-last, differentiated by torch's
    own NCHW backward with the same indices."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, k: IntPair, s: IntPair, p: IntPair, d: IntPair, ceil: bool
    ) -> Tensor:
        cl = x.contiguous(memory_format=torch.channels_last)
        out, idx = torch.ops.aten.max_pool2d_with_indices(cl, k, s, p, d, ceil)
        idx = idx.contiguous()
        ctx.save_for_backward(x, idx)
        ctx.pool = (k, s, p, d, ceil)
        return out.contiguous()  # type: ignore[no-any-return]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, idx = ctx.saved_tensors
        g = torch.ops.aten.max_pool2d_with_indices_backward(grad, x, *ctx.pool, idx)
        return (g, None, None, None, None, None)


def _rerouted(x: Tensor) -> bool:
    """An NCHW CPU float batch whose channels-last copy is a different layout."""
    return (
        x.device.type == "cpu"
        and x.dim() == 4
        and x.is_floating_point()
        and x.shape[1] > 1
        and x.shape[2] * x.shape[3] > 1
        and x.is_contiguous()
        and not torch.jit.is_tracing()  # type: ignore[attr-defined,no-untyped-call]
    )


class _FastCpuPooling(TorchFunctionMode):
    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is F.max_pool2d and args and isinstance(args[0], Tensor):
            x, k, s, p, d, ceil, with_indices = _pool_args(*args, **kwargs)
            if not with_indices and _rerouted(x):
                if torch.is_grad_enabled() and x.requires_grad:
                    return _ChannelsLastMaxPool2d.apply(x, k, s, p, d, ceil)  # type: ignore[no-untyped-call]
                cl = x.contiguous(memory_format=torch.channels_last)
                return torch.ops.aten.max_pool2d(cl, k, s, p, d, ceil).contiguous()
        return func(*args, **kwargs)


def _has_hooks(module: nn.Module) -> bool:
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return any(getattr(module, n, True) for n in names)  # missing: cannot tell, so hooked


def _global_hooks() -> bool:
    from torch.nn.modules import module as torch_module

    names = (
        "_global_forward_hooks",
        "_global_forward_pre_hooks",
        "_global_backward_hooks",
        "_global_backward_pre_hooks",
    )
    return any(getattr(torch_module, n, True) for n in names)


def _relu_pool_pairs(seq: nn.Sequential) -> frozenset[int]:
    """Positions i of plain ``nn.ReLU`` children directly followed by a plain ``nn.MaxPool2d``
    (no hooks, no indices requested): the pairs whose order may be swapped."""
    children = list(seq)
    return frozenset(
        i
        for i, (a, b) in enumerate(zip(children, children[1:], strict=False))
        if type(a) is nn.ReLU
        and type(b) is nn.MaxPool2d
        and not b.return_indices
        and not _has_hooks(a)
        and not _has_hooks(b)
    )


def _pool_first_forward(seq: nn.Sequential, pairs: frozenset[int]) -> Forward:
    """``nn.Sequential.forward`` with each ReLU -> MaxPool2d pair run as MaxPool2d -> ReLU."""
    children = list(seq)
    plain = nn.Sequential.forward.__get__(seq)

    def forward(input: Tensor) -> Tensor:  # noqa: A002 - nn.Sequential.forward's name
        if torch.jit.is_tracing() or torch.jit.is_scripting():  # type: ignore[attr-defined,no-untyped-call]
            return plain(input)  # type: ignore[no-any-return]
        i = 0
        while i < len(children):
            if i in pairs:
                input = F.relu(children[i + 1](input))
                i += 2
            else:
                input = children[i](input)
                i += 1
        return input

    return forward


@contextlib.contextmanager
def _pool_before_relu(model: nn.Module) -> Iterator[None]:
    """Within the block, every plain ``nn.Sequential`` inside ``model`` runs a ReLU followed by
    a max-pooling as the pooling followed by the ReLU: a quarter of the elements for the
    ReLU and its backward on a 2x2 pooling, and bitwise the same logits and gradients (see
    ``fast_cpu_pooling``). Anything else (subclasses that override ``forward``, hooks, a
    ``forward`` already replaced) runs unchanged."""
    patched: list[nn.Sequential] = []
    if not _global_hooks():
        for module in model.modules():
            if (
                isinstance(module, nn.Sequential)
                and type(module).forward is nn.Sequential.forward
                and "forward" not in module.__dict__
            ):
                pairs = _relu_pool_pairs(module)
                if pairs:
                    module.forward = _pool_first_forward(module, pairs)  # type: ignore[method-assign]
                    patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


@contextlib.contextmanager
def fast_cpu_pooling(device: torch.device, model: nn.Module | None = None) -> Iterator[None]:
    """Within the block, ``F.max_pool2d`` on NCHW CPU tensors runs on a channels-last copy
    (same values, indices and gradients, less time); with ``model``, its ``nn.Sequential``
    ReLU -> MaxPool2d pairs also run pooling first (same logits and gradients, less time).
    Nothing changes on other devices."""
    if device.type != "cpu":
        yield
        return
    relu_swap = _pool_before_relu(model) if model is not None else contextlib.nullcontext()
    with _FastCpuPooling(), relu_swap:
        yield
