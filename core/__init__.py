"""Shared kernel of trainguard: the error hierarchy, the home layout, config loading and the
audit-sink protocol. Every area may import it; it imports nothing of ours."""

from trainguard.core.audit import AuditSink, IncidentKind, NullSink, Severity
from trainguard.core.config import Config, ConfigError, load_config, register_section
from trainguard.core.errors import (
    AccessDenied,
    AgentError,
    CryptoError,
    IntegrityError,
    PolicyError,
    TrainguardError,
    UsageError,
)
from trainguard.core.home import Home, HomeError

__all__ = [
    "AccessDenied",
    "AgentError",
    "AuditSink",
    "Config",
    "ConfigError",
    "CryptoError",
    "Home",
    "HomeError",
    "IncidentKind",
    "IntegrityError",
    "NullSink",
    "PolicyError",
    "Severity",
    "TrainguardError",
    "UsageError",
    "load_config",
    "register_section",
]
