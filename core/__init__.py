"""Shared kernel of trainguard: the error hierarchy and exit codes, the home layout, config
loading, file helpers and the clock seam. Every area may import it; it imports nothing of ours."""

from trainguard.core.clock import Clock, Random
from trainguard.core.config import (
    Config,
    ConfigError,
    NodeConfig,
    Section,
    apply_flags,
    load_config,
    register_section,
)
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
from trainguard.core.fs import (
    FileHash,
    atomic_output,
    hash_fd,
    hash_file,
    read_private,
    sha256_file,
    write_private,
)
from trainguard.core.home import Home, HomeError

__all__ = [
    "AccessDenied",
    "AgentError",
    "Clock",
    "Config",
    "ConfigError",
    "CryptoError",
    "EvidenceError",
    "FileHash",
    "Home",
    "HomeError",
    "IntegrityError",
    "NodeConfig",
    "PolicyError",
    "Random",
    "ReportError",
    "Section",
    "TrainguardError",
    "UsageError",
    "apply_flags",
    "atomic_output",
    "hash_fd",
    "hash_file",
    "load_config",
    "read_private",
    "register_section",
    "sha256_file",
    "write_private",
]
