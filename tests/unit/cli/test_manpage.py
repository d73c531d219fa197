"""trainguard(1): generated from the argparse tree, installed with the unit it documents."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from trainguard.cli.main import build_parser
from trainguard.cli.manpage import render_manpage


def test_every_command_has_a_section_with_its_description() -> None:
    page = render_manpage(build_parser(), version="9.9")
    assert page.startswith('.TH TRAINGUARD 1 "') and '"trainguard 9.9"' in page
    for cmd in ("init", "seal", "key rotate", "user add", "login", "agent install\\-unit",
                "deps audit", "audit report", "train"):
        assert f".SS trainguard {cmd}\n" in page, cmd
    assert "\\fB\\-\\-otp CODE\\fR" in page  # options with their metavar
    assert "EXIT STATUS" in page


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff not installed")
def test_groff_renders_it_without_warnings(tmp_path: Path) -> None:
    src = tmp_path / "trainguard.1"
    src.write_text(render_manpage(build_parser(), version="1"))
    out = subprocess.run(["groff", "-man", "-Tutf8", "-P-cbou", "-ww", str(src)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr
    assert "trainguard deps audit" in out.stdout


def test_install_unit_writes_the_unit_and_the_man_page_it_names(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    unit = tmp_path / "trainguard-agent.service"
    r = cli("agent", "install-unit", "--path", unit, "--man-dir", tmp_path / "man1",
            "--home", tmp_path, "--format", "json")
    assert r.code == 0, r.stderr
    assert "Documentation=man:trainguard(1)" in unit.read_text()
    assert r.json()["manpage"] == str(tmp_path / "man1" / "trainguard.1")
    assert (tmp_path / "man1" / "trainguard.1").read_text().startswith(".TH TRAINGUARD 1")
