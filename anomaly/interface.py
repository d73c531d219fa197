"""The one interface every univariate streaming detector satisfies, and its base error.

A detector is fed one sample at a time, ``score(t, x)`` with ``t`` in seconds and ``x`` a
finite float, and returns a score in [0, 1] computed only from that sample and the samples
before it (causal). It holds bounded state (``state_size()`` never grows past a bound fixed at
construction). Alerting is the caller's decision: ``score >= threshold``, with the threshold
that selection froze in `trainguard.anomaly.config`.

``probation`` is the number of leading samples a detector may use to calibrate itself per
series (value range, training set); it scores 0 during them. NAB gives every detector the same
probation (``min(floor(0.15 n), 750)`` rows); a live stream uses the frozen default.

A `DetectorBank` is the same detector for ``m`` series that advance together (an agent
watching many metrics): ``score(t, values)`` takes one value per series and returns one score
per series, each equal to what the scalar detector would return for that series alone. State is
arrays of shape ``[m, ...]``, so the per-sample Python overhead is paid once per step, not once
per series.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from trainguard.core.errors import TrainguardError

__all__ = ["AnomalyError", "DetectorBank", "UnivariateDetector"]


class AnomalyError(TrainguardError):
    """Base error of the anomaly area (bad detector settings, unknown detector names)."""

    exit_code = 2


@runtime_checkable
class UnivariateDetector(Protocol):
    """A causal streaming detector for one series: ``score(t, x) -> [0, 1]``."""

    def score(self, t: float, x: float) -> float:
        """Score sample ``x`` at time ``t`` from earlier samples, then learn from it."""
        ...

    def state_size(self) -> int:
        """Number of values held now; bounded for the life of the stream."""
        ...


@runtime_checkable
class DetectorBank(Protocol):
    """``m`` causal streaming detectors advanced together: ``score(t, values) -> scores``."""

    m: int

    def score(self, t: float, values: Any) -> Any:
        """Score one value per series (length ``m``) at time ``t``, then learn from them."""
        ...

    def state_size(self) -> int:
        """Number of values held for all ``m`` series; bounded for the life of the bank."""
        ...
