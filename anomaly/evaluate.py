"""Running detectors over files: univariate CSVs, a NAB-layout folder, multivariate tables.

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

from trainguard.anomaly.config import StreamConfig
from trainguard.anomaly.nab import load_nab, score_corpus, sweep_rows
from trainguard.anomaly.streaming import StreamDetector
from trainguard.core.errors import UsageError

__all__ = [
    "DetectedRow",
    "detect_rows",
    "evaluate_nab",
    "read_series",
    "read_table",
]


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


def detect_rows(fh: TextIO, config: StreamConfig | None = None) -> Iterator[DetectedRow]:
    """Score each row from the rows before it (streaming: one pass, constant memory)."""
    det = StreamDetector(config)
    for stamp, t, value in read_series(fh):
        res = det.update(t, value)
        yield DetectedRow(stamp, value, res.score, res.alert)


def evaluate_nab(root: Path, config: StreamConfig | None = None) -> dict[str, Any]:
    """NAB standard score and event metrics per category and in total, default detector.

    Per group: ``nab_score`` with NAB's corpus-wide threshold optimisation (as NAB reports it),
    ``nab_score_at_default`` and the event metrics at the detector's own default threshold.
    """
    cfg = config or StreamConfig()
    if not (root / "labels" / "combined_windows.json").is_file() or not (root / "data").is_dir():
        raise UsageError(
            f"{root} is not a NAB-layout folder",
            tip="expected data/<category>/*.csv and labels/combined_windows.json",
        )
    try:
        files = load_nab(root)
    except (ValueError, KeyError) as exc:
        raise UsageError(f"cannot read the NAB folder {root}: {exc}") from exc
    swept = {}
    for f in files:
        det = StreamDetector(cfg)
        scores = [
            det.update(t.replace(tzinfo=UTC).timestamp(), v).score
            for t, v in zip(f.timestamps, f.values, strict=True)
        ]
        swept[f.name] = sweep_rows(len(scores), scores, f.windows, f.name)
    groups: dict[str, dict[str, Any]] = {}
    for cat in sorted({n.split("/", 1)[0] for n in swept}):
        groups[cat] = _group({k: v for k, v in swept.items() if k.startswith(cat + "/")}, cfg)
    return {"threshold": cfg.threshold, "categories": groups, "total": _group(swept, cfg)}


def _group(swept: dict[str, Any], cfg: StreamConfig) -> dict[str, Any]:
    best = score_corpus(swept)
    fixed = score_corpus(swept, threshold=cfg.threshold)
    out: dict[str, Any] = dict(fixed.as_dict())
    out["nab_score"] = round(best.score, 2) if best.windows else None
    out["nab_threshold"] = best.threshold if best.windows else None
    out["nab_score_at_default"] = round(fixed.score, 2) if fixed.windows else None
    out.pop("threshold", None)
    out.pop("raw", None)
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
