"""trainguard.evidence.export: the audit log as an event stream for SIEMs.

Formats (`StreamFormat`): JSON lines (`jsonl`) and OCSF 1.x events (`ocsf`). `AuditStream`
follows a log by sequence number (`trainguard audit log --follow`). Exporters, one module each
behind `interface.Exporter`: a size-rotated JSON-lines file (`file`) and RFC 5424 syslog over
UDP/TCP/unix (`syslog`); `ExportForwarder` feeds them from the agent's log through durable
queues, configured by `[export]` (`ExportConfig`).
"""

from __future__ import annotations

from trainguard.evidence.export.config import ExportConfig
from trainguard.evidence.export.forwarder import Destination, ExportForwarder, product_version
from trainguard.evidence.export.interface import (
    ExportConfigError,
    Exporter,
    ExportUnavailable,
    StreamFormat,
)
from trainguard.evidence.export.jsonl import entry_object, iso_time
from trainguard.evidence.export.ocsf import OCSF_VERSION, to_ocsf
from trainguard.evidence.export.stream import AuditReader, AuditStream

__all__ = [
    "OCSF_VERSION",
    "AuditReader",
    "AuditStream",
    "Destination",
    "ExportConfig",
    "ExportConfigError",
    "ExportForwarder",
    "ExportUnavailable",
    "Exporter",
    "StreamFormat",
    "entry_object",
    "iso_time",
    "product_version",
    "to_ocsf",
]
