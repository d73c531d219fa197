"""A faster forward pass for score-only attacks (Square) on CPU.

Gradient-free work calls the model thousands of times without autograd. On CPU the model
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

import logging
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["inference_forward"]

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
