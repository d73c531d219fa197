"""What every command handler receives: the home, the output format, config and audit sink."""

from __future__ import annotations

import enum
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import IO, Any

from trainguard.core.config import Config, load_config
from trainguard.core.home import Home
from trainguard.evidence.sink import AuditSink


class OutputFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, bytes):
        return obj.hex()
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@dataclass
class Context:
    """Per-invocation state. Handlers write data with `emit` and diagnostics with `info`."""

    home: Home
    format: OutputFormat
    verbose: int = 0
    environ: Mapping[str, str] = field(default_factory=dict)
    stdout: IO[str] = field(default_factory=lambda: sys.stdout)
    stderr: IO[str] = field(default_factory=lambda: sys.stderr)

    @cached_property
    def config(self) -> Config:
        return load_config(self.home.config_path, self.environ)

    @cached_property
    def audit(self) -> AuditSink:
        """The agent when it runs, else the embedded audit log of this home."""
        from trainguard.agent.api.client import open_sink

        return open_sink(self.home, self.config)

    @property
    def json(self) -> bool:
        return self.format is OutputFormat.JSON

    def emit(self, data: Any, text: Callable[[Any], str] | str | None = None) -> None:
        """Write the command's result: JSON as is, or text rendered by `text`."""
        if self.json:
            json.dump(data, self.stdout, indent=2, sort_keys=False, default=_json_default)
            self.stdout.write("\n")
        else:
            rendered = text(data) if callable(text) else text
            if rendered is None:
                rendered = json.dumps(data, indent=2, default=_json_default)
            if rendered:
                self.stdout.write(rendered.rstrip("\n") + "\n")
        self.stdout.flush()

    def info(self, message: str) -> None:
        """Progress and summaries: always stderr, so stdout stays machine-readable."""
        self.stderr.write(message.rstrip("\n") + "\n")
        self.stderr.flush()
