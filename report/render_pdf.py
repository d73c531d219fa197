"""PDF: the HTML report printed by headless Chromium (its print stylesheet, nothing hidden).

Chromium is an optional system package (Debian: ``chromium``), found on PATH or given
explicitly. It runs with a throwaway profile, no sandbox (it often runs as root in CI and
containers) and no network; the page is self-contained, has no scripts and forbids them (its
Content-Security-Policy). Chromium's own JavaScript switch stays on: headless printing needs it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from trainguard.core.errors import ReportError
from trainguard.report.model import Report
from trainguard.report.render_html import HtmlFormatter

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_TIP = ("install Chromium (Debian/Ubuntu: `apt-get install chromium`; Fedora: "
               "`dnf install chromium`), or leave pdf out of --formats and print the HTML report "
               "from a browser")
_FLAGS = (
    "--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage",
    "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-sync",
    "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
    "--no-pdf-header-footer", "--print-to-pdf-no-header",
    "--run-all-compositor-stages-before-draw", "--virtual-time-budget=5000",
)


class PdfUnavailable(ReportError):
    """PDF was asked for but no Chromium is installed (exit 2: the user can install it)."""

    exit_code = 2


class PdfPrintFailed(ReportError):
    """Chromium ran but did not print a PDF (exit 2: an environment problem to fix)."""

    exit_code = 2


def find_chromium() -> Path | None:
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def require_chromium(chromium: Path | None = None) -> Path:
    found = chromium or find_chromium()
    if found is None:
        raise PdfUnavailable("the pdf format needs Chromium, and none is on PATH "
                             f"(looked for {', '.join(CANDIDATES)})", tip=INSTALL_TIP)
    return found


def print_html(html: str, chromium: Path, *, timeout: float = 120.0) -> bytes:
    """Print a self-contained HTML page to PDF with headless Chromium; returns the PDF bytes."""
    with tempfile.TemporaryDirectory(prefix="trainguard-pdf-") as tmp:
        page, out = Path(tmp) / "report.html", Path(tmp) / "report.pdf"
        page.write_text(html, encoding="utf-8")
        cmd = [str(chromium), *_FLAGS, f"--user-data-dir={Path(tmp) / 'profile'}",
               f"--crash-dumps-dir={Path(tmp) / 'crashes'}", f"--print-to-pdf={out}", page.as_uri()]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False,
                                  stdin=subprocess.DEVNULL, cwd=tmp)
        except subprocess.TimeoutExpired as exc:
            raise PdfPrintFailed(f"{chromium} did not print the report within {timeout:.0f} s",
                                 tip="run it by hand to see why, or leave pdf out of --formats") from exc
        except OSError as exc:
            raise PdfPrintFailed(f"cannot run {chromium}: {exc.strerror or exc}", tip=INSTALL_TIP) from exc
        pdf = out.read_bytes() if out.is_file() else b""
        if proc.returncode != 0 or not pdf.startswith(b"%PDF-"):
            last = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
            raise PdfPrintFailed(
                f"{chromium} did not print the report (exit {proc.returncode}): " + " | ".join(last),
                tip="in containers, Chromium may need more /dev/shm or a writable HOME; "
                    "or leave pdf out of --formats and print the HTML report from a browser")
        return pdf


class PdfFormatter:
    """Renders the HTML report, then prints it (binary output: `render_bytes`, not `render`)."""

    suffix = "pdf"

    def __init__(self, chromium: Path | None = None) -> None:
        self.chromium = chromium

    def render_bytes(self, report: Report) -> bytes:
        chromium = require_chromium(self.chromium)
        return print_html(HtmlFormatter().render(report), chromium)
