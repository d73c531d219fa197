"""The user store: identities, TOTP enrolment state, failed attempts and recovery codes.

SQLite at ``home.users_db`` (0600). Role assignments live in the signed policy (``g`` lines);
the ``roles`` table here mirrors them for read-only consumers such as the posture check
("privileged users without MFA") and is re-synced whenever the policy is saved.

Schema (version 2)::

    users(name PK, uid UNIQUE, kind, created_at, totp_secret BLOB, enrolled_at,
          last_step INTEGER, locked_at, os_uid INTEGER UNIQUE, totp_format INTEGER)
    roles(name, role, domain)
    auth_failures(name, at)        -- also for names that are no user (same delays for all)
    recovery_codes(id PK, name, salt BLOB, hash BLOB, used_at)
    meta(key PK, value)            -- "version": bumped by every change of who may do what

``os_uid`` maps an operating-system account to this user: a caller of the agent's socket may
log in only as the user its uid (SO_PEERCRED) maps to. ``totp_secret`` is
``Keyring.encrypt_small(secret, aad)`` with the AAD bound to the user's name, uid and OS uid
(`trainguard.policy.mfa`), so a secret or uid copied onto another row does not decrypt.
``meta.version`` only grows; the access layer records it in the audit log and refuses a user
database older than the newest version recorded there (a restored or swapped copy). ``last_step`` is the newest accepted
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
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

# Columns added after schema version 1 (ALTER TABLE on open, idempotent).
_ADDED_COLUMNS = (
    ("os_uid", "ALTER TABLE users ADD COLUMN os_uid INTEGER"),
    ("totp_format", "ALTER TABLE users ADD COLUMN totp_format INTEGER NOT NULL DEFAULT 1"),
)
_SCHEMA_VERSION = 2


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
                _migrate(db)
            except sqlite3.DatabaseError as exc:  # a garbled file: exit 2 with a tip, not 3
                db.close()
                raise PolicyError(
                    f"{self.path} is not a usable user database ({exc})",
                    tip="restore state/users.db from a backup of this home",
                ) from exc
            self._db = db
        return self._db

    @contextlib.contextmanager
    def _changing(self) -> Iterator[sqlite3.Connection]:
        """A transaction that changes who may do what: bumps ``meta.version`` with it."""
        with self._tx() as db:
            yield db
            db.execute(
                "INSERT INTO meta(key, value) VALUES ('version', 1) "
                "ON CONFLICT(key) DO UPDATE SET value = value + 1"
            )

    def version(self) -> int:
        """The store's change counter (0 for a store never changed since version 2)."""
        row = self._conn().execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        return int(row[0]) if row else 0

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
    def add(self, name: str, *, kind: str = "user", os_uid: int | None = None) -> str:
        """Create a user; returns its uid. Raises `UnknownName` if the name or the OS uid is
        taken."""
        check_name("user", name)
        if os_uid is not None:
            self._check_os_uid_free(os_uid, name)
        uid = secrets.token_hex(16)
        try:
            with self._changing() as db:
                db.execute(
                    "INSERT INTO users(name, uid, kind, created_at, os_uid, totp_format) "
                    "VALUES (?, ?, ?, ?, ?, 2)",
                    (name, uid, kind, self._clock(), os_uid),
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

    # -- operating-system accounts --------------------------------------------------------
    def _check_os_uid_free(self, os_uid: int, name: str) -> None:
        if not 0 <= os_uid < 2**32:
            raise UnknownName(f"{os_uid} is not an operating-system uid", tip="see `id -u NAME`")
        other = self.name_for_os_uid(os_uid)
        if other is not None and other != name:
            raise UnknownName(
                f"OS uid {os_uid} already maps to user {other!r}",
                tip="one OS account maps to one trainguard user; unmap the other first",
            )

    def map_os_uid(self, name: str, os_uid: int | None) -> None:
        """Map (or with None, unmap) the OS account that may log in as `name`."""
        if os_uid is not None:
            self._check_os_uid_free(os_uid, name)
        with self._changing() as db:
            cur = db.execute("UPDATE users SET os_uid = ? WHERE name = ?", (os_uid, name))
            if cur.rowcount == 0:
                raise UnknownName(f"no user named {name!r}", tip="see `trainguard user list`")

    def os_uid(self, name: str) -> int | None:
        row = self._conn().execute("SELECT os_uid FROM users WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise UnknownName(f"no user named {name!r}", tip="see `trainguard user list`")
        return None if row[0] is None else int(row[0])

    def name_for_os_uid(self, os_uid: int) -> str | None:
        row = self._conn().execute("SELECT name FROM users WHERE os_uid = ?", (os_uid,)).fetchone()
        return None if row is None else str(row[0])

    def remove(self, name: str) -> None:
        with self._changing() as db:
            cur = db.execute("DELETE FROM users WHERE name = ?", (name,))
            if cur.rowcount == 0:
                raise UnknownName(f"no user named {name!r}", tip="see `trainguard user list`")
            for table in ("roles", "auth_failures", "recovery_codes"):
                db.execute(f"DELETE FROM {table} WHERE name = ?", (name,))  # noqa: S608

    def sync_roles(self, rules: PolicyRules) -> None:
        """Mirror the policy's role links of known users into the `roles` table."""
        with self._changing() as db:
            users = {r[0] for r in db.execute("SELECT name FROM users")}
            db.execute("DELETE FROM roles")
            db.executemany(
                "INSERT INTO roles(name, role, domain) VALUES (?, ?, ?)",
                [(lk.member, lk.role, lk.domain) for lk in rules.links if lk.member in users],
            )

    # -- TOTP state -----------------------------------------------------------------------
    def set_totp(self, name: str, blob: bytes, *, fmt: int = 2) -> None:
        with self._changing() as db:
            cur = db.execute(
                "UPDATE users SET totp_secret = ?, enrolled_at = ?, last_step = -1, totp_format = ?"
                " WHERE name = ?",
                (blob, self._clock(), fmt, name),
            )
            if cur.rowcount == 0:
                raise UnknownName(f"no user named {name!r}", tip="see `trainguard user list`")

    def totp_blob(self, name: str) -> tuple[bytes, int] | None:
        """The encrypted TOTP secret and its AAD format (1: legacy, uid only; 2: bound)."""
        row = (
            self._conn()
            .execute("SELECT totp_secret, totp_format FROM users WHERE name = ?", (name,))
            .fetchone()
        )
        return None if row is None or row[0] is None else (bytes(row[0]), int(row[1]))

    def rewrap_totp(self, name: str, blob: bytes) -> None:
        """Replace a legacy secret by the same secret under the bound AAD (no version bump:
        nothing about who may do what changes)."""
        with self._tx() as db:
            db.execute(
                "UPDATE users SET totp_secret = ?, totp_format = 2 WHERE name = ?", (blob, name)
            )

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
        with self._changing() as db:
            cur = db.execute("UPDATE users SET locked_at = NULL WHERE name = ?", (name,))
            if cur.rowcount == 0:
                raise UnknownName(f"no user named {name!r}", tip="see `trainguard user list`")
            db.execute("DELETE FROM auth_failures WHERE name = ?", (name,))

    def is_locked(self, name: str) -> bool:
        row = self._conn().execute("SELECT locked_at FROM users WHERE name = ?", (name,)).fetchone()
        return row is not None and row[0] is not None

    # -- recovery codes -------------------------------------------------------------------
    def replace_recovery_codes(self, name: str, hashed: list[tuple[bytes, bytes]]) -> None:
        with self._changing() as db:
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


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a version-1 store to version 2 (added columns, the unique OS-uid index)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(users)")}
    for name, ddl in _ADDED_COLUMNS:
        if name not in columns:
            db.execute(ddl)
    db.execute("CREATE UNIQUE INDEX IF NOT EXISTS users_os_uid ON users(os_uid)")
    db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
