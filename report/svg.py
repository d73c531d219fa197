"""Small inline SVG charts (no external assets, no plotting dependency)."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from html import escape
from typing import Any

_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2"]


def _frame(width: int, height: int, title: str, body: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}"><title>{escape(title)}</title>'
        f'<rect width="{width}" height="{height}" fill="#fff"/>' + "".join(body) + "</svg>"
    )


def incidents_over_time(incidents: list[dict[str, Any]], width: int = 640, height: int = 220) -> str:
    """Bar chart: incidents per time bucket (minutes or hours, whichever gives <= 24 bars)."""
    times = []
    for inc in incidents:
        try:
            times.append(dt.datetime.fromisoformat(str(inc.get("time"))))
        except ValueError:
            continue
    if not times:
        return _frame(width, 60, "Incidents over time", [
            '<text x="10" y="35" font-family="sans-serif" font-size="13">No incidents recorded.</text>'
        ])
    start, end = min(times), max(times)
    span = max((end - start).total_seconds(), 1.0)
    bucket = next(s for s in (60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400) if span / s <= 24)
    counts = Counter(int((t - start).total_seconds() // bucket) for t in times)
    n = max(counts) + 1
    left, bottom, top = 40, height - 30, 20
    bar_w = (width - left - 10) / n
    peak = max(counts.values())
    body = [f'<line x1="{left}" y1="{bottom}" x2="{width - 10}" y2="{bottom}" stroke="#333"/>']
    for i in range(n):
        c = counts.get(i, 0)
        h = (bottom - top) * c / peak
        x = left + i * bar_w
        body.append(
            f'<rect x="{x + 1:.1f}" y="{bottom - h:.1f}" width="{max(bar_w - 2, 1):.1f}" '
            f'height="{h:.1f}" fill="#d62728"><title>{c} incident(s)</title></rect>'
        )
    body.append(f'<text x="5" y="{top + 5}" font-family="sans-serif" font-size="11">{peak}</text>')
    label = f"{start:%Y-%m-%d %H:%M} UTC, {bucket // 60} min per bar"
    body.append(f'<text x="{left}" y="{height - 8}" font-family="sans-serif" font-size="11">{escape(label)}</text>')
    return _frame(width, height, "Incidents over time", body)


def accuracy_vs_epsilon(points: list[dict[str, Any]], width: int = 640, height: int = 260) -> str:
    """Line chart: robust accuracy (0-1) against epsilon, one line per attack."""
    series: dict[str, list[tuple[float, float]]] = {}
    for p in points:
        try:
            series.setdefault(str(p["attack"]), []).append((float(p["eps"]), float(p["accuracy"])))
        except (KeyError, TypeError, ValueError):
            continue
    if not series:
        return _frame(width, 60, "Robust accuracy against epsilon", [
            '<text x="10" y="35" font-family="sans-serif" font-size="13">No robustness evaluation recorded.</text>'
        ])
    max_eps = max(e for pts in series.values() for e, _ in pts) or 1.0
    left, right, top, bottom = 50, width - 120, 15, height - 35

    def xy(eps: float, acc: float) -> tuple[float, float]:
        return left + (right - left) * eps / max_eps, bottom - (bottom - top) * acc

    body = [
        f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#333"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#333"/>',
    ]
    for acc in (0.0, 0.5, 1.0):
        _, y = xy(0, acc)
        body.append(f'<text x="8" y="{y + 4:.1f}" font-family="sans-serif" font-size="11">{acc:.0%}</text>')
    body.append(
        f'<text x="{(left + right) / 2:.0f}" y="{height - 8}" font-family="sans-serif" '
        f'font-size="11">epsilon (0 to {max_eps:g})</text>'
    )
    for i, (attack, pts) in enumerate(sorted(series.items())):
        colour = _PALETTE[i % len(_PALETTE)]
        pts = sorted(pts)
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(e, a) for e, a in pts))
        body.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for e, a in pts:
            x, y = xy(e, a)
            body.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}">'
                f"<title>{escape(attack)} eps={e:g}: {a:.1%}</title></circle>"
            )
        body.append(
            f'<text x="{right + 10}" y="{top + 15 + 16 * i}" fill="{colour}" '
            f'font-family="sans-serif" font-size="12">{escape(attack)}</text>'
        )
    return _frame(width, height, "Robust accuracy against epsilon", body)
