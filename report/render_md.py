"""Markdown report: the same content as the HTML report, for tickets and repositories."""

from __future__ import annotations

from trainguard.report.header import header
from trainguard.report.model import EvidenceItem, Report


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _seqs(e: EvidenceItem) -> str:
    return f" (audit seq {', '.join(map(str, e.seqs))})" if e.seqs else ""


class MarkdownFormatter:
    suffix = "md"

    def render(self, report: Report) -> str:
        counts = report.counts()
        out = [
            f"# trainguard audit report: cluster {report.cluster}",
            "",
            "| field | value |",
            "|---|---|",
            *(f"| {label} | {_cell(text)} |" for label, text in header(report).rows()),
            "",
            f"Score **{report.score:.1f} / 100** "
            f"({counts['satisfied']} satisfied, {counts['not-satisfied']} not satisfied, "
            f"{counts['manual']} manual, {counts['not-applicable']} not applicable).",
            "",
            "## Nodes",
            "",
            "| node | source | audit log | entries | first entry | last entry | last checkpoint | rolled back |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for n in report.nodes:
            log = "verified" if n.log_verified else f"**FAILED**: {n.log_detail}"
            out.append(
                f"| {_cell(n.name)} | {_cell(n.source)} | {_cell(log)} | {n.entries} | "
                f"{n.first_entry or '-'} | {n.last_entry or '-'} | "
                f"{n.checkpoint_seq if n.checkpoint_seq is not None else '-'} | "
                f"{'**yes**' if n.rolled_back else 'no'} |"
            )
        out += ["", "## Controls", "", "| control | title | status | severity | ATLAS |", "|---|---|---|---|---|"]
        for a in report.controls:
            out.append(
                f"| {a.control.id} | {_cell(a.control.title)} | {a.status.value} | "
                f"{a.control.severity} | {', '.join(a.control.atlas) or '-'} |"
            )
        for a in report.controls:
            out += ["", f"### {a.control.id} {a.control.title}: {a.status.value}", ""]
            if not a.evidence:
                out.append("No automated evidence; an assessor must review this control.")
            for e in a.evidence:
                out.append(f"- **{e.status.value}** [{_cell(e.node)}] {_cell(e.title)}: {_cell(e.detail)}"
                           f"{_seqs(e)}")
            if a.remediation:
                out += ["", f"Remediation: {a.remediation}"]
        out += ["", "## Incidents", ""]
        if not report.incidents:
            out.append("No incidents recorded.")
        else:
            out += ["| audit seq | time | node | kind | severity | handled by |", "|---|---|---|---|---|---|"]
            for i in report.incidents:
                out.append(
                    f"| {_cell(i.get('seq', '-'))} | {_cell(i.get('time'))} | {_cell(i.get('node'))} | "
                    f"{_cell(i.get('kind'))} | "
                    f"{_cell(i.get('severity'))} | {_cell(', '.join(i.get('hooks', [])) or '-')} |"
                )
        if report.synthetic_incidents:
            out += ["", f"Not shown: {len(report.synthetic_incidents)} synthetic test incident(s) "
                        "from `trainguard hooks test` (see the header)."]
        out += ["", "## Training runs", ""]
        if not report.training_runs:
            out.append("No training runs recorded.")
        for t in report.training_runs:
            out.append(f"- {_cell(t.get('summary', t))}")
        out += ["", "## Federated training", ""]
        if not report.federated_runs:
            out.append("No federated training recorded.")
        for f in report.federated_runs:
            out.append(f"- {_cell(f['summary'])}")
            if f["epsilon_per_round"]:
                out.append("  - epsilon per round: " + ", ".join(
                    f"{r}: {float(e):.3g}" for r, e in f["epsilon_per_round"]))
            for c in f["checkpoints"]:
                out.append(f"  - round {_cell(c['round'])} global checkpoint sha256 `{_cell(c['sha256'])}`")
        out += ["", "## Robustness", ""]
        if not report.robustness:
            out.append("No robustness evaluation recorded.")
        else:
            out += ["| attack | epsilon | accuracy |", "|---|---|---|"]
            for r in report.robustness:
                out.append(f"| {_cell(r.get('attack'))} | {r.get('eps')} | {float(r.get('accuracy', 0)):.1%} |")
        return "\n".join(out) + "\n"
