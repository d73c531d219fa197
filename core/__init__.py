"""Shared kernel of trainguard: the error hierarchy and exit codes, the home layout, config
loading, file helpers and the clock seam. Every area may import it; it imports nothing of ours."""

from trainguard.core.config import Config, ConfigError, load_config, register_section
from trainguard.core.errors import (
    AccessDenied,
    AgentError,
    CryptoError,
    EvidenceError,
    IntegrityError,
    PolicyError,
    ReportError,
    TrainguardError,
    UsageError,
)
from trainguard.core.home import Home, HomeError

__all__ = [
    "AccessDenied",
    "AgentError",
    "Config",
    "ConfigError",
    "CryptoError",
    "EvidenceError",
    "Home",
    "HomeError",
    "IntegrityError",
    "PolicyError",
    "ReportError",
    "TrainguardError",
    "UsageError",
    "load_config",
    "register_section",
]
