"""Faster model passes on CPU for attacks: channels-last convolutions, and a frozen forward
for score-only attacks (Square).

Channels-last: a convolutional model fed 1-channel images keeps every activation in NCHW
(a 1-channel input is contiguous in both layouts, so PyTorch cannot tell), and the CPU
kernels for NCHW pooling are an order of magnitude slower than the channels-last ones. For
the length of an attack, ``channels_last`` stores the model's 4-D weights channels-last,
which makes the activations follow; the values never change, only their order in memory,
and each weight is put back in its own layout afterwards. A probe forward pass on two
samples must give the same logits both ways, or nothing is changed (a model that calls
``.view`` on activations, for instance). About a fifth less CPU time per PGD step on the
reference CNNs (tests/bench/bench_attacks.py). The weights' storage is swapped during the
call: do not attack a model whose parameters another thread or a DDP wrapper is using at
the same moment (the trainer's adversarial step does not use these attacks).

Frozen forward:
Gradient-free work calls the model thousands of times without autograd. On CPU the model
frozen to TorchScript with oneDNN layouts and fused convolution, ReLU and pooling kernels
(``torch.jit.optimize_for_inference``) runs the same network about twice as fast for small
convolutional models (tests/bench/bench_attacks.py). It is the same model: the frozen copy is
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

import torch
from torch import Tensor, nn

__all__ = ["channels_last", "inference_forward"]

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


def _conv_tensors(model: nn.Module) -> list[Tensor]:
    """4-D parameters and buffers stored NCHW-contiguous (convolution weights)."""
    tensors = (*model.parameters(), *model.buffers())
    return [t for t in tensors if t.dim() == 4 and t.is_contiguous()]


@contextlib.contextmanager
def channels_last(model: nn.Module, x: Tensor) -> Iterator[Tensor]:
    """For the block: the model's 4-D weights channels-last when that is safe on CPU; yields
    ``x`` in the layout to feed the model. The model must already be in eval mode."""
    weights = _conv_tensors(model) if x.device.type == "cpu" and x.dim() == 4 else []
    if not weights or x.shape[0] == 0:
        yield x
        return
    probe = x[:2]
    with torch.no_grad():
        try:
            ref = model(probe)
        except Exception:  # noqa: BLE001 - the attack itself will report a broken model
            yield x
            return
    for t in weights:
        t.data = t.data.contiguous(memory_format=torch.channels_last)
    try:
        with torch.no_grad():
            try:
                ok = _agrees(model(probe.contiguous(memory_format=torch.channels_last)), ref)
            except Exception as exc:  # noqa: BLE001 - e.g. .view() on an activation
                log.debug("channels-last forward of %s fails: %s", type(model).__name__, exc)
                ok = False
        if not ok:
            for t in weights:
                t.data = t.data.contiguous()
        yield x.contiguous(memory_format=torch.channels_last) if ok else x
    finally:
        for t in weights:
            t.data = t.data.contiguous()
