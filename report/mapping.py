"""Load the control mapping shipped as data (controls.toml next to this module)."""

from __future__ import annotations

import tomllib
from functools import cache
from importlib import resources

from trainguard.core.errors import TrainguardError
from trainguard.report.model import Control

SEVERITIES = ("low", "medium", "high", "critical")


@cache
def load_controls() -> tuple[Control, ...]:
    raw = tomllib.loads(
        resources.files("trainguard.report").joinpath("controls.toml").read_text("utf-8")
    )
    controls = []
    for row in raw.get("control", []):
        if row.get("severity") not in SEVERITIES:
            raise TrainguardError(f"controls.toml: bad severity for {row.get('id')}")
        controls.append(
            Control(
                id=row["id"],
                title=row["title"],
                atlas=tuple(row.get("atlas", ())),
                sources=tuple(row.get("sources", ())),
                remediation=row["remediation"],
                severity=row["severity"],
            )
        )
    return tuple(controls)
