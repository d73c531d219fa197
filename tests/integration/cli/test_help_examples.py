"""Every example printed under a command's --help runs as shown (exit 0)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from trainguard.cli.main import EXAMPLES, build_parser

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    import torch

    work = tmp_path_factory.mktemp("examples")
    home = work / "home"
    bindir = work / "bin"
    bindir.mkdir()
    script = bindir / "trainguard"
    script.write_text(f"#!/bin/sh\nexec {sys.executable} -m trainguard.cli.main \"$@\"\n")
    script.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINGUARD_")}
    env.update(TRAINGUARD_HOME=str(home), HOME=str(work), PATH=f"{bindir}:{env.get('PATH', '')}")
    subprocess.run(["trainguard", "init", "--admin", "root"], env=env, check=True,
                   capture_output=True, timeout=300)
    (work / "data.csv").write_text("patient,label\n1,0\n")
    (work / "data").mkdir()
    (work / "data" / "a.txt").write_text("a\n")
    torch.save({"w": torch.zeros(3)}, work / "model.pt")
    return work, env


def _all_examples() -> list[str]:
    parser = build_parser()  # EXAMPLES are attached while building: the same text as --help
    del parser
    return [e for examples in EXAMPLES.values() for e in examples]


def test_examples_appear_in_help() -> None:
    parser = build_parser()
    assert "$ trainguard check" in parser.format_help()


@pytest.mark.parametrize("example", _all_examples())
def test_example_runs(example: str, workdir: tuple[Path, dict[str, str]]) -> None:
    work, env = workdir
    if shutil.which("tar") is None and example.startswith("tar "):
        pytest.skip("no tar here")
    order = ["seal data.csv data.csv.tgs"]  # unseal's example needs seal's output first
    if "unseal" in example:
        subprocess.run(["trainguard", *order[0].split()], cwd=work, env=env, check=True,
                       capture_output=True, timeout=120)
    if example.startswith("trainguard verify"):
        subprocess.run(["trainguard", "sign", "data"], cwd=work, env=env, check=True,
                       capture_output=True, timeout=120)
    out = subprocess.run(["sh", "-c", example], cwd=work, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, f"{example}: exit {out.returncode}\n{out.stderr[-2000:]}"
