"""What every command handler receives: the home, the output format, config and audit sink."""

from __future__ import annotations

import argparse
import datetime as dt
import enum
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from trainguard.core.config import Config, load_config
from trainguard.core.home import Home
from trainguard.evidence.sink import AuditSink

if TYPE_CHECKING:
    from trainguard.crypto.keyring import Keyring


class OutputFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


# JSON output carries timestamps as ISO-8601 UTC strings: a key that names a time (``time``,
# ``*_at``, ``created``, ...) with a plausible epoch value (after 2001) is converted in `emit`.
_TIME_KEYS = frozenset({"time", "created", "collected", "generated", "started", "finished",
                        "since", "until", "last_checkpoint"})
_EPOCH_MIN = 1e9


def iso_utc(seconds: float) -> str:
    """``2026-12-03T10:35:16.250Z`` (milliseconds kept when there are any)."""
    stamp = dt.datetime.fromtimestamp(seconds, dt.UTC)
    text = stamp.isoformat(timespec="milliseconds" if stamp.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def iso_times(data: Any) -> Any:
    """A copy of `data` with epoch timestamps under time-naming keys turned into ISO strings."""
    if isinstance(data, dict):
        out = {}
        for k, v in data.items():
            named = isinstance(k, str) and (k in _TIME_KEYS or k.endswith(("_at", "_time")))
            if named and isinstance(v, int | float) and not isinstance(v, bool) and v >= _EPOCH_MIN:
                out[k] = iso_utc(float(v))
            else:
                out[k] = iso_times(v)
        return out
    if isinstance(data, list | tuple):
        return [iso_times(v) for v in data]
    return data


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

    def keyring(self) -> Keyring:
        """The home's keyring; a KEK in $CREDENTIALS_DIRECTORY (systemd-creds) wins over keys/.

        A broken trainguard.toml is refused first, even by commands that read no setting.
        """
        from trainguard.crypto.keyring import open_keyring

        self.config  # noqa: B018 - loading validates the file
        return open_keyring(self.home)

    @property
    def home_readable(self) -> bool:
        """False for a system home this account cannot read: then only the agent can decide
        (login, authorization) and commands that need the keys must run as root."""
        from trainguard.agent.api.client import home_readable

        return home_readable(self.home)

    def access(self) -> Any:
        """Access control in this process, for a home this account can read; versions are
        checked against this home's audit log."""
        from trainguard.evidence.embedded import open_embedded_log
        from trainguard.policy import AccessControl
        from trainguard.policy.versions import AuditLedger

        home = self.home.require()
        from trainguard.agent.api.client import report_incident

        ledger = AuditLedger(open_embedded_log(home, self.config))
        ac = AccessControl.open(home, self.config, self.audit, environ=self.environ,
                                ledger=ledger)
        ac.report_incident = lambda kind, severity, evidence: report_incident(
            home, self.config, kind, severity, evidence)
        return ac

    def gate(self) -> Any:
        """Who decides logins and authorizations for this account: `access()` when the home is
        readable, else the agent over its socket (`AgentGate`)."""
        if self.home_readable:
            return self.access()
        import hashlib

        from trainguard.agent.api.client import AgentClient, AgentGate, agent_socket
        from trainguard.policy.sessions import SessionStore, default_sessions_dir

        socket_path = agent_socket(None, self.environ)
        tag = hashlib.sha256(str(socket_path).encode()).hexdigest()[:12]
        store = SessionStore(default_sessions_dir(self.environ), cluster="agent", node=tag)
        return AgentGate(AgentClient(socket_path=socket_path), store)

    @property
    def json(self) -> bool:
        return self.format is OutputFormat.JSON

    def emit(self, data: Any, text: Callable[[Any], str] | str | None = None) -> None:
        """Write the command's result: JSON as is, or text rendered by `text`."""
        if self.json:
            json.dump(iso_times(data), self.stdout, indent=2, sort_keys=False,
                      default=_json_default)
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


class _DeprecatedFlag(argparse.Action):
    """An old spelling of a flag: still works, says once on stderr what to use instead."""

    def __init__(self, *args: Any, replacement: str = "", **kwargs: Any) -> None:
        self.replacement = replacement
        super().__init__(*args, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        sys.stderr.write(f"warning: {option_string} is deprecated; use {self.replacement}\n")
        setattr(namespace, self.dest, values)


def project_flag(parser: argparse.ArgumentParser, *, help: str, required: bool = False,  # noqa: A002
                 default: str | None = None, dest: str = "domain") -> None:
    """`--project NAME` (a policy domain), one flag for the concept in every command;
    `--domain` stays as a deprecated alias."""
    parser.add_argument("--project", dest=dest, metavar="PROJECT", required=required,
                        default=default, help=help)
    parser.add_argument("--domain", dest=dest, metavar="PROJECT", action=_DeprecatedFlag,
                        replacement="--project", help=argparse.SUPPRESS)
