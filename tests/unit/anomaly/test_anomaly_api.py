"""The public names of trainguard.anomaly, and what importing it costs."""

from __future__ import annotations

import subprocess
import sys

import trainguard.anomaly as anomaly

PUBLIC = {
    "AccessDetector", "AccessEvent", "AnomalyConfig", "DomainFinding", "ExfiltrationDetector",
    "GpuMisuseDetector", "GpuReading", "LearnedDetector", "NabResult", "RankFlag", "SpikeDetector",
    "StepFlags", "StreamBank", "StreamConfig", "StreamDetector", "StreamScore", "TrainingSpike",
    "UntrustedModel", "UpdateMonitor", "detect_rows", "evaluate_nab", "fit_detector",
    "load_detector", "load_nab", "save_detector", "score_corpus", "sweep_rows",
    "update_statistics", "window_features",
    # univariate detectors behind one interface, selection, references, node telemetry
    "AnomalyError", "UnivariateDetector", "CadOse", "CadOseConfig", "RelativeEntropy",
    "RelativeEntropyConfig", "KnnCad", "KnnCadConfig", "DetectorSpec", "Ensemble",
    "ProbationCalibrated", "make_detector", "selected_detector", "SelectionReport", "select",
    "load_references", "NodeScore", "NodeTelemetryConfig", "NodeTelemetryDetector",
    # the same detectors for many series at once
    "DetectorBank", "RelativeEntropyBank", "make_bank",
    # the range breakout beside the stream detector
    "SpatialRange", "SpatialRangeBank", "SpatialRangeConfig",
    # temporal-context novelty (the jump channel is the default's fourth member)
    "JumpNovelty", "JumpNoveltyConfig", "JumpNoveltyBank", "DwellNovelty", "DwellNoveltyConfig",
    # a rest period after a detection (one alert per event)
    "Rested", "RestedBank",
    # Numenta's anomaly likelihood on any detector's scores
    "Likelihood", "LikelihoodBank",
    # the selected default's shape in one update per sample (same scores as its Ensemble)
    "FusedStreamMax",
}


def test_public_names_are_pinned_and_resolve():
    assert set(anomaly.__all__) == PUBLIC
    for name in anomaly.__all__:
        assert getattr(anomaly, name) is not None


def test_importing_the_area_and_the_streaming_detector_stays_light():
    code = ("import sys, trainguard.anomaly, trainguard.anomaly.streaming, "
            "trainguard.anomaly.domain; "
            "print(*(m in sys.modules for m in ('numpy', 'sklearn', 'skops', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False", "False"]
