"""The signed policy file in ``home.policy_dir``.

``policy.csv`` holds the casbin lines (see `trainguard.policy.rules`) followed by one signature
line::

    # trainguard-signature: v2 <signer key id> <version> <base64 Ed25519 signature>

The signature covers ``b"trainguard-policy/v2\\n" + b"<version>\\n"`` plus every byte before
that line, so the file, its version and its signature are replaced together in one atomic
rename. The version grows by one with every signed change and is recorded in the audit log
(``policy-version``); `trainguard.policy.access` refuses a file older than the newest version
recorded there, so an older signed copy put back in place is tampering, not a policy. Files
signed before versions existed (``v1`` lines) read as version 0. The file is loaded only
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

from trainguard.core.fs import write_private
from trainguard.core.home import Home
from trainguard.crypto.errors import BadSignature
from trainguard.crypto.signing import SigningKey, VerifyKey
from trainguard.evidence.incidents import IncidentKind
from trainguard.evidence.sink import AuditSink
from trainguard.policy.errors import PolicyError, PolicyTampered
from trainguard.policy.rules import PolicyRules, parse_policy

__all__ = ["PolicyFile"]

log = logging.getLogger(__name__)

_CONTEXT_V1 = b"trainguard-policy/v1\n"
_CONTEXT = b"trainguard-policy/v2\n"
_SIG_PREFIX_V1 = "# trainguard-signature: v1 "
_SIG_PREFIX = "# trainguard-signature: v2 "
_SIG_LINE = "# trainguard-signature: "


class PolicyFile:
    """Read and write the signed policy of one home."""

    def __init__(self, home: Home) -> None:
        self.path = home.policy_dir / "policy.csv"
        self.last_good = home.policy_dir / "policy.last-good.csv"

    def exists(self) -> bool:
        return bool(self.path.is_file())

    def save(self, rules: PolicyRules, key: SigningKey, *, version: int) -> None:
        """Render, sign and write the policy (and the last-good copy) as `version`."""
        self.save_text(rules.render(), key, version=version)

    def save_text(self, body: str, key: SigningKey, *, version: int) -> None:
        data = body.encode()
        if not data.endswith(b"\n"):
            data += b"\n"
        sig = base64.b64encode(key.sign(_signed_bytes(version, data))).decode()
        signed = data + f"{_SIG_PREFIX}{key.key_id} {version} {sig}\n".encode()
        write_private(self.path, signed, mode=0o640)
        write_private(self.last_good, signed, mode=0o640)

    def load(
        self, verify_key: VerifyKey, audit: AuditSink, *, actor: str = "trainguard"
    ) -> PolicyRules:
        """The verified rules, or `PolicyTampered` (audited) when the file is not as signed."""
        return self.load_versioned(verify_key, audit, actor=actor)[0]

    def load_versioned(
        self, verify_key: VerifyKey, audit: AuditSink, *, actor: str = "trainguard"
    ) -> tuple[PolicyRules, int]:
        """The verified rules and their signed version."""
        body, version = self._verified_body(self.path, verify_key, audit, actor)
        return parse_policy(body, source=str(self.path)), version

    def load_last_good(
        self, verify_key: VerifyKey, audit: AuditSink, *, actor: str
    ) -> tuple[PolicyRules, int]:
        body, version = self._verified_body(self.last_good, verify_key, audit, actor)
        return parse_policy(body, source=str(self.last_good)), version

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

    def _verified_body(
        self, path: Path, key: VerifyKey, audit: AuditSink, actor: str
    ) -> tuple[str, int]:
        raw = self._read(path)
        body, sig_line = _split(raw)
        try:
            version, sig = _parse_sig(sig_line)
            signed = _CONTEXT_V1 + body if version is None else _signed_bytes(version, body)
            key.verify(sig, signed, what="the policy file")
            return body.decode("utf-8"), version or 0
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
    if last.startswith(_SIG_LINE.encode()):
        return raw[:cut], last
    return raw, b""


def _signed_bytes(version: int, body: bytes) -> bytes:
    return _CONTEXT + f"{version}\n".encode() + body


def _parse_sig(line: bytes) -> tuple[int | None, bytes]:
    """(version or None for a v1 line, signature)."""
    parts = line.decode("ascii").split(" ")
    try:
        if line.startswith(_SIG_PREFIX.encode()) and len(parts) == 6 and parts[4].isdigit():
            return int(parts[4]), base64.b64decode(parts[5], validate=True)
        if line.startswith(_SIG_PREFIX_V1.encode()) and len(parts) == 5:
            return None, base64.b64decode(parts[4], validate=True)
    except binascii.Error as exc:
        raise ValueError("bad signature encoding") from exc
    raise ValueError("no signature line")
