"""Running detectors over files: univariate CSVs, a NAB-layout folder, multivariate tables.

numpy is imported here (the NAB sums need it); the agent never imports this module.

Library side of `trainguard anomaly detect|eval|fit|score`; the CLI only parses flags and prints.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from trainguard.anomaly.config import selected_detector
from trainguard.anomaly.detectors import DetectorSpec, make_detector
from trainguard.anomaly.folds import FileCurve, totals
from trainguard.anomaly.nab import NabFile, load_nab
from trainguard.anomaly.reference import load_references
from trainguard.anomaly.selection import score_file
from trainguard.core.errors import UsageError

__all__ = [
    "DetectedRow",
    "detect_rows",
    "evaluate_nab",
    "load_nab_folder",
    "read_series",
    "read_table",
]

DEFAULT_PROBATION = 750  # calibration samples of a live stream (NAB's cap on its probation)


@dataclass(frozen=True)
class DetectedRow:
    timestamp: str
    value: float
    score: float
    alert: bool


def _seconds(text: str, row: int) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        stamp = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise UsageError(
            f"row {row}: timestamp {text!r} is neither ISO 8601 nor seconds",
            tip="NAB layout: timestamp,value with timestamps like 2014-04-10 07:15:00",
        ) from exc
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def read_series(fh: TextIO) -> Iterator[tuple[str, float, float]]:
    """(timestamp text, seconds, value) per row of a ``timestamp,value`` CSV, lazily."""
    reader = csv.DictReader(fh)
    if not reader.fieldnames or not {"timestamp", "value"} <= set(reader.fieldnames):
        raise UsageError(
            "the CSV needs a header with columns timestamp,value",
            tip="NAB layout: first line `timestamp,value`",
        )
    for i, rec in enumerate(reader, start=2):
        try:
            value = float(rec["value"])
        except (TypeError, ValueError) as exc:
            raise UsageError(f"row {i}: value {rec['value']!r} is not a number") from exc
        if not math.isfinite(value):
            raise UsageError(f"row {i}: value {rec['value']!r} is not finite")
        yield rec["timestamp"], _seconds(rec["timestamp"], i), value


def detect_rows(
    fh: TextIO, spec: DetectorSpec | None = None, *, threshold: float | None = None,
    probation: int = DEFAULT_PROBATION,
) -> Iterator[DetectedRow]:
    """Score each row from the rows before it (streaming: one pass, bounded memory).

    ``spec`` defaults to the frozen selection (`config.selected_detector`); a row alerts when
    its score reaches ``threshold`` (default: the spec's).
    """
    spec = spec or selected_detector()
    limit = spec.threshold if threshold is None else threshold
    det = make_detector(spec, probation)
    for stamp, t, value in read_series(fh):
        score = det.score(t, value)
        yield DetectedRow(stamp, value, score, score >= limit)


def load_nab_folder(root: Path) -> list[NabFile]:
    """`load_nab` with the folder checked first; problems are usage errors with a tip."""
    if not (root / "labels" / "combined_windows.json").is_file() or not (root / "data").is_dir():
        raise UsageError(
            f"{root} is not a NAB-layout folder",
            tip="expected data/<category>/*.csv and labels/combined_windows.json",
        )
    try:
        return load_nab(root)
    except (ValueError, KeyError) as exc:
        raise UsageError(f"cannot read the NAB folder {root}: {exc}") from exc


def evaluate_nab(
    root: Path, spec: DetectorSpec | None = None, *, references: bool = True,
) -> dict[str, Any]:
    """NAB standard score and event metrics per category and pooled, for `spec` and, when the
    folder has NAB's ``results/`` and ``config/thresholds.json``, for the published detectors.

    Per group: ``nab_score`` with NAB's threshold optimised over the group (as NAB reports it),
    ``nab_score_at_threshold`` and the event metrics (windows detected, false-positive rows,
    precision, recall, F1; probation excluded) at the detector's own threshold. The published
    detectors are scored at their standard-profile thresholds.
    """
    spec = spec or selected_detector()
    files = load_nab_folder(root)
    cache: dict[tuple[str, str], Any] = {}
    curves = [FileCurve(f, score_file(spec, f, cache)) for f in files]
    out: dict[str, Any] = {
        "detector": spec.label or spec.key, "threshold": spec.threshold,
        **_groups(files, curves, spec.threshold, optimise=True),
    }
    if references:
        refs = {}
        for name, (threshold, scores) in load_references(root, files).items():
            rc = [FileCurve(f, scores[f.name]) for f in files]
            refs[name] = {"threshold": threshold, **_groups(files, rc, threshold, optimise=False)}
        out["references"] = refs
    return out


def _groups(
    files: Sequence[NabFile], curves: Sequence[FileCurve], threshold: float, *, optimise: bool,
) -> dict[str, Any]:
    cats = sorted({f.category for f in files})
    groups = {cat: [c for f, c in zip(files, curves, strict=True) if f.category == cat]
              for cat in cats}
    result = {cat: _group(g, threshold, optimise) for cat, g in groups.items()}
    return {"categories": result, "total": _group(list(curves), threshold, optimise)}


def _group(curves: Sequence[FileCurve], threshold: float, optimise: bool) -> dict[str, Any]:
    at = totals(curves, np.array([threshold]))[0]
    out: dict[str, Any] = at.as_dict()
    out["nab_score_at_threshold"] = out.pop("nab")
    if optimise and at.windows:
        grid = np.unique(np.concatenate([[np.inf], *(c.thresholds() for c in curves)]))
        tot = totals(curves, grid)
        best = max(range(len(tot)), key=lambda i: (tot[i].nab or -1e9, grid[i]))
        out["nab_score"], out["nab_threshold"] = round(tot[best].nab or 0.0, 2), float(grid[best])
    else:
        out["nab_score"] = out["nab_score_at_threshold"]
    return out


def read_table(path: Path, columns: Sequence[str] | None = None) -> tuple[list[str], Any]:
    """A numeric CSV table as (column names, 2-D numpy array); `timestamp` is skipped."""
    import numpy as np

    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header:
            raise UsageError(f"{path} is empty", tip="the first line must name the columns")
        wanted = list(columns) if columns else [h for h in header if h != "timestamp"]
        missing = [c for c in wanted if c not in header]
        if missing:
            raise UsageError(f"{path} has no column(s) {', '.join(missing)}",
                             tip=f"columns present: {', '.join(header)}")
        idx = [header.index(c) for c in wanted]
        rows = []
        for n, rec in enumerate(reader, start=2):
            try:
                rows.append([float(rec[i]) for i in idx])
            except (ValueError, IndexError) as exc:
                raise UsageError(f"{path} row {n}: not a number in {wanted}") from exc
    if not rows:
        raise UsageError(f"{path} has no data rows")
    data = np.asarray(rows, dtype=np.float64)
    if not np.isfinite(data).all():
        raise UsageError(f"{path} contains NaN or infinite values")
    return wanted, data
