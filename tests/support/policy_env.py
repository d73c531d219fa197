"""Helpers for the policy tests (a uniquely named module: `conftest` names collide across areas)."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pyotp
from trainguard.core.config import NodeConfig
from trainguard.core.home import Home
from trainguard.crypto.keyring import Keyring
from trainguard.crypto.signing import SigningKey
from trainguard.evidence.sink import NullSink
from trainguard.policy.access import AccessControl
from trainguard.policy.config import PolicyConfig
from trainguard.policy.versions import VERSION_EVENT

T0 = 1_800_000_000.0  # a fixed instant, aligned to nothing in particular


class FakeClock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def secret_of(uri: str) -> str:
    return urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)["secret"][0]


def code_at(uri: str, t: float) -> str:
    return pyotp.TOTP(secret_of(uri)).at(t)


class EventLedger:
    """`VersionLedger` over a `NullSink`'s events."""

    def __init__(self, audit: NullSink) -> None:
        self.audit = audit

    def highest(self, name: str) -> int:
        return max(
            (d["version"] for k, _, d in self.audit.events
             if k == VERSION_EVENT and d.get("name") == name),
            default=0,
        )


@dataclass
class Env:
    home: Home
    keyring: Keyring
    key: SigningKey
    clock: FakeClock
    audit: NullSink
    admin_uri: str
    tmp: Path

    def ledger(self) -> EventLedger:
        """The versions recorded in this env's audit events (as the agent reads its log)."""
        return EventLedger(self.audit)

    def ac(
        self,
        config: PolicyConfig | None = None,
        node: NodeConfig | None = None,
        *,
        caller_uid: int | None = None,
        sessions_dir: Path | None = None,
    ) -> AccessControl:
        ac = AccessControl(
            self.home,
            config or PolicyConfig(),
            node or NodeConfig(),
            self.audit,
            sessions_dir=sessions_dir or self.tmp / "sessions",
            clock=self.clock,
            keyring=self.keyring,
            signing_key=self.key,
            ledger=self.ledger(),
        )
        ac.caller_uid = caller_uid
        return ac

    def kinds(self) -> list[str]:
        return [k for k, _, _ in self.audit.events]

    def fresh_code(self, uri: str) -> str:
        """A code for a step not used yet: move the clock to the next 30 s step first."""
        self.clock.advance(30)
        return code_at(uri, self.clock())
