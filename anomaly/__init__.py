"""trainguard.anomaly: detectors for node, access and training telemetry.

Public names are loaded on first use (PEP 562), so `import trainguard.anomaly.streaming` in the
agent does not pull in numpy-heavy or scikit-learn-backed modules it does not need.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "AnomalyConfig": "config",
    "StreamConfig": "config",
    "StreamDetector": "streaming",
    "StreamBank": "streaming",
    "StreamScore": "streaming",
    "LearnedDetector": "learned",
    "UntrustedModel": "learned",
    "fit_detector": "learned",
    "load_detector": "learned",
    "save_detector": "learned",
    "window_features": "learned",
    "AccessDetector": "domain",
    "AccessEvent": "domain",
    "DomainFinding": "domain",
    "ExfiltrationDetector": "domain",
    "GpuMisuseDetector": "domain",
    "GpuReading": "domain",
    "RankFlag": "training",
    "StepFlags": "training",
    "SpikeDetector": "training",
    "TrainingSpike": "training",
    "UpdateMonitor": "training",
    "update_statistics": "training",
    "NabResult": "nab",
    "score_corpus": "nab",
    "sweep_rows": "nab",
    "load_nab": "nab",
    "evaluate_nab": "evaluate",
    "detect_rows": "evaluate",
    "AnomalyError": "interface",
    "UnivariateDetector": "interface",
    "DetectorBank": "interface",
    "CadOse": "cad_ose",
    "CadOseConfig": "cad_ose",
    "RelativeEntropy": "relative_entropy",
    "RelativeEntropyConfig": "relative_entropy",
    "RelativeEntropyBank": "relative_entropy",
    "SpatialRange": "spatial",
    "SpatialRangeBank": "spatial",
    "SpatialRangeConfig": "spatial",
    "JumpNovelty": "transition",
    "JumpNoveltyConfig": "transition",
    "JumpNoveltyBank": "transition",
    "DwellNovelty": "transition",
    "DwellNoveltyConfig": "transition",
    "KnnCad": "knncad",
    "KnnCadConfig": "knncad",
    "DetectorSpec": "detectors",
    "Ensemble": "detectors",
    "FusedStreamMax": "fused",
    "ProbationCalibrated": "detectors",
    "Rested": "detectors",
    "RestedBank": "detectors",
    "Likelihood": "likelihood",
    "LikelihoodBank": "likelihood",
    "make_detector": "detectors",
    "make_bank": "detectors",
    "selected_detector": "config",
    "SelectionReport": "selection",
    "select": "selection",
    "load_references": "reference",
    "NodeScore": "node",
    "NodeTelemetryConfig": "node",
    "NodeTelemetryDetector": "node",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'trainguard.anomaly' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"trainguard.anomaly.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
