"""One self-contained HTML file: inline CSS and SVG, no scripts, no external assets."""

from __future__ import annotations

from html import escape

from trainguard.report import svg
from trainguard.report.model import Report

_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:1100px}
h1{font-size:1.6rem}h2{margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top;font-size:.9rem}
th{background:#f4f4f4}.satisfied{color:#1a7f37}.not-satisfied{color:#cf222e;font-weight:bold}
.manual{color:#9a6700}.not-applicable{color:#666}.fail,.error{color:#cf222e}.pass{color:#1a7f37}.warn{color:#9a6700}
.score{font-size:2.4rem;font-weight:bold}details{margin:.3rem 0}
"""


def _status(value: str) -> str:
    return f'<span class="{escape(value)}">{escape(value)}</span>'


class HtmlFormatter:
    suffix = "html"

    def render(self, report: Report) -> str:
        counts = report.counts()
        parts = [
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
            f"<title>trainguard audit report: {escape(report.cluster)}</title>",
            f"<style>{_CSS}</style></head><body>",
            f"<h1>trainguard audit report: cluster {escape(report.cluster)}</h1>",
            f"<p>Generated {escape(report.generated_at)}</p>",
            f"<p class='score' id='score'>{report.score:.1f} / 100</p>",
            f"<p>{counts['satisfied']} satisfied, {counts['not-satisfied']} not satisfied, "
            f"{counts['manual']} manual, {counts['not-applicable']} not applicable.</p>",
            "<h2>Nodes</h2><table><tr><th>node</th><th>source</th><th>audit log</th>"
            "<th>entries</th><th>last checkpoint</th><th>rolled back</th></tr>",
        ]
        for n in report.nodes:
            log = _status("pass") + " verified" if n.log_verified else _status("fail") + " " + escape(n.log_detail)
            parts.append(
                f"<tr><td>{escape(n.name)}</td><td>{escape(n.source)}</td><td>{log}</td>"
                f"<td>{n.entries}</td><td>{n.checkpoint_seq if n.checkpoint_seq is not None else '-'}</td>"
                f"<td>{_status('fail') if n.rolled_back else 'no'}</td></tr>"
            )
        parts.append("</table><h2>Controls</h2><table id='controls'><tr><th>control</th><th>title</th>"
                     "<th>status</th><th>severity</th><th>ATLAS</th><th>evidence</th></tr>")
        for a in report.controls:
            ev = "".join(
                f"<li>{_status(e.status.value)} [{escape(e.node)}] {escape(e.title)}: {escape(e.detail)}</li>"
                for e in a.evidence
            ) or "<li>no automated evidence: assessor review</li>"
            rem = f"<p><b>Remediation:</b> {escape(a.remediation)}</p>" if a.remediation else ""
            parts.append(
                f"<tr><td>{escape(a.control.id)}</td><td>{escape(a.control.title)}</td>"
                f"<td>{_status(a.status.value)}</td><td>{escape(a.control.severity)}</td>"
                f"<td>{escape(', '.join(a.control.atlas) or '-')}</td>"
                f"<td><details><summary>{len(a.evidence)} item(s)</summary><ul>{ev}</ul></details>{rem}</td></tr>"
            )
        parts.append("</table><h2>Incidents</h2>")
        parts.append(svg.incidents_over_time(report.incidents))
        if report.incidents:
            parts.append("<table><tr><th>time</th><th>node</th><th>kind</th><th>severity</th><th>handled by</th></tr>")
            for i in report.incidents:
                parts.append(
                    f"<tr><td>{escape(str(i.get('time')))}</td><td>{escape(str(i.get('node')))}</td>"
                    f"<td>{escape(str(i.get('kind')))}</td><td>{escape(str(i.get('severity')))}</td>"
                    f"<td>{escape(', '.join(i.get('hooks', [])) or '-')}</td></tr>"
                )
            parts.append("</table>")
        parts.append("<h2>Training runs</h2>")
        runs = report.training_runs
        parts.append("<ul>" + "".join(f"<li>{escape(str(t.get('summary', t)))}</li>" for t in runs) + "</ul>"
                     if runs else "<p>No training runs recorded.</p>")
        parts.append("<h2>Robustness</h2>")
        parts.append(svg.accuracy_vs_epsilon(report.robustness))
        parts.append("</body></html>")
        return "\n".join(parts) + "\n"
