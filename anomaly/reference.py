"""Published NAB detectors' scores, read from a NAB checkout's ``results/`` folder.

NAB stores each detector's output as ``results/<detector>/<category>/<detector>_<file>.csv``
with an ``anomaly_score`` column, and its tuned thresholds per detector and profile in
``config/thresholds.json``; an alert is ``anomaly_score >= thresholds[detector]["standard"]
["threshold"]``. These are scored here by the same rules as our detectors, on the same rows.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from trainguard.anomaly.nab import NabFile

__all__ = ["load_references"]


def load_references(
    root: Path, files: Sequence[NabFile], detectors: Sequence[str] | None = None,
) -> dict[str, tuple[float, dict[str, np.ndarray]]]:
    """{detector: (standard-profile threshold, {file name: scores})} for every detector (default:
    each folder under ``results/``) whose results cover all `files` with one row per data row
    and that has a threshold; others are left out."""
    results = root / "results"
    thresholds_file = root / "config" / "thresholds.json"
    if not results.is_dir() or not thresholds_file.is_file():
        return {}
    thresholds = json.loads(thresholds_file.read_text())
    if detectors is None:
        detectors = sorted(p.name for p in results.iterdir() if p.is_dir())
    out: dict[str, tuple[float, dict[str, np.ndarray]]] = {}
    for det in detectors:
        try:
            threshold = float(thresholds[det]["standard"]["threshold"])
        except (KeyError, TypeError, ValueError):
            continue
        scores: dict[str, np.ndarray] = {}
        for f in files:
            cat, base = f.name.split("/", 1)
            path = results / det / cat / f"{det}_{base}"
            if not path.is_file():
                break
            with path.open(newline="") as fh:
                col = [float(r["anomaly_score"]) for r in csv.DictReader(fh)]
            if len(col) != len(f.values):
                break
            scores[f.name] = np.array(col)
        else:
            out[det] = (threshold, scores)
    return out
