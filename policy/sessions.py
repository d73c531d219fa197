"""Login sessions: signed tokens in the OS user's config folder.

``trainguard login`` writes ``$XDG_CONFIG_HOME/trainguard/sessions/<cluster>.<node>.session``
(default ``~/.config/...``), mode 0600, folder 0700::

    {"v": 1, "payload": {...}, "sig": "<base64 Ed25519>"}

payload = {user, uid, node, cluster, key_id, issued_at, expires_at, mfa_at, nonce, os_uid}; the
signature (node key) covers ``b"trainguard-session/v1\\n" + canonical_json(payload)``. A token
is refused when the signature fails (edited), it names another node or cluster or key, it has
expired (12 h by default) or was issued in the future, or its user was removed (uid changed)
or is locked. ``mfa_at`` is the time of the last verified second factor: privileged actions
need it within the step-up window (5 min by default). ``os_uid`` is the operating-system
account the token was issued to: the agent honours a token only from that account's socket
connection (SO_PEERCRED), so a copied token is worthless to anyone else.

With a system home the CLI cannot read, the agent verifies and signs tokens
(`trainguard.agent.api.sessions`) and the CLI only stores them (`SessionStore.save_token`).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
import stat
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from trainguard.core.fs import write_private
from trainguard.crypto.errors import BadSignature
from trainguard.crypto.signing import SigningKey, VerifyKey, canonical_json
from trainguard.policy.errors import SessionInvalid

__all__ = ["MemorySessionStore", "Session", "SessionStore", "default_sessions_dir", "token_bytes"]

_CONTEXT = b"trainguard-session/v1\n"
_CLOCK_SKEW = 60.0


def default_sessions_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/trainguard/sessions`` or ``~/.config/trainguard/sessions``.

    Only entry points call this with their environment (library code takes the folder)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base) / "trainguard" / "sessions"


@dataclass(frozen=True)
class Session:
    """A verified login. Holds no secret (its signature is in the file, not here)."""

    user: str
    uid: str
    node: str
    cluster: str
    key_id: str
    issued_at: float
    expires_at: float
    mfa_at: float
    nonce: str
    os_uid: int | None = None  # None: issued by a version before the agent held the keys

    def mfa_fresh(self, now: float, window: float) -> bool:
        return 0 <= now - self.mfa_at <= window


class SessionStore:
    """Issue, save and load the session of one node for the current OS user."""

    def __init__(self, folder: Path, *, cluster: str, node: str) -> None:
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", f"{cluster}.{node}")
        self.folder = folder
        self.path = folder / f"{safe}.session"
        self.cluster = cluster
        self.node = node

    def issue(
        self,
        key: SigningKey,
        *,
        user: str,
        uid: str,
        now: float,
        hours: float,
        os_uid: int | None = None,
    ) -> Session:
        session = Session(
            user=user,
            uid=uid,
            os_uid=os_uid,
            node=self.node,
            cluster=self.cluster,
            key_id=key.key_id,
            issued_at=now,
            expires_at=now + hours * 3600,
            mfa_at=now,
            nonce=secrets.token_hex(8),
        )
        self.save(session, key)
        return session

    def refresh_mfa(self, session: Session, key: SigningKey, now: float) -> Session:
        """The same session with a new step-up time (after `--otp` on a command)."""
        fresh = replace(session, mfa_at=now)
        self.save(fresh, key)
        return fresh

    def save(self, session: Session, key: SigningKey) -> None:
        self.save_token(token_bytes(session, key))

    def save_token(self, token: bytes) -> None:
        """Store a signed token as it is (the CLI of a system home: the agent signed it)."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(self.path, token)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def read_token(self) -> bytes:
        """The stored token, unverified (to present to the agent). `SessionInvalid` if none."""
        try:
            return self._read()
        except FileNotFoundError:
            raise _invalid("no session", "you are not logged in on this node") from None
        except OSError as exc:
            raise _invalid(f"session file unreadable: {exc.strerror}") from exc

    def load(self, key: VerifyKey, *, now: float) -> Session:
        """The verified session. Raises `SessionInvalid` (one generic message) otherwise;
        the reason is in `.reason` for the audit log."""
        return self.verify_token(self.read_token(), key, now=now)

    def verify_token(self, raw: bytes, key: VerifyKey, *, now: float) -> Session:
        """Verify a presented token for this node and cluster."""
        try:
            doc = json.loads(raw)
            payload = doc["payload"]
            sig = base64.b64decode(doc["sig"], validate=True)
            key.verify(sig, _CONTEXT + canonical_json(payload), what="the session token")
            session = Session(**payload)
        except (ValueError, KeyError, TypeError, binascii.Error, BadSignature) as exc:
            raise _invalid("session token edited or malformed") from exc
        if (session.node, session.cluster) != (
            self.node,
            self.cluster,
        ) or session.key_id != key.key_id:
            raise _invalid("session token for another node or cluster")
        if now >= session.expires_at:
            raise _invalid("session expired", "your session has expired")
        if session.issued_at > now + _CLOCK_SKEW or session.mfa_at > now + _CLOCK_SKEW:
            raise _invalid("session issued in the future")
        return session

    def _read(self) -> bytes:
        fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            if stat.S_IMODE(os.fstat(f.fileno()).st_mode) & 0o077:
                raise _invalid("session file readable by others")
            return f.read(65536)


class MemorySessionStore(SessionStore):
    """A session store holding one presented token in memory: the agent verifies the token a
    CLI sends and hands back the refreshed one (`token`), never touching the caller's files."""

    def __init__(self, token: bytes | None, *, cluster: str, node: str) -> None:
        super().__init__(Path("/nonexistent"), cluster=cluster, node=node)
        self.token = token

    def save_token(self, token: bytes) -> None:
        self.token = token

    def remove(self) -> None:
        self.token = None

    def _read(self) -> bytes:
        if self.token is None:
            raise FileNotFoundError
        return self.token


def token_bytes(session: Session, key: SigningKey) -> bytes:
    """The signed token file content of `session`."""
    payload = asdict(session)
    sig = base64.b64encode(key.sign(_CONTEXT + canonical_json(payload))).decode()
    return json.dumps({"v": 1, "payload": payload, "sig": sig}).encode() + b"\n"


def _invalid(reason: str, message: str = "your login session is not valid") -> SessionInvalid:
    return SessionInvalid(message, reason=reason)
