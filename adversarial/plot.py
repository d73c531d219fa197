"""A hand-written SVG line chart of robust accuracy against epsilon (no plotting library)."""

from __future__ import annotations

from xml.sax.saxutils import escape

from trainguard.adversarial.evaluate import RobustnessReport

__all__ = ["render_svg"]

_COLORS = {
    "fgsm": "#1f77b4",
    "pgd": "#d62728",
    "apgd": "#2ca02c",
    "square": "#ff7f0e",
    "auto": "#9467bd",
    "worst case": "#000000",
}
_W, _H = 560, 360
_LEFT, _RIGHT, _TOP, _BOTTOM = 60, 150, 30, 50


def _series(report: RobustnessReport) -> dict[str, list[tuple[float, float]]]:
    series: dict[str, list[tuple[float, float]]] = {}
    for point in report.robust:
        if point.attack.startswith("auto/"):
            continue  # the sequence's intermediate figures: the table shows them, the plot not
        series.setdefault(point.attack, [(0.0, report.clean_accuracy)]).append(
            (point.eps, point.accuracy)
        )
    worst = [(0.0, report.clean_accuracy)]
    worst += [(p["eps"], p["accuracy"]) for p in report.worst_case["per_eps"]]
    series["worst case"] = worst
    return series


def render_svg(report: RobustnessReport, title: str = "Robust accuracy vs epsilon") -> str:
    """An SVG document: one line per attack plus the per-sample worst case, clean at eps 0."""
    series = _series(report)
    max_eps = max((e for pts in series.values() for e, _ in pts), default=1.0) or 1.0
    pw, ph = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def sx(eps: float) -> float:
        return _LEFT + pw * eps / max_eps

    def sy(acc: float) -> float:
        return _TOP + ph * (1 - acc)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
        f'viewBox="0 0 {_W} {_H}" font-family="sans-serif" font-size="11">',
        f'<rect width="{_W}" height="{_H}" fill="white"/>',
        f'<text x="{_LEFT}" y="18" font-size="13">{escape(title)} '
        f"({escape(report.norm)}, n={report.samples})</text>",
    ]
    for i in range(6):
        acc = i / 5
        y = sy(acc)
        out.append(
            f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{_LEFT + pw}" y2="{y:.1f}" stroke="#ddd"/>'
        )
        out.append(f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{acc:.1f}</text>')
    ticks = sorted({e for pts in series.values() for e, _ in pts})
    for eps in ticks:
        x = sx(eps)
        out.append(
            f'<line x1="{x:.1f}" y1="{_TOP + ph}" x2="{x:.1f}" y2="{_TOP + ph + 4}" stroke="#333"/>'
        )
        out.append(f'<text x="{x:.1f}" y="{_TOP + ph + 16}" text-anchor="middle">{eps:g}</text>')
    out.append(
        f'<rect x="{_LEFT}" y="{_TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>'
    )
    out.append(f'<text x="{_LEFT + pw / 2}" y="{_H - 10}" text-anchor="middle">epsilon</text>')
    out.append(
        f'<text x="15" y="{_TOP + ph / 2}" transform="rotate(-90 15 {_TOP + ph / 2})" '
        'text-anchor="middle">accuracy</text>'
    )
    for i, (name, pts) in enumerate(series.items()):
        color = _COLORS.get(name, "#7f7f7f")
        dash = ' stroke-dasharray="5,3"' if name == "worst case" else ""
        path = " ".join(f"{sx(e):.1f},{sy(a):.1f}" for e, a in sorted(pts))
        out.append(
            f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}/>'
        )
        for e, a in pts:
            out.append(f'<circle cx="{sx(e):.1f}" cy="{sy(a):.1f}" r="2.5" fill="{color}"/>')
        ly = _TOP + 10 + 18 * i
        out.append(
            f'<line x1="{_LEFT + pw + 15}" y1="{ly}" x2="{_LEFT + pw + 35}" y2="{ly}" '
            f'stroke="{color}" stroke-width="2"{dash}/>'
        )
        out.append(f'<text x="{_LEFT + pw + 40}" y="{ly + 4}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
