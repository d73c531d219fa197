"""The run folder: how workers hand results, incidents and telemetry to the launcher.

Workers never use `*_object` collectives or the TCPStore for results. Writers append JSON lines
(incidents, telemetry, checkpoints) or write one file atomically (result.json); the launcher
reads them and is the only process that talks to the agent or the embedded audit log.

    job.json          written by the launcher: job id, config snapshot, home
    job.key           0600: the job key (membership)
    incidents.jsonl   {"kind", "severity", "evidence"} per line
    telemetry.jsonl   {"step", "loss", "grad_norm", "step_time", ...} per line
    events.jsonl      {"kind": "checkpoint"|"resume"|..., ...} per line
    result.json       the final result of the last attempt (rank 0)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainguard.core.fs import atomic_output

__all__ = ["RunDir"]


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def job_file(self) -> Path:
        return self.root / "job.json"

    @property
    def key_file(self) -> Path:
        return self.root / "job.key"

    @property
    def result_file(self) -> Path:
        return self.root / "result.json"

    def append(self, stream: str, record: dict[str, Any]) -> None:
        line = json.dumps(record, sort_keys=True, default=str) + "\n"
        fd = os.open(self.root / f"{stream}.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self, stream: str, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Complete lines from byte `offset` on; returns them and the new offset."""
        path = self.root / f"{stream}.jsonl"
        if not path.exists():
            return [], offset
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        records = [json.loads(line) for line in data[:end].splitlines() if line.strip()]
        return records, offset + end

    def write_json(self, path: Path, data: dict[str, Any]) -> None:
        with atomic_output(path, mode=0o600) as tmp:
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))

    def read_json(self, path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None
