"""The user store: identities, TOTP enrolment state, failed attempts and recovery codes.

SQLite at ``home.users_db`` (0600). Role assignments live in the signed policy (``g`` lines);
the ``roles`` table here mirrors them for read-only consumers such as the posture check
("privileged users without MFA") and is re-synced whenever the policy is saved.

Schema (version 1)::

    users(name PK, uid UNIQUE, kind, created_at, totp_secret BLOB, enrolled_at,
          last_step INTEGER, locked_at)
    roles(name, role, domain)
    auth_failures(name, at)
    recovery_codes(id PK, name, salt BLOB, hash BLOB, used_at)

``totp_secret`` is ``Keyring.encrypt_small(secret, aad=b"trainguard/totp/v1/" + uid)``, so a
secret copied onto another user row does not decrypt. ``last_step`` is the newest accepted
TOTP time step: a code is accepted only by ``UPDATE ... WHERE last_step < step`` (atomic, so
two concurrent logins with one code cannot both win).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from trainguard.core.errors import PolicyError
from trainguard.policy.errors import UnknownName
from trainguard.policy.rules import PolicyRules, check_name

__all__ = ["UserRecord", "UserStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    uid TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL DEFAULT 'user',
    created_at REAL NOT NULL,
    totp_secret BLOB,
    enrolled_at REAL,
    last_step INTEGER NOT NULL DEFAULT -1,
    locked_at REAL
);
CREATE TABLE IF NOT EXISTS roles (name TEXT NOT NULL, role TEXT NOT NULL, domain TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS auth_failures (name TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS auth_failures_name ON auth_failures(name, at);
CREATE TABLE IF NOT EXISTS recovery_codes (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    salt BLOB NOT NULL,
    hash BLOB NOT NULL,
    used_at REAL
);
PRAGMA user_version = 1;
"""


@dataclass(frozen=True)
class UserRecord:
    """One user as `user list` and the posture check see it (no secrets)."""

    name: str
    uid: str
    kind: str
    created_at: float
    mfa_enrolled: bool
    locked: bool
    roles: tuple[str, ...] = ()
    assignments: tuple[tuple[str, str], ...] = ()  # (role, domain)


_SELECT_USERS = (
    "SELECT name, uid, kind, created_at, totp_secret IS NOT NULL, locked_at IS NOT NULL FROM users "
)


class UserStore:
    """Users in SQLite. Every write is one short transaction."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._db: sqlite3.Connection | None = None

    # -- plumbing -------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            new = not self.path.exists()
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if new:
                fd = os.open(self.path, os.O_CREAT | os.O_WRONLY | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                os.close(fd)
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.executescript(_SCHEMA)
            except sqlite3.DatabaseError as exc:  # a garbled file: exit 2 with a tip, not 3
                db.close()
                raise PolicyError(
                    f"{self.path} is not a usable user database ({exc})",
                    tip="restore state/users.db from a backup of this home",
                ) from exc
            self._db = db
        return self._db

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- users ----------------------------------------------------------------------------
    def add(self, name: str, *, kind: str = "user") -> str:
        """Create a user; returns its uid. Raises `UnknownName` if the name is taken."""
        check_name("user", name)
        uid = secrets.token_hex(16)
        try:
            with self._tx() as db:
                db.execute(
                    "INSERT INTO users(name, uid, kind, created_at) VALUES (?, ?, ?, ?)",
                    (name, uid, kind, self._clock()),
                )
        except sqlite3.IntegrityError as exc:
            raise UnknownName(
                f"a user named {name!r} already exists",
                tip="pick another name, or `trainguard user list`",
            ) from exc
        return uid

    def exists(self, name: str) -> bool:
        row = self._conn().execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone()
        return row is not None

    def get(self, name: str) -> UserRecord:
        """The user, or `UnknownName`."""
        for rec in self._records("WHERE name = ?", (name,)):
            return rec
        raise UnknownName(f"no user named {name!r}", tip="see `trainguard user list`")

    def uid(self, name: str) -> str:
        return self.get(name).uid

    def list_users(self) -> list[UserRecord]:
        return self._records("ORDER BY name", ())

    def names(self) -> set[str]:
        return {r[0] for r in self._conn().execute("SELECT name FROM users")}

    def _records(self, where: str, params: tuple[str, ...]) -> list[UserRecord]:
        db = self._conn()
        rows = db.execute(
            _SELECT_USERS + where,  # `where` is one of two literals in this module
            params,
        ).fetchall()
        out = []
        for name, uid, kind, created, enrolled, locked in rows:
            pairs = tuple(
                (r, d)
                for r, d in db.execute(
                    "SELECT role, domain FROM roles WHERE name = ? ORDER BY domain, role", (name,)
                )
            )
            roles = tuple(dict.fromkeys(r for r, _ in pairs))
            out.append(
                UserRecord(name, uid, kind, created, bool(enrolled), bool(locked), roles, pairs)
            )
        return out

    def remove(self, name: str) -> None:
        with self._tx() as db:
            cur = db.execute("DELETE FROM users WHERE name = ?", (name,))
            if cur.rowcount == 0:
                raise UnknownName(f"no user named {name!r}", tip="see `trainguard user list`")
            for table in ("roles", "auth_failures", "recovery_codes"):
                db.execute(f"DELETE FROM {table} WHERE name = ?", (name,))  # noqa: S608

    def sync_roles(self, rules: PolicyRules) -> None:
        """Mirror the policy's role links of known users into the `roles` table."""
        with self._tx() as db:
            users = {r[0] for r in db.execute("SELECT name FROM users")}
            db.execute("DELETE FROM roles")
            db.executemany(
                "INSERT INTO roles(name, role, domain) VALUES (?, ?, ?)",
                [(lk.member, lk.role, lk.domain) for lk in rules.links if lk.member in users],
            )

    # -- TOTP state -----------------------------------------------------------------------
    def set_totp(self, name: str, blob: bytes) -> None:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE users SET totp_secret = ?, enrolled_at = ?, last_step = -1 WHERE name = ?",
                (blob, self._clock(), name),
            )
            if cur.rowcount == 0:
                raise UnknownName(f"no user named {name!r}", tip="see `trainguard user list`")

    def totp_blob(self, name: str) -> bytes | None:
        row = (
            self._conn().execute("SELECT totp_secret FROM users WHERE name = ?", (name,)).fetchone()
        )
        return None if row is None or row[0] is None else bytes(row[0])

    def claim_step(self, name: str, step: int) -> bool:
        """Record `step` as used; False if it (or a later one) was used already."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE users SET last_step = ? WHERE name = ? AND last_step < ?",
                (step, name, step),
            )
            return cur.rowcount == 1

    # -- failures and lockout -------------------------------------------------------------
    def add_failure(self, name: str, at: float) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO auth_failures(name, at) VALUES (?, ?)", (name, at))

    def failures_since(self, name: str, since: float) -> list[float]:
        rows = self._conn().execute(
            "SELECT at FROM auth_failures WHERE name = ? AND at >= ? ORDER BY at", (name, since)
        )
        return [r[0] for r in rows]

    def clear_failures(self, name: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM auth_failures WHERE name = ?", (name,))

    def lock(self, name: str, at: float) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE users SET locked_at = ? WHERE name = ? AND locked_at IS NULL", (at, name)
            )

    def unlock(self, name: str) -> None:
        with self._tx() as db:
            cur = db.execute("UPDATE users SET locked_at = NULL WHERE name = ?", (name,))
            if cur.rowcount == 0:
                raise UnknownName(f"no user named {name!r}", tip="see `trainguard user list`")
            db.execute("DELETE FROM auth_failures WHERE name = ?", (name,))

    def is_locked(self, name: str) -> bool:
        row = self._conn().execute("SELECT locked_at FROM users WHERE name = ?", (name,)).fetchone()
        return row is not None and row[0] is not None

    # -- recovery codes -------------------------------------------------------------------
    def replace_recovery_codes(self, name: str, hashed: list[tuple[bytes, bytes]]) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM recovery_codes WHERE name = ?", (name,))
            db.executemany(
                "INSERT INTO recovery_codes(name, salt, hash) VALUES (?, ?, ?)",
                [(name, salt, digest) for salt, digest in hashed],
            )

    def unused_recovery_codes(self, name: str) -> list[tuple[int, bytes, bytes]]:
        rows = self._conn().execute(
            "SELECT id, salt, hash FROM recovery_codes WHERE name = ? AND used_at IS NULL", (name,)
        )
        return [(r[0], bytes(r[1]), bytes(r[2])) for r in rows]

    def use_recovery_code(self, code_id: int, at: float) -> bool:
        with self._tx() as db:
            cur = db.execute(
                "UPDATE recovery_codes SET used_at = ? WHERE id = ? AND used_at IS NULL",
                (at, code_id),
            )
            return cur.rowcount == 1
