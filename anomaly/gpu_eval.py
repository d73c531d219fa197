"""A synthetic, labelled evaluation of the GPU-misuse usage signature.

Traces are generated in code from a fixed seed (nothing is downloaded): each is ``length``
samples of one GPU (util %, memory, power), 10 s apart.

Normal training jobs (label 0):
  * ``dl-training``: util 70-97 % with noise, input-pipeline / eval dips every 8-40 samples,
    power following util, memory that moves a little (allocator, eval phases). A quarter of
    all training jobs are small models holding 3-16 GiB, as little as a miner.
  * ``dense-training``: hard negatives: util 93-99 % with small noise and dips only every
    40-100 samples, steady memory (large-batch compute-bound jobs look most like miners).
  * ``steady-training``: the hardest negatives: pauses only every 150-400 samples, util noise
    0.5-1.5 %, power noise 1-3 %, steady memory. Only the registered-job check clears these.
  * ``inference``: bursty serving, util 20-90 %.
Miners (label 1), all under an innocent process name so only the signature can catch them:
  * ``miner``: util 97-100 %, power flat at the cap (CV 0.3-2 %), fixed memory.
  * ``throttled-miner``: the same capped at 75-90 % util to stay below naive thresholds.
  * ``pausing-miner``: a miner that idles 1-2 samples every 30-60 to mimic training pauses.

`evaluate` calibrates the alert threshold on one set of normal traces (seed ``seed``) to the
target false-positive rate and measures detection and false-positive rates on fresh traces
(seed ``seed + 1``): the calibration never sees the test traces or any miner.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from trainguard.anomaly.config import AnomalyConfig
from trainguard.anomaly.domain import GpuMisuseDetector, GpuReading

__all__ = ["GpuEvalResult", "Trace", "evaluate", "generate_traces", "trace_score"]

_GIB = 1 << 30
_TOTAL = 80 * _GIB


@dataclass(frozen=True)
class Trace:
    kind: str
    label: int
    util: np.ndarray
    mem: np.ndarray
    power: np.ndarray


def _training(rng: np.random.Generator, n: int, dense: bool, steady: bool = False) -> Trace:
    base = rng.uniform(93, 99) if dense else rng.uniform(70, 97)
    sd = rng.uniform(0.5, 1.5) if steady else rng.uniform(0.8, 2.0) if dense else rng.uniform(2, 6)
    util = np.clip(base + rng.normal(0, sd, n), 0, 100)
    period = int(rng.integers(150, 400) if steady else rng.integers(40, 100) if dense
                 else rng.integers(8, 40))
    phase = int(rng.integers(0, period))
    for start in range(phase, n, period):
        width = int(rng.integers(1, 4))
        util[start:start + width] = rng.uniform(5, 45)
    # a quarter of the jobs are small models that hold little memory, like a miner does
    mem = np.full(n, (rng.uniform(3, 16) if rng.random() < 0.25 else rng.uniform(20, 75)) * _GIB)
    if not dense:
        steps = rng.random(n) < 0.08
        mem = mem + np.cumsum(steps * rng.normal(0, 2 * _GIB, n))
    mem = np.clip(mem + rng.normal(0, 0.05 * _GIB, n), 1 * _GIB, _TOTAL)
    tdp, idle = rng.uniform(300, 700), rng.uniform(60, 90)
    noise = rng.uniform(0.01, 0.03) if steady else rng.uniform(0.02, 0.06)
    power = idle + (tdp - idle) * util / 100 * (1 + rng.normal(0, noise, n))
    kind = "steady-training" if steady else "dense-training" if dense else "dl-training"
    return Trace(kind, 0, util, mem, power)


def _inference(rng: np.random.Generator, n: int) -> Trace:
    load = np.clip(np.cumsum(rng.normal(0, 6, n)) + rng.uniform(30, 70), 5, 95)
    util = np.clip(load + rng.normal(0, 8, n), 0, 100)
    mem = np.clip(rng.uniform(10, 40) * _GIB + np.cumsum(rng.normal(0, 0.3 * _GIB, n)), _GIB, _TOTAL)
    tdp, idle = rng.uniform(300, 700), rng.uniform(60, 90)
    power = idle + (tdp - idle) * util / 100 * (1 + rng.normal(0, 0.04, n))
    return Trace("inference", 0, util, mem, power)


def _miner(rng: np.random.Generator, n: int, throttled: bool, pausing: bool = False) -> Trace:
    level = rng.uniform(75, 90) if throttled else rng.uniform(97, 100)
    util = np.clip(level + rng.normal(0, rng.uniform(0.2, 1.0), n), 0, 100)
    if pausing:  # mimics training pauses: 1-2 idle samples every 30-60
        period = int(rng.integers(30, 60))
        for start in range(int(rng.integers(0, period)), n, period):
            util[start:start + int(rng.integers(1, 3))] = rng.uniform(5, 20)
    mem = np.full(n, rng.uniform(2, 12) * _GIB)
    cap = rng.uniform(250, 700) * (level / 100)
    power = cap * (util / level) * (1 + rng.normal(0, rng.uniform(0.003, 0.02), n))
    kind = "pausing-miner" if pausing else "throttled-miner" if throttled else "miner"
    return Trace(kind, 1, util, mem, power)


def generate_traces(n_each: int, *, seed: int, length: int = 240) -> list[Trace]:
    """`n_each` traces of every kind (four normal, three miner kinds), reproducible."""
    rng = np.random.default_rng(seed)
    traces = []
    for _ in range(n_each):
        traces.append(_training(rng, length, dense=False))
        traces.append(_training(rng, length, dense=True))
        traces.append(_training(rng, length, dense=True, steady=True))
        traces.append(_inference(rng, length))
        traces.append(_miner(rng, length, throttled=False, pausing=True))
        traces.append(_miner(rng, length, throttled=False))
        traces.append(_miner(rng, length, throttled=True))
    return traces


def trace_score(trace: Trace, config: AnomalyConfig | None = None) -> float:
    """The highest signature score the detector reaches over the trace (causally)."""
    det = GpuMisuseDetector(config)
    best = 0.0
    for i in range(len(trace.util)):
        det.observe(GpuReading(
            i * 10.0, 0, float(trace.util[i]), int(trace.mem[i]), _TOTAL,
            float(trace.power[i]), ((1000, "python3"),),
        ))
        best = max(best, det.signature_score(0))
    return best


@dataclass(frozen=True)
class GpuEvalResult:
    target_fpr: float
    threshold: float
    detection_rate: float
    false_positive_rate: float
    per_kind: dict[str, float]
    n_test: int

    def as_dict(self) -> dict[str, object]:
        return {
            "target_fpr": self.target_fpr, "threshold": round(self.threshold, 4),
            "detection_rate": round(self.detection_rate, 4),
            "false_positive_rate": round(self.false_positive_rate, 4),
            "flagged_rate_by_kind": {k: round(v, 4) for k, v in self.per_kind.items()},
            "test_traces": self.n_test,
        }


def evaluate(
    *, n_each: int = 100, target_fpr: float = 0.01, seed: int = 7,
    config: AnomalyConfig | None = None,
) -> GpuEvalResult:
    """Calibrate on normal traces (seed), test on fresh traces (seed + 1)."""
    calib = [trace_score(t, config) for t in generate_traces(n_each, seed=seed) if t.label == 0]
    threshold = float(np.quantile(calib, 1.0 - target_fpr)) + 1e-9
    test = generate_traces(n_each, seed=seed + 1)
    scores = [trace_score(t, config) for t in test]
    flagged = [s > threshold for s in scores]
    pos = [f for f, t in zip(flagged, test, strict=True) if t.label == 1]
    neg = [f for f, t in zip(flagged, test, strict=True) if t.label == 0]
    kinds = sorted({t.kind for t in test})
    per_kind = {k: float(np.mean([f for f, t in zip(flagged, test, strict=True) if t.kind == k])) for k in kinds}
    return GpuEvalResult(
        target_fpr, threshold, float(np.mean(pos)), float(np.mean(neg)), per_kind, len(test)
    )
