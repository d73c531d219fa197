"""The trainer never calls torch's pickle-based `*_object` collectives, and the agent CLI
module for `train` does not import torch."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_trainer_source_has_no_object_collectives() -> None:
    offenders = []
    for path in sorted((REPO / "trainer").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"_object(s)?\(", line):
                offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert offenders == []


def test_train_cli_module_does_not_import_torch() -> None:
    code = (
        "import sys, trainguard.cli.commands.train; "
        "print('torch' in sys.modules, 'trainguard.trainer.worker' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
