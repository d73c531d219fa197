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

Input gradients of convolutions whose input has few channels (the first layer of an image
model: 1 channel for digits and MNIST, 3 for RGB): oneDNN's backward kernel is 2-5 times
slower there than torch's im2col one (``aten._slow_conv2d_backward``), so during an attack
``F.conv2d`` on such a CPU input that needs a gradient keeps torch's forward (bitwise the
eager result) and takes its gradients from the im2col kernel. They equal oneDNN's up to float
rounding (another summation order), not bitwise: an attack's path can differ where a
gradient component is within rounding of zero. Weight and bias gradients are computed only
when the backward pass wants them (an attack's ``autograd.grad`` wants the input's alone).

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
from torch.autograd.graph import get_gradient_edge
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


# oneDNN's input-gradient kernel is 2-5x slower than torch's im2col one (aten's
# _slow_conv2d_backward) when the convolution's input has few channels: 0.92 against 0.27 ms
# for digits_cnn's first convolution at batch 128, 5.6 against 1.0 ms for mnist_cnn's; at 3
# channels (32x32, 3 -> 32) 12.2 against 6.7 ms. Measured up to 3 input channels.
SMALL_CONV_CHANNELS = 3


def _conv_args(
    input: Tensor,  # noqa: A002 - F.conv2d's own parameter names, so keywords bind alike
    weight: Tensor,
    bias: Tensor | None = None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
) -> tuple[Tensor, Tensor, Tensor | None, IntPair, IntPair] | None:
    """The arguments of a convolution that ``_SmallInputConv2d`` computes, else None."""
    if (
        groups != 1
        or isinstance(padding, str)
        or _pair(dilation) != [1, 1]
        or not isinstance(weight, Tensor)
        or weight.dim() != 4
        or weight.device.type != "cpu"
        or not weight.is_contiguous()
        or (bias is not None and not isinstance(bias, Tensor))
    ):
        return None
    x = input
    if not (
        x.device.type == "cpu"
        and x.dim() == 4
        and x.dtype in (torch.float32, torch.float64)
        and weight.dtype == x.dtype
        and 1 <= x.shape[1] <= SMALL_CONV_CHANNELS
        and x.is_contiguous()
        and torch.is_grad_enabled()
        and x.requires_grad
        and not torch.jit.is_tracing()  # type: ignore[attr-defined,no-untyped-call]
    ):
        return None
    b = None if bias is None else _through_view(bias)
    return x, _through_view(weight), b, _pair(stride), _pair(padding)


def _engine_needs(t: Tensor) -> bool:
    """Whether the running backward pass wants a gradient for the non-leaf ``t``, as torch's
    own convolution backward asks (an attack's ``autograd.grad`` wants the input's only);
    True when that cannot be told."""
    will_execute = getattr(torch._C, "_will_engine_execute_node", None)
    if will_execute is None or not t.requires_grad:
        return True
    try:
        return bool(will_execute(get_gradient_edge(t).node))
    except RuntimeError:
        return True


def _through_view(t: Tensor) -> Tensor:
    """``t`` behind a view when it requires grad: a leaf's gradient node cannot be asked
    whether ``autograd.grad`` will run it, a view's can."""
    return t.view_as(t) if t.requires_grad else t


class _SmallInputConv2d(torch.autograd.Function):
    """A convolution of an input with few channels: torch's own forward (the eager result,
    bitwise), gradients from torch's im2col backward kernel. The gradients equal oneDNN's up
    to float rounding (the sums run in another order), not bitwise."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, w: Tensor, b: Tensor | None, stride: IntPair, padding: IntPair
    ) -> Tensor:
        ctx.save_for_backward(x, w, b)
        ctx.conv = (stride, padding)
        return F.conv2d(x, w, b, stride, padding)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, w, b = ctx.saved_tensors
        stride, padding = ctx.conv
        need = ctx.needs_input_grad
        mask = [need[0], need[1] and _engine_needs(w), need[2] and _engine_needs(b)]
        gx, gw, gb = torch.ops.aten._slow_conv2d_backward(
            grad.contiguous(), x, w, list(w.shape[2:]), stride, padding, mask
        )
        return (gx, gw, gb, None, None)


class _FastCpuPooling(TorchFunctionMode):
    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is F.conv2d and args and isinstance(args[0], Tensor):
            conv = _conv_args(*args, **kwargs)
            if conv is not None:
                return _SmallInputConv2d.apply(*conv)  # type: ignore[no-untyped-call]
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
