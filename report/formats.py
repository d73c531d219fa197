"""Report output formats: an Enum that maps to a formatter (pip-audit's habit)."""

from __future__ import annotations

import enum
from typing import Protocol

from trainguard.report.model import Report


class Formatter(Protocol):
    suffix: str

    def render(self, report: Report) -> str: ...


class ReportFormat(enum.StrEnum):
    HTML = "html"
    MD = "md"
    JSON = "json"
    OSCAL = "oscal"

    def formatter(self) -> Formatter:
        from trainguard.report import render_html, render_json, render_md, render_oscal

        table: dict[ReportFormat, Formatter] = {
            ReportFormat.HTML: render_html.HtmlFormatter(),
            ReportFormat.MD: render_md.MarkdownFormatter(),
            ReportFormat.JSON: render_json.JsonFormatter(),
            ReportFormat.OSCAL: render_oscal.OscalFormatter(),
        }
        return table[self]


def parse_formats(text: str) -> list[ReportFormat]:
    out: list[ReportFormat] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            out.append(ReportFormat(part))
        except ValueError as exc:
            from trainguard.core.errors import UsageError

            raise UsageError(
                f"unknown report format {part!r}",
                tip="choose from " + ", ".join(f.value for f in ReportFormat),
            ) from exc
    return list(dict.fromkeys(out))
