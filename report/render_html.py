"""One self-contained HTML file: inline CSS and SVG, no scripts, no external assets.

Every finding's evidence is in the page as plain text, never behind a collapsed toggle, so what
a reader sees on screen is what prints (the PDF format prints this page through Chromium). The
print stylesheet keeps a control's row together with its evidence where the page allows, repeats
table headers on each page and uses print-sized fonts. Incident rows carry the audit entry's
sequence number and an anchor (``incident-<node>-<seq>``) that evidence items link to.
"""

from __future__ import annotations

import re
from html import escape

from trainguard.report import svg
from trainguard.report.header import header
from trainguard.report.model import EvidenceItem, Report

_CSS = """
body{font-family:"DejaVu Sans",system-ui,sans-serif;margin:2rem;color:#222;max-width:1100px;line-height:1.35}
h1{font-size:1.6rem}h2{margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%;margin:.5rem 0}
td,th{border:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top;font-size:.9rem}
th{background:#f4f4f4}.satisfied{color:#1a7f37}.not-satisfied{color:#cf222e;font-weight:bold}
.manual{color:#9a6700}.not-applicable{color:#666}.fail,.error{color:#cf222e}.pass{color:#1a7f37}.warn{color:#9a6700}
.score{font-size:2.4rem;font-weight:bold;margin:.5rem 0}td>span{white-space:nowrap}
dl.about{display:grid;grid-template-columns:max-content 1fr;gap:.2rem 1rem;font-size:.9rem}
dl.about dt{font-weight:bold}dl.about dd{margin:0}
tr.evidence td{border-top:none;background:#fbfbfb}
ul.evidence{margin:.2rem 0 .2rem 1.2rem;padding:0}ul.evidence li{margin:.15rem 0;overflow-wrap:anywhere}
.seq{color:#555;white-space:nowrap}.remediation{margin:.3rem 0}
svg{max-width:100%;height:auto}
@page{size:A4;margin:14mm 12mm}
@media print{
  body{margin:0;max-width:none;font-size:10pt;-webkit-print-color-adjust:exact;print-color-adjust:exact}
  h1{font-size:16pt}h2{font-size:13pt;break-after:avoid;page-break-after:avoid}
  td,th{font-size:9pt;padding:2pt 4pt}
  thead{display:table-header-group}
  tbody.control,tr,li,figure,svg{break-inside:avoid;page-break-inside:avoid}
  tr.summary{break-after:avoid;page-break-after:avoid}
  details>*{display:block!important}
  a{color:inherit;text-decoration:none}
}
"""


def _status(value: str) -> str:
    return f'<span class="{escape(value)}">{escape(value)}</span>'


def incident_anchor(node: str, seq: object) -> str:
    """The HTML id of an incident row: its node and audit sequence number."""
    return f"incident-{re.sub(r'[^A-Za-z0-9_.-]', '_', node)}-{seq}"


def _seqs(e: EvidenceItem, incident_seqs: set[tuple[str, int]]) -> str:
    if not e.seqs:
        return ""
    refs = [
        f'<a href="#{incident_anchor(e.node, s)}">{s}</a>' if (e.node, s) in incident_seqs else str(s)
        for s in e.seqs
    ]
    return f' <span class="seq">(audit seq {", ".join(refs)})</span>'


class HtmlFormatter:
    suffix = "html"

    def render(self, report: Report) -> str:
        counts = report.counts()
        head = header(report)
        parts = [
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
            # Nothing to load and nothing to run, whoever opens or prints the file.
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
            "style-src 'unsafe-inline'; img-src data:\">",
            f"<title>trainguard audit report: {escape(report.cluster)}</title>",
            f"<style>{_CSS}</style></head><body>",
            f"<h1>trainguard audit report: cluster {escape(report.cluster)}</h1>",
            "<dl class='about' id='about'>",
            *(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in head.rows()),
            "</dl>",
            f"<p class='score' id='score'>{report.score:.1f} / 100</p>",
            f"<p>{counts['satisfied']} satisfied, {counts['not-satisfied']} not satisfied, "
            f"{counts['manual']} manual, {counts['not-applicable']} not applicable.</p>",
            "<h2>Nodes</h2><table><thead><tr><th>node</th><th>source</th><th>audit log</th>"
            "<th>entries</th><th>first entry</th><th>last entry</th><th>last checkpoint</th>"
            "<th>rolled back</th></tr></thead><tbody>",
        ]
        for n in report.nodes:
            log = _status("pass") + " verified" if n.log_verified else _status("fail") + " " + escape(n.log_detail)
            parts.append(
                f"<tr><td>{escape(n.name)}</td><td>{escape(n.source)}</td><td>{log}</td>"
                f"<td>{n.entries}</td><td>{escape(n.first_entry or '-')}</td>"
                f"<td>{escape(n.last_entry or '-')}</td>"
                f"<td>{n.checkpoint_seq if n.checkpoint_seq is not None else '-'}</td>"
                f"<td>{_status('fail') if n.rolled_back else 'no'}</td></tr>"
            )
        parts.append("</tbody></table>")
        parts += self._controls(report)
        parts += self._incidents(report)
        parts.append("<h2>Training runs</h2>")
        runs = report.training_runs
        parts.append("<ul>" + "".join(f"<li>{escape(str(t.get('summary', t)))}</li>" for t in runs) + "</ul>"
                     if runs else "<p>No training runs recorded.</p>")
        parts.append("<h2>Federated training</h2>")
        parts += self._federated(report) or ["<p>No federated training recorded.</p>"]
        parts.append("<h2>Robustness</h2>")
        parts.append(svg.accuracy_vs_epsilon(report.robustness))
        parts.append("</body></html>")
        return "\n".join(parts) + "\n"

    def _federated(self, report: Report) -> list[str]:
        parts = []
        for f in report.federated_runs:
            eps = "".join(f"<li>round {escape(str(r))}: epsilon {float(e):.3g}</li>"
                          for r, e in f["epsilon_per_round"])
            cps = "".join(f"<li>round {escape(str(c['round']))}: sha256 <code>{escape(str(c['sha256']))}</code></li>"
                          for c in f["checkpoints"])
            parts.append(f"<div class='federated'><p>{escape(f['summary'])}</p>"
                         + (f"<ul class='epsilon'>{eps}</ul>" if eps else "")
                         + (f"<ul class='checkpoints'>{cps}</ul>" if cps else "") + "</div>")
        return parts

    def _controls(self, report: Report) -> list[str]:
        incident_seqs = {(str(i.get("node")), int(i["seq"])) for i in report.incidents
                         if i.get("seq") is not None}
        parts = ["<h2>Controls</h2><table id='controls'><thead><tr><th>control</th><th>title</th>"
                 "<th>status</th><th>severity</th><th>ATLAS</th></tr></thead>"]
        for a in report.controls:
            ev = "".join(
                f"<li>{_status(e.status.value)} [{escape(e.node)}] "
                f"<span class='evidence-text'>{escape(e.title)}: {escape(e.detail)}</span>"
                f"{_seqs(e, incident_seqs)}</li>"
                for e in a.evidence
            ) or "<li>no automated evidence: assessor review</li>"
            rem = (f"<p class='remediation'><b>Remediation:</b> {escape(a.remediation)}</p>"
                   if a.remediation else "")
            parts.append(
                f"<tbody class='control' id='control-{escape(a.control.oscal_id)}'>"
                f"<tr class='summary'><td>{escape(a.control.id)}</td><td>{escape(a.control.title)}</td>"
                f"<td>{_status(a.status.value)}</td><td>{escape(a.control.severity)}</td>"
                f"<td>{escape(', '.join(a.control.atlas) or '-')}</td></tr>"
                f"<tr class='evidence'><td colspan='5'><b>Evidence ({len(a.evidence)}):</b>"
                f"<ul class='evidence'>{ev}</ul>{rem}</td></tr></tbody>"
            )
        parts.append("</table>")
        return parts

    def _incidents(self, report: Report) -> list[str]:
        parts = ["<h2>Incidents</h2>", svg.incidents_over_time(report.incidents)]
        if report.incidents:
            parts.append("<table id='incidents'><thead><tr><th>audit seq</th><th>time</th><th>node</th>"
                         "<th>kind</th><th>severity</th><th>handled by</th></tr></thead><tbody>")
            for i in report.incidents:
                node, seq = str(i.get("node")), i.get("seq")
                anchor = f" id='{escape(incident_anchor(node, seq))}'" if seq is not None else ""
                parts.append(
                    f"<tr{anchor}><td>{escape(str(seq if seq is not None else '-'))}</td>"
                    f"<td>{escape(str(i.get('time')))}</td><td>{escape(node)}</td>"
                    f"<td>{escape(str(i.get('kind')))}</td><td>{escape(str(i.get('severity')))}</td>"
                    f"<td>{escape(', '.join(i.get('hooks', [])) or '-')}</td></tr>"
                )
            parts.append("</tbody></table>")
        else:
            parts.append("<p>No incidents recorded.</p>")
        if report.synthetic_incidents:
            parts.append(f"<p>Not shown: {len(report.synthetic_incidents)} synthetic test "
                         "incident(s) from <code>trainguard hooks test</code> (see the header).</p>")
        return parts
