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


@dataclass
class Env:
    home: Home
    keyring: Keyring
    key: SigningKey
    clock: FakeClock
    audit: NullSink
    admin_uri: str
    tmp: Path

    def ac(
        self, config: PolicyConfig | None = None, node: NodeConfig | None = None
    ) -> AccessControl:
        return AccessControl(
            self.home,
            config or PolicyConfig(),
            node or NodeConfig(),
            self.audit,
            sessions_dir=self.tmp / "sessions",
            clock=self.clock,
            keyring=self.keyring,
            signing_key=self.key,
        )

    def kinds(self) -> list[str]:
        return [k for k, _, _ in self.audit.events]

    def fresh_code(self, uri: str) -> str:
        """A code for a step not used yet: move the clock to the next 30 s step first."""
        self.clock.advance(30)
        return code_at(uri, self.clock())
