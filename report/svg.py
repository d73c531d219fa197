"""Small inline SVG charts (no external assets, no plotting dependency).

Each chart has axis lines, tick labels (class ``tick``), axis titles (class ``axis-title``) and
a legend with one entry per series (class ``legend-entry``), so it reads on paper without
hovering. Text is escaped; sizes are fixed so the page prints the same everywhere.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from html import escape
from typing import Any

_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2"]
_SEVERITY_COLOUR = {"low": "#6baed6", "medium": "#fd8d3c", "high": "#e6550d", "critical": "#a50f15"}
_FONT = 'font-family="DejaVu Sans,sans-serif"'
_BUCKETS = (60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400)


def _frame(width: int, height: int, title: str, body: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}"><title>{escape(title)}</title>'
        f'<rect width="{width}" height="{height}" fill="#fff"/>' + "".join(body) + "</svg>"
    )


def _text(x: float, y: float, text: str, cls: str, *, anchor: str = "start", size: int = 11,
          fill: str = "#222", rotate: bool = False) -> str:
    turn = f' transform="rotate(-90 {x:.1f} {y:.1f})"' if rotate else ""
    return (f'<text class="{cls}" x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" {_FONT} '
            f'font-size="{size}" fill="{fill}"{turn}>{escape(text)}</text>')


def _legend(entries: list[tuple[str, str]], x: float, y: float, *, line: bool) -> list[str]:
    """One row per series: a swatch (a line or a box) in its colour and its name."""
    out = []
    for i, (label, colour) in enumerate(entries):
        yy = y + 16 * i
        swatch = (f'<line x1="{x:.1f}" y1="{yy - 4:.1f}" x2="{x + 18:.1f}" y2="{yy - 4:.1f}" '
                  f'stroke="{colour}" stroke-width="3"/>' if line else
                  f'<rect x="{x + 4:.1f}" y="{yy - 10:.1f}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<g class="legend-entry">{swatch}'
                   + _text(x + 24, yy, label, "legend-label", size=12) + "</g>")
    return out


def _no_data(title: str, message: str, width: int) -> str:
    return _frame(width, 60, title, [_text(10, 35, message, "empty", size=13)])


def _int_ticks(peak: int) -> list[int]:
    step = max(1, -(-peak // 5))
    return list(range(0, peak + step, step))


def incidents_over_time(incidents: list[dict[str, Any]], width: int = 640, height: int = 260) -> str:
    """Stacked bars: incidents per time bucket (minutes to weeks, whichever gives <= 24 bars),
    one colour per severity."""
    rows: list[tuple[dt.datetime, str]] = []
    for inc in incidents:
        try:
            rows.append((dt.datetime.fromisoformat(str(inc.get("time"))), str(inc.get("severity"))))
        except ValueError:
            continue
    title = "Incidents over time"
    if not rows:
        return _no_data(title, "No incidents recorded.", width)
    start, end = min(t for t, _ in rows), max(t for t, _ in rows)
    span = max((end - start).total_seconds(), 1.0)
    bucket = next((s for s in _BUCKETS if span / s <= 24), _BUCKETS[-1])
    severities = [s for s in _SEVERITY_COLOUR if any(sev == s for _, sev in rows)]
    severities += sorted({sev for _, sev in rows} - set(severities))
    counts = Counter((int((t - start).total_seconds() // bucket), sev) for t, sev in rows)
    n = max(i for i, _ in counts) + 1
    per_bar: Counter[int] = Counter()
    for (i, _), c in counts.items():
        per_bar[i] += c
    peak = max(per_bar.values())
    ticks = _int_ticks(peak)
    top_value = ticks[-1]
    left, right, top = 55, width - 15, 15
    bottom = height - 60 - 16 * len(severities)
    bar_w = (right - left) / n

    def y_of(v: float) -> float:
        return bottom - (bottom - top) * v / top_value

    body = [f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#333"/>',
            f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#333"/>']
    for v in ticks:
        y = y_of(v)
        body.append(f'<line x1="{left - 4}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#eee"/>')
        body.append(_text(left - 7, y + 4, str(v), "tick", anchor="end"))
    for i in range(n):
        x = left + i * bar_w
        stacked = 0
        for sev in severities:
            c = counts.get((i, sev), 0)
            if not c:
                continue
            y0, y1 = y_of(stacked), y_of(stacked + c)
            stacked += c
            body.append(
                f'<rect x="{x + 1:.1f}" y="{y1:.1f}" width="{max(bar_w - 2, 1):.1f}" '
                f'height="{y0 - y1:.1f}" fill="{_SEVERITY_COLOUR.get(sev, "#777")}">'
                f"<title>{c} {escape(sev)} incident(s)</title></rect>"
            )
    label_every = max(1, -(-n // 6))
    fmt = "%H:%M" if bucket < 86400 and span < 86400 else "%m-%d %H:%M"
    for i in range(0, n, label_every):
        x = left + i * bar_w
        when = start + dt.timedelta(seconds=i * bucket)
        body.append(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}" stroke="#333"/>')
        body.append(_text(x, bottom + 16, when.strftime(fmt), "tick", anchor="middle"))
    per = f"{bucket // 60} min" if bucket < 3600 else f"{bucket // 3600} h"
    body.append(_text((left + right) / 2, bottom + 34, f"time (UTC, from {start:%Y-%m-%d %H:%M}; "
                      f"{per} per bar)", "axis-title", anchor="middle"))
    body.append(_text(14, (top + bottom) / 2, "incidents", "axis-title", anchor="middle", rotate=True))
    body += _legend([(f"severity {s}", _SEVERITY_COLOUR.get(s, "#777")) for s in severities],
                    left, bottom + 58, line=False)
    return _frame(width, height, title, body)


def accuracy_vs_epsilon(points: list[dict[str, Any]], width: int = 640, height: int = 280) -> str:
    """Line chart: robust accuracy (0-100%) against epsilon, one line per attack."""
    series: dict[str, list[tuple[float, float]]] = {}
    for p in points:
        try:
            series.setdefault(str(p["attack"]), []).append((float(p["eps"]), float(p["accuracy"])))
        except (KeyError, TypeError, ValueError):
            continue
    title = "Robust accuracy against epsilon"
    if not series:
        return _no_data(title, "No robustness evaluation recorded.", width)
    max_eps = max(e for pts in series.values() for e, _ in pts) or 1.0
    left, right, top = 60, width - 20, 15
    bottom = height - 60 - 16 * len(series)

    def xy(eps: float, acc: float) -> tuple[float, float]:
        return left + (right - left) * eps / max_eps, bottom - (bottom - top) * acc

    body = [
        f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#333"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#333"/>',
    ]
    for acc in (0.0, 0.25, 0.5, 0.75, 1.0):
        _, y = xy(0, acc)
        body.append(f'<line x1="{left - 4}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#eee"/>')
        body.append(_text(left - 7, y + 4, f"{acc:.0%}", "tick", anchor="end"))
    eps_values = sorted({e for pts in series.values() for e, _ in pts})
    if len(eps_values) > 8:  # evenly spaced ticks instead of crowded labels
        eps_values = [max_eps * k / 5 for k in range(6)]
    for e in eps_values:
        x, _ = xy(e, 0)
        body.append(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}" stroke="#333"/>')
        body.append(_text(x, bottom + 16, f"{e:g}", "tick", anchor="middle"))
    body.append(_text((left + right) / 2, bottom + 34, "epsilon (perturbation budget)", "axis-title",
                      anchor="middle"))
    body.append(_text(14, (top + bottom) / 2, "accuracy", "axis-title", anchor="middle", rotate=True))
    legend: list[tuple[str, str]] = []
    for i, (attack, pts) in enumerate(sorted(series.items())):
        colour = _PALETTE[i % len(_PALETTE)]
        legend.append((attack, colour))
        pts = sorted(pts)
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(e, a) for e, a in pts))
        body.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for e, a in pts:
            x, y = xy(e, a)
            body.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}">'
                f"<title>{escape(attack)} eps={e:g}: {a:.1%}</title></circle>"
            )
    body += _legend(legend, left, bottom + 58, line=True)
    return _frame(width, height, title, body)
