"""8-bit quantisation of site updates (issue 17: the brief's gradient compression).

A site sends its update (new weights - global weights), not its weights, as one int8 tensor per
array plus one float32 scale per array: q = round(u / s) with s = max|u| / 127, so every value
is within one step s of the update (half a step with nearest rounding). Stochastic rounding
rounds up with probability equal to the fractional part, so E[q s] = u: the quantisation error
averages out over sites and rounds instead of biasing the model. The server dequantises each
site's update before any aggregation rule or statistic sees it.

Wire form: the site's NumPyClient returns the int8 values of each array of the model's state
dict in order, then one float32 array of their scales; Flower serialises them as
`.npy` bytes and reads them back with `allow_pickle=False`. The server checks every dtype and
shape against the model before dequantising.
"""

from __future__ import annotations

import secrets

import numpy as np

__all__ = ["CompressionError", "dequantize", "from_arrays", "quantize", "to_arrays"]

LEVELS = 127


class CompressionError(ValueError):
    """A compressed update does not decode to the model's shapes."""


def quantize(update: np.ndarray, *, stochastic: bool,
             rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.float32]:
    """(int8 values, float32 scale) of one array; non-finite values are refused."""
    u = np.asarray(update, dtype=np.float32)
    if not np.all(np.isfinite(u)):
        raise CompressionError("an update with NaN or infinity cannot be quantised")
    peak = float(np.max(np.abs(u))) if u.size else 0.0
    scale = np.float32(peak / LEVELS) if peak > 0 else np.float32(1.0)
    if float(scale) * LEVELS < peak:  # rounded down (subnormal peaks lose most precision, and
        scale = np.nextafter(scale, np.float32(np.inf))  # a tiny one can round to 0): next up
    x = u.astype(np.float64) / float(scale)
    if stochastic:
        gen = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
        low = np.floor(x)
        q = low + (gen.random(x.shape) < (x - low))
    else:
        q = np.rint(x)
    return np.clip(q, -LEVELS, LEVELS).astype(np.int8), scale


def dequantize(q: np.ndarray, scale: np.float32) -> np.ndarray:
    return (np.asarray(q, dtype=np.float32) * np.float32(scale)).astype(np.float32)


def to_arrays(update: list[np.ndarray], *, stochastic: bool) -> list[np.ndarray]:
    """The wire form of a site's update: one int8 array per array, then all scales (float32)."""
    pairs = [quantize(a, stochastic=stochastic) for a in update]
    return [q for q, _ in pairs] + [np.asarray([s for _, s in pairs], dtype=np.float32)]


def from_arrays(arrays: list[np.ndarray], like: list[np.ndarray]) -> list[np.ndarray]:
    """The dequantised update; raises CompressionError unless it matches `like`'s shapes."""
    if len(arrays) != len(like) + 1:
        raise CompressionError("the update is not an int8 update of this model")
    scales = np.asarray(arrays[-1])
    if scales.dtype != np.float32 or scales.shape != (len(like),):
        raise CompressionError("the update is not an int8 update of this model")
    if not (np.all(np.isfinite(scales)) and np.all(scales >= 0)):
        raise CompressionError("a compressed tensor has an invalid scale")
    out = []
    for q, ref, s in zip(arrays[:-1], like, scales, strict=True):
        q = np.asarray(q)
        if q.dtype != np.int8 or q.shape != ref.shape:
            raise CompressionError("the update is not an int8 update of this model")
        out.append(dequantize(q, s))
    return out
