"""Report output formats: an Enum that maps to a formatter (pip-audit's habit).

Text formats (HTML, Markdown, JSON, OSCAL) implement `Formatter.render`; PDF, the HTML printed
by headless Chromium, implements `BinaryFormatter.render_bytes`. `ReportFormat.outputs` gives
every file a format writes (OSCAL writes its assessment plan next to the results).
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Protocol

from trainguard.report.model import Report

BASENAME = "trainguard-report"


class Formatter(Protocol):
    suffix: str

    def render(self, report: Report) -> str: ...


class BinaryFormatter(Protocol):
    suffix: str

    def render_bytes(self, report: Report) -> bytes: ...


class ReportFormat(enum.StrEnum):
    HTML = "html"
    MD = "md"
    JSON = "json"
    OSCAL = "oscal"
    PDF = "pdf"

    def formatter(self, *, chromium: Path | None = None) -> Formatter | BinaryFormatter:
        from trainguard.report import render_pdf

        if self is ReportFormat.PDF:
            return render_pdf.PdfFormatter(chromium)
        return self._text_formatter()

    def _text_formatter(self) -> Formatter:
        from trainguard.report import render_html, render_json, render_md, render_oscal

        table: dict[ReportFormat, Formatter] = {
            ReportFormat.HTML: render_html.HtmlFormatter(),
            ReportFormat.MD: render_md.MarkdownFormatter(),
            ReportFormat.JSON: render_json.JsonFormatter(),
            ReportFormat.OSCAL: render_oscal.OscalFormatter(),
        }
        return table[self]

    def outputs(self, report: Report, *, chromium: Path | None = None) -> dict[str, bytes]:
        """Every file of this format as {suffix: content}; the first is the format's own."""
        from trainguard.report import render_oscal, render_pdf

        if self is ReportFormat.PDF:
            pdf = render_pdf.PdfFormatter(chromium)
            return {pdf.suffix: pdf.render_bytes(report)}
        text = self._text_formatter()
        files = {text.suffix: text.render(report).encode("utf-8")}
        if self is ReportFormat.OSCAL:
            files[render_oscal.PLAN_SUFFIX] = render_oscal.OscalFormatter().render_plan(report).encode("utf-8")
        return files


DEFAULT_FORMATS = "html,md,json,oscal"  # pdf needs Chromium: asked for, never assumed


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
