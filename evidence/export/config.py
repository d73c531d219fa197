"""Settings of agent-side forwarding: the `[export]` section of trainguard.toml.

```toml
[export]
file = "export/audit.jsonl"      # relative paths are under the home; "" for none
file_format = "jsonl"            # or "ocsf"
file_max_bytes = 10485760        # rotate past this size ...
file_keep = 5                    # ... keeping this many older files (audit.jsonl.1 ... .5)
syslog = "tcp://siem.example:6514"   # udp://H:P, tcp://H:P or unix:///dev/log; "" for none
syslog_format = "ocsf"
syslog_facility = "authpriv"
```
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

__all__ = ["ExportConfig"]

_FORMATS = ("jsonl", "ocsf")


@dataclass(frozen=True)
class ExportConfig:
    """Where the agent forwards its audit entries, through a durable queue per destination."""

    SECTION: ClassVar[str] = "export"

    file: str = ""
    file_format: str = "jsonl"
    file_max_bytes: int = 10 * 1024 * 1024
    file_keep: int = 5
    syslog: str = ""
    syslog_format: str = "jsonl"
    syslog_facility: str = "authpriv"
    syslog_app_name: str = "trainguard"
    syslog_timeout_seconds: float = 5.0
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 300.0

    @property
    def enabled(self) -> bool:
        return bool(self.file or self.syslog)

    def validate(self) -> list[str]:
        from trainguard.evidence.export.interface import ExportConfigError
        from trainguard.evidence.export.syslog import FACILITIES, parse_target

        problems: list[str] = []
        for key in ("file_format", "syslog_format"):
            if getattr(self, key) not in _FORMATS:
                problems.append(f"{key} must be one of {', '.join(_FORMATS)}")
        if self.file_max_bytes < 1024:
            problems.append("file_max_bytes must be >= 1024")
        if self.file_keep < 0:
            problems.append("file_keep must be >= 0")
        if self.syslog:
            try:
                parse_target(self.syslog)
            except ExportConfigError as exc:
                problems.append(exc.message)
        if self.syslog_facility not in FACILITIES:
            problems.append(f"syslog_facility must be one of {', '.join(FACILITIES)}")
        if self.syslog_timeout_seconds <= 0:
            problems.append("syslog_timeout_seconds must be > 0")
        if self.retry_base_seconds <= 0 or self.retry_max_seconds < self.retry_base_seconds:
            problems.append("retry_base_seconds must be > 0 and <= retry_max_seconds")
        return problems
