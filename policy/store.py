"""The signed policy file in ``home.policy_dir``.

``policy.csv`` holds the casbin lines (see `trainguard.policy.rules`) followed by one signature
line::

    # trainguard-signature: v1 <signer key id> <base64 Ed25519 signature>

The signature covers ``b"trainguard-policy/v1\\n"`` plus every byte before that line, so the
file and its signature are replaced together in one atomic rename. The file is loaded only
when the signature verifies with the node key; any other content raises `PolicyTampered` (exit
2) and leaves a ``policy-tampered`` audit event: a hand edit takes no effect.

``policy.last-good.csv`` is a copy of the last signed policy. `policy sign` decides whether the
caller may re-sign a hand-edited file with that copy, never with the edited one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from pathlib import Path

from trainguard.core.home import Home, write_private
from trainguard.crypto.errors import BadSignature
from trainguard.crypto.signing import SigningKey, VerifyKey
from trainguard.evidence.incidents import IncidentKind
from trainguard.evidence.sink import AuditSink
from trainguard.policy.errors import PolicyError, PolicyTampered
from trainguard.policy.rules import PolicyRules, parse_policy

__all__ = ["PolicyFile"]

log = logging.getLogger(__name__)

_CONTEXT = b"trainguard-policy/v1\n"
_SIG_PREFIX = "# trainguard-signature: v1 "


class PolicyFile:
    """Read and write the signed policy of one home."""

    def __init__(self, home: Home) -> None:
        self.path = home.policy_dir / "policy.csv"
        self.last_good = home.policy_dir / "policy.last-good.csv"

    def exists(self) -> bool:
        return bool(self.path.is_file())

    def save(self, rules: PolicyRules, key: SigningKey) -> None:
        """Render, sign and write the policy (and the last-good copy)."""
        self.save_text(rules.render(), key)

    def save_text(self, body: str, key: SigningKey) -> None:
        data = body.encode()
        if not data.endswith(b"\n"):
            data += b"\n"
        sig = base64.b64encode(key.sign(_CONTEXT + data)).decode()
        signed = data + f"{_SIG_PREFIX}{key.key_id} {sig}\n".encode()
        write_private(self.path, signed, mode=0o640)
        write_private(self.last_good, signed, mode=0o640)

    def load(
        self, verify_key: VerifyKey, audit: AuditSink, *, actor: str = "trainguard"
    ) -> PolicyRules:
        """The verified rules, or `PolicyTampered` (audited) when the file is not as signed."""
        body = self._verified_body(self.path, verify_key, audit, actor)
        return parse_policy(body, source=str(self.path))

    def load_last_good(self, verify_key: VerifyKey, audit: AuditSink, *, actor: str) -> PolicyRules:
        body = self._verified_body(self.last_good, verify_key, audit, actor)
        return parse_policy(body, source=str(self.last_good))

    def unsigned_body(self) -> str:
        """The current file without its signature line (what `policy sign` will sign)."""
        raw = self._read(self.path)
        body, _ = _split(raw)
        return body.decode("utf-8", errors="replace")

    def _read(self, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise PolicyError(
                f"no policy file at {path}",
                tip="run `trainguard init` to create the default policy",
            ) from exc
        except OSError as exc:
            raise PolicyError(f"cannot read the policy file {path}: {exc.strerror}") from exc

    def _verified_body(self, path: Path, key: VerifyKey, audit: AuditSink, actor: str) -> str:
        raw = self._read(path)
        body, sig_line = _split(raw)
        try:
            sig = _parse_sig(sig_line)
            key.verify(sig, _CONTEXT + body, what="the policy file")
            return body.decode("utf-8")
        except (BadSignature, ValueError, UnicodeDecodeError) as exc:
            log.warning("policy file %s failed signature verification", path)
            audit.record(
                IncidentKind.POLICY_TAMPERED.value,
                actor,
                {"path": str(path), "sha256": hashlib.sha256(raw).hexdigest()},
            )
            raise PolicyTampered(str(path)) from exc


def _split(raw: bytes) -> tuple[bytes, bytes]:
    """(body, signature line). The signature line is the last line of the file."""
    stripped = raw[:-1] if raw.endswith(b"\n") else raw
    cut = stripped.rfind(b"\n") + 1
    last = stripped[cut:]
    if last.startswith(_SIG_PREFIX.encode()):
        return raw[:cut], last
    return raw, b""


def _parse_sig(line: bytes) -> bytes:
    parts = line.decode("ascii").split(" ")
    if len(parts) != 5 or not line.startswith(_SIG_PREFIX.encode()):
        raise ValueError("no signature line")
    try:
        return base64.b64decode(parts[4], validate=True)
    except binascii.Error as exc:
        raise ValueError("bad signature encoding") from exc
