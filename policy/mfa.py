"""TOTP second factor (RFC 6238 via pyotp), replay protection, backoff, lockout, recovery codes.

- Enrolment creates a 160-bit base32 secret, stores it encrypted with the keyring (the user's
  name, uid and OS uid bound as associated data, so a secret copied to another row, or a row
  re-mapped to another OS account by editing the file, does not decrypt) and returns the
  otpauth URI (shown as text and a terminal QR).
- Verification accepts the current 30 s step and `totp_drift_steps` (default 1) either side. The
  matched step must be newer than the last accepted one (`UserStore.claim_step`, an atomic
  conditional UPDATE), so a code is accepted at most once.
- From the 5th failure within the window an attempt must wait base * 2^(n-5) seconds (capped)
  after the last failure; attempts during the wait are refused unchecked. Failures never lock an
  account for good: anyone can type wrong codes for any name, so a permanent lock would let any
  local user lock out the only admin. `trainguard user unlock` clears the failures; recovery
  codes work like TOTP codes.
- Names that are no user get the same message, the same failure counting and the same delays
  as real users (and a recovery-shaped code costs the same scrypt), so neither the words nor the
  timing tell which users exist.
- Recovery codes: 10 single-use codes (``xxxxx-xxxxx``, 50 random bits), stored as scrypt hashes
  with a per-code salt; accepted wherever a TOTP code is.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, Protocol

import pyotp
from trainguard.core.errors import TrainguardError
from trainguard.crypto.errors import KeyringError
from trainguard.evidence.sink import AuditSink
from trainguard.policy.config import PolicyConfig
from trainguard.policy.errors import AuthenticationFailed, LockedOut, UnknownName
from trainguard.policy.users import UserStore

__all__ = ["Enrolment", "MfaService", "SecretBox", "match_step", "qr_text", "totp_aad"]

log = logging.getLogger(__name__)

STEP_SECONDS = 30
_CODE_RE = re.compile(r"^[0-9]{6}$", re.ASCII)
_RECOVERY_RE = re.compile(r"^[a-z2-7]{5}-[a-z2-7]{5}$")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}


class SecretBox(Protocol):
    """What MFA needs from the keyring (`trainguard.crypto.keyring.Keyring`)."""

    def encrypt_small(self, plaintext: bytes, aad: bytes) -> bytes: ...

    def decrypt_small(self, blob: bytes, aad: bytes) -> bytes: ...


@dataclass(frozen=True)
class Enrolment:
    name: str
    otpauth_uri: str

    def __repr__(self) -> str:  # the URI carries the secret
        return f"Enrolment(name={self.name!r}, otpauth_uri=<secret>)"


def _aad_legacy(uid: str) -> bytes:
    return b"trainguard/totp/v1/" + uid.encode()


def totp_aad(name: str, uid: str, os_uid: int | None) -> bytes:
    """Associated data of a stored TOTP secret: who it belongs to, and which OS account."""
    mapped = "-" if os_uid is None else str(os_uid)
    return b"\0".join((b"trainguard/totp/v2", name.encode(), uid.encode(), mapped.encode()))


_DUMMY_SALT = b"trainguard/no-such-user"


def _hotp(key: bytes, counter: int) -> str:
    """RFC 4226 HOTP, 6 digits, SHA-1 (what pyotp's TOTP defaults produce)."""
    mac = hmac.digest(key, counter.to_bytes(8, "big"), "sha1")
    offset = mac[-1] & 0x0F
    value = int.from_bytes(mac[offset : offset + 4], "big") & 0x7FFFFFFF
    return f"{value % 1_000_000:06d}"


def match_step(secret: str, code: str, now: float, drift: int = 1) -> int | None:
    """The time step whose code equals `code` (current step first), or None.

    pyotp creates secrets and URIs; the check itself is a direct RFC 6238 computation (a test
    pins it to pyotp's output) because it runs on every login and step-up."""
    if not _CODE_RE.fullmatch(code):
        return None
    key = base64.b32decode(secret.upper() + "=" * (-len(secret) % 8))
    current = int(now) // STEP_SECONDS
    for step in (current, *(s for d in range(1, drift + 1) for s in (current - d, current + d))):
        if step >= 0 and hmac.compare_digest(_hotp(key, step), code):
            return step
    return None


def qr_text(uri: str) -> str:
    """The otpauth URI as a QR code drawn with block characters, for a terminal."""
    import qrcode

    qr = qrcode.QRCode(border=1)
    qr.add_data(uri)
    out = io.StringIO()
    qr.print_ascii(out=out)
    return out.getvalue()


def _hash_recovery(code: str, salt: bytes) -> bytes:
    return hashlib.scrypt(code.encode(), salt=salt, **_SCRYPT)


class MfaService:
    """Enrol, verify and recover. Every outcome that matters is an audit event."""

    def __init__(
        self,
        users: UserStore,
        box: SecretBox | None,
        config: PolicyConfig,
        audit: AuditSink,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.users = users
        self._box = box
        self.config = config
        self.audit = audit
        self._clock = clock

    def _require_box(self) -> SecretBox:
        if self._box is None:
            raise AuthenticationFailed(
                "second-factor secrets cannot be opened: no keyring",
                tip="check the keyring in the home's keys/ folder (`trainguard key list`)",
            )
        return self._box

    # -- enrolment ------------------------------------------------------------------------
    def enrol(self, name: str, *, actor: str, cluster: str = "default") -> Enrolment:
        """Create (or replace) the user's TOTP secret; returns the otpauth URI."""
        rec = self.users.get(name)
        secret = pyotp.random_base32(32)
        aad = totp_aad(name, rec.uid, self.users.os_uid(name))
        blob = self._require_box().encrypt_small(secret.encode(), aad)
        self.users.set_totp(name, blob)
        uri = pyotp.TOTP(secret).provisioning_uri(
            name=f"{name}@{cluster}", issuer_name=self.config.issuer
        )
        self.audit.record("user-enrolled", actor, {"user": name})
        return Enrolment(name, uri)

    def _secret(self, name: str) -> str:
        rec = self.users.get(name)
        stored = self.users.totp_blob(name)
        if stored is None:
            raise AuthenticationFailed(
                "second-factor verification failed", reason="no second factor enrolled"
            )
        blob, fmt = stored
        box = self._require_box()
        aad = totp_aad(name, rec.uid, self.users.os_uid(name))
        try:
            if fmt == 2:
                return box.decrypt_small(blob, aad).decode()
            # A secret stored before the binding (uid only): accept it once more and store it
            # bound, so the row can no longer be moved to another name or OS account.
            secret = box.decrypt_small(blob, _aad_legacy(rec.uid))
            self.users.rewrap_totp(name, box.encrypt_small(secret, aad))
            self.audit.record("totp-rebound", name, {"user": name})
            return secret.decode()
        except KeyringError:
            raise  # the node's KEK is unavailable: say that, not "verification failed"
        except TrainguardError as exc:  # wrong KEK, edited row, or a secret moved between users
            raise AuthenticationFailed(
                "second-factor verification failed", reason="stored TOTP secret does not decrypt"
            ) from exc

    def rebind(self, name: str, new_os_uid: int | None) -> None:
        """Re-encrypt `name`'s secret for a new OS-account mapping (before the mapping is
        written); no-op for a user without a second factor."""
        if self.users.totp_blob(name) is None:
            return
        secret = self._secret(name).encode()
        rec = self.users.get(name)
        blob = self._require_box().encrypt_small(secret, totp_aad(name, rec.uid, new_os_uid))
        self.users.rewrap_totp(name, blob)

    # -- verification ---------------------------------------------------------------------
    def verify(self, name: str, code: str, *, purpose: str = "login") -> float:
        """Accept a TOTP or recovery code for `name` once; returns the verification time.

        Raises:
            LockedOut: the user is locked, or must wait (backoff) before trying again.
            AuthenticationFailed: the code is wrong, reused, outside the drift window, or the
                user is unknown or not enrolled (one generic message for all of them).
        """
        now = self._clock()
        self._gate(name, now)
        code = code.strip().lower()
        if not self.users.exists(name):
            if _RECOVERY_RE.fullmatch(code):
                _hash_recovery(code, _DUMMY_SALT)  # the same cost as a real recovery check
            self._fail(name, now, purpose, "unknown user")
        ok = False
        reason = "wrong code"
        if _RECOVERY_RE.fullmatch(code):
            ok = self._use_recovery(name, code, now)
            reason = "wrong or used recovery code"
            if ok:
                self.audit.record("recovery-code-used", name, {"user": name})
        else:
            try:
                secret = self._secret(name)
            except AuthenticationFailed as exc:
                self._deny(name, purpose, exc.reason)
            step = match_step(secret, code, now, self.config.totp_drift_steps)
            if step is not None:
                ok = self.users.claim_step(name, step)
                reason = "code already used (replay)" if not ok else ""
            else:
                reason = "wrong code or clock outside the drift window"
        if not ok:
            self._fail(name, now, purpose, reason)
        self.users.clear_failures(name)
        return now

    def _gate(self, name: str, now: float) -> None:
        if self.users.is_locked(name):  # set by an admin (or by versions before 0.2)
            self.audit.record("mfa-refused", name, {"user": name, "reason": "locked"})
            raise LockedOut(
                "this account is locked", tip="ask an admin to run `trainguard user unlock NAME`"
            )
        recent = self.users.failures_since(name, now - self.config.lockout_window_seconds)
        over = len(recent) - self.config.backoff_after
        if over >= 0:
            wait = min(
                self.config.backoff_base_seconds * (2**over), self.config.backoff_max_seconds
            )
            remaining = recent[-1] + wait - now
            if remaining > 0:
                self.audit.record(
                    "mfa-refused",
                    name,
                    {"user": name, "reason": "backoff", "wait_s": round(remaining, 1)},
                )
                raise LockedOut(
                    f"too many failed attempts; try again in {int(remaining) + 1} s",
                    tip="wait, then retry with a fresh code",
                )

    def _fail(self, name: str, now: float, purpose: str, reason: str) -> NoReturn:
        self.users.add_failure(name, now)
        self._deny(name, purpose, reason)

    def _deny(self, name: str, purpose: str, reason: str) -> NoReturn:
        self.audit.record("mfa-failed", name, {"user": name, "purpose": purpose, "reason": reason})
        raise AuthenticationFailed("second-factor verification failed", reason=reason)

    # -- recovery codes -------------------------------------------------------------------
    def new_recovery_codes(self, name: str, *, actor: str) -> list[str]:
        """Replace the user's recovery codes with fresh ones; returns them (shown once)."""
        if not self.users.exists(name):
            raise UnknownName(f"no user named {name!r}", tip="see `trainguard user list`")
        codes = []
        hashed = []
        for _ in range(self.config.recovery_codes):
            raw = base64.b32encode(secrets.token_bytes(7)).decode().lower()[:10]
            code = f"{raw[:5]}-{raw[5:]}"
            salt = secrets.token_bytes(16)
            codes.append(code)
            hashed.append((salt, _hash_recovery(code, salt)))
        self.users.replace_recovery_codes(name, hashed)
        self.audit.record("recovery-codes-issued", actor, {"user": name, "count": len(codes)})
        return codes

    def _use_recovery(self, name: str, code: str, now: float) -> bool:
        for code_id, salt, digest in self.users.unused_recovery_codes(name):
            if hmac.compare_digest(_hash_recovery(code, salt), digest):
                return bool(self.users.use_recovery_code(code_id, now))
        return False
