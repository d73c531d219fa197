"""The hash-chained audit log: SQLite in WAL mode with synchronous=FULL, signed checkpoints.

Format (version 1). One table ``entries``; each row holds seq (1, 2, ...), time (float seconds),
node, actor, kind, data (canonical JSON text), prev_hash and hash (32-byte SHA-256)::

    header = canonical JSON of [seq, time, node, actor, kind]
    hash   = SHA-256(prev_hash || header || "\\n" || data)

The first entry's prev_hash is 32 zero bytes. Every `checkpoint_every` entries or
`checkpoint_seconds` seconds a checkpoint entry (kind ``audit.checkpoint``) is appended; its data
holds the seq and hash of the entry just before it plus an Ed25519 signature by the node key over
canonical JSON ``{"hash", "node", "seq", "v": 1}``. A checkpoint is itself chained, so removing
one breaks the chain. Anyone who keeps a checkpoint (the report does) can later show that the
log was rolled back: that seq/hash is no longer in it.

One writer at a time: every append runs inside ``BEGIN IMMEDIATE`` and reads the chain tail inside
that transaction, so the agent and an embedded CLI log never fork the chain. An append returns
only after the commit (synchronous=FULL), so an acknowledged entry survives ``kill -9``.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from trainguard.core.errors import IntegrityError, UsageError
from trainguard.crypto.errors import BadSignature
from trainguard.crypto.signing import SigningKey, VerifyKey, canonical_json
from trainguard.evidence.audit_chain import (
    CHECKPOINT_KIND,
    FORMAT_VERSION,
    GENESIS,
    GENESIS_KIND,
    AuditEntry,
    AuditTampered,
    Cadence,
    Checkpoint,
    Row,
    VerifyReport,
    entry_hash,
    verify_entries,
    verify_segment,
)
from trainguard.evidence.audit_genesis import (
    AuditLogMissing,
    AuditLogReplaced,
    Genesis,
    make_genesis,
)

__all__ = [
    "CHECKPOINT_KIND",
    "AuditEntry",
    "AuditLog",
    "AuditLogInvalid",
    "AuditLogUnavailable",
    "AuditLogUnreadable",
    "AuditTampered",
    "Checkpoint",
    "VerifyReport",
    "entry_hash",
    "verify_entries",
    "verify_segment",
]

log = logging.getLogger(__name__)

_BUSY_TIMEOUT_MS = 30_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    node TEXT NOT NULL,
    actor TEXT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_kind ON entries(kind, seq);
CREATE INDEX IF NOT EXISTS entries_time ON entries(time);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


_RESTORE_TIP = (
    "keep the damaged file as evidence, then restore state/audit.db from a backup of this home "
    "(or rebuild it from an evidence export); `trainguard audit verify` reports the damage"
)


class AuditLogUnreadable(UsageError):
    """The audit log file is not an SQLite database (garbled, truncated, overwritten): commands
    that only need to write or read evidence stop with exit 2 and point at the backup."""

    def __init__(self, path: Path, exc: BaseException) -> None:
        super().__init__(f"{path} is not a valid audit log ({exc})", tip=_RESTORE_TIP)
        self.path = path
        self.reason = str(exc)

    def as_tampered(self) -> AuditLogInvalid:
        """The same failure seen by `audit verify`: evidence that cannot be read is tampering."""
        return AuditLogInvalid(
            f"{self.path} is not a valid audit log ({self.reason})",
            tip="treat this node's audit trail as tampered: keep the file as evidence, compare "
            "it with the last exported segment, then restore state/audit.db from a backup",
        )


class AuditLogInvalid(IntegrityError):
    """`audit verify` of a log file that is not a readable audit log (exit 1)."""


class AuditLogUnavailable(UsageError):
    """The audit log exists but SQLite cannot use it now (locked, no permission, I/O error)."""


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _db_error(path: Path, exc: sqlite3.DatabaseError) -> UsageError:
    """SQLite's own failure as a trainguard error: damage (exit 1 under verify, else 2) or an
    environment problem such as a lock held past the busy timeout or a permission (exit 2)."""
    if isinstance(exc, sqlite3.OperationalError):
        return AuditLogUnavailable(
            f"cannot use the audit log {path}: {exc}",
            tip="check that this user may read and write the file and its folder, and that no "
            "other process holds a long write lock on it",
        )
    return AuditLogUnreadable(path, exc)


class AuditLog:
    """The audit log of one node. Thread-safe; several processes may append (one at a time)."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        node: str,
        signer: SigningKey | None,
        *,
        clock: Callable[[], float],
        checkpoint_every: int,
        checkpoint_seconds: float,
    ) -> None:
        self._conn = conn
        self.path = path
        self.node = node
        self._signer = signer
        self._clock = clock
        self.checkpoint_every = checkpoint_every
        self.checkpoint_seconds = checkpoint_seconds
        self._lock = threading.RLock()
        self._identity = _file_identity(path)
        # Told (with the reason) when the file was deleted or swapped under this open log;
        # the embedded log keeps that as an audit-tampered incident.
        self.on_lost: Callable[[str], None] | None = None

    @classmethod
    def open(
        cls,
        db_path: Path,
        node: str,
        signer: SigningKey | None,
        *,
        clock: Callable[[], float] = time.time,
        checkpoint_every: int = 1000,
        checkpoint_seconds: float = 300.0,
    ) -> AuditLog:
        """Open (creating if needed, mode 0600) the log at `db_path`."""
        db_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not db_path.exists():
            db_path.touch(mode=0o600)
        conn = sqlite3.connect(
            str(db_path),
            isolation_level=None,
            check_same_thread=False,
            timeout=_BUSY_TIMEOUT_MS / 1000,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)
            conn.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('format', ?)",
                (str(FORMAT_VERSION),),
            )
        except sqlite3.DatabaseError as exc:  # garbled file: exit 2 with a tip, never 3
            conn.close()
            raise _db_error(db_path, exc) from exc
        return cls(
            conn,
            db_path,
            node,
            signer,
            clock=clock,
            checkpoint_every=checkpoint_every,
            checkpoint_seconds=checkpoint_seconds,
        )

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writing -------------------------------------------------------------------------

    def record(self, kind: str, actor: str, data: Mapping[str, Any]) -> None:
        """`AuditSink.record`: append and return once durable."""
        self.append(kind, actor, data)

    def append(self, kind: str, actor: str, data: Mapping[str, Any]) -> int:
        """Append one entry; returns its seq once committed to disk."""
        return self.append_many([(kind, actor, data)])[0]

    def append_many(self, events: Sequence[tuple[str, str, Mapping[str, Any]]]) -> list[int]:
        """Append several entries in one transaction (one fsync); returns their seqs."""
        if not events:
            return []
        prepared = [(str(k), str(a), canonical_json(dict(d)).decode()) for k, a, d in events]
        with self._lock:
            try:
                return self._append_locked(prepared)
            except sqlite3.DatabaseError as exc:  # damaged or unusable file: never exit 3
                raise _db_error(self.path, exc) from exc

    def _check_file(self) -> None:
        """Refuse to write once the file was deleted or swapped since it was opened: SQLite
        would keep writing into the unlinked inode, evidence nobody would ever read."""
        current = _file_identity(self.path)
        if current is not None and current == self._identity:
            return
        exc: UsageError = (
            AuditLogMissing(self.path)
            if current is None
            else AuditLogReplaced(self.path, "the file was swapped while it was open")
        )
        if self.on_lost is not None:
            self.on_lost(exc.message)
        raise exc

    def _append_locked(self, prepared: list[tuple[str, str, str]]) -> list[int]:
        self._check_file()
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            seq, prev = self._tail()
            cp_seq, cp_time = self._last_checkpoint_info()
            seqs: list[int] = []
            rows: list[Row] = []
            for kind, actor, data in prepared:
                t = float(self._clock())
                if self._stale_tail(seq, t, cp_seq, rows):
                    # Sign what waited since the last signature before adding to it, so no
                    # unsigned run spans more than checkpoint_seconds of entries, even on a
                    # node where no agent signs on a timer (the cadence `verify` enforces).
                    seq, prev = self._checkpoint_row(seq, prev, rows)
                    cp_seq, cp_time = seq, t
                seq += 1
                digest = entry_hash(prev, seq, t, self.node, actor, kind, data)
                rows.append((seq, t, self.node, actor, kind, data, prev, digest))
                seqs.append(seq)
                prev = digest
                if self._checkpoint_due(seq, t, cp_seq, cp_time):
                    seq, prev = self._checkpoint_row(seq, prev, rows)
                    cp_seq, cp_time = seq, t
            conn.executemany("INSERT INTO entries VALUES (?,?,?,?,?,?,?,?)", rows)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return seqs

    def write_genesis(self, signer: SigningKey, *, cluster: str) -> tuple[Genesis, str]:
        """Append the signed genesis: entry 1 of an empty log, or (a log made before genesis
        existed) a legacy genesis after its entries. Returns it and its chain hash."""
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                if conn.execute(
                    "SELECT 1 FROM entries WHERE kind = ? LIMIT 1", (GENESIS_KIND,)
                ).fetchone():
                    raise UsageError(
                        f"the audit log {self.path} already has a genesis",
                        tip="nothing to do: `trainguard audit verify` checks it",
                    )
                seq, prev = self._tail()
                t = float(self._clock())
                genesis = make_genesis(
                    signer, cluster=cluster, node=self.node, seq=seq + 1, prev_hash=prev,
                    created_at=t, legacy=seq > 0,
                )
                data = canonical_json(genesis.to_dict()).decode()
                actor = "trainguard-init"
                digest = entry_hash(prev, seq + 1, t, self.node, actor, GENESIS_KIND, data)
                conn.execute(
                    "INSERT INTO entries VALUES (?,?,?,?,?,?,?,?)",
                    (seq + 1, t, self.node, actor, GENESIS_KIND, data, prev, digest),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return genesis, digest.hex()

    def genesis(self) -> tuple[Genesis, int, str] | None:
        """The genesis entry (its data, seq and chain hash), or None for a log without one."""
        with self._lock:
            row = self._conn.execute(
                "SELECT seq, data, hash FROM entries WHERE kind = ? ORDER BY seq LIMIT 1",
                (GENESIS_KIND,),
            ).fetchone()
        if row is None:
            return None
        try:
            return Genesis.from_dict(json.loads(row[1])), int(row[0]), bytes(row[2]).hex()
        except (IntegrityError, ValueError):
            return None

    def hashes_at(self, seqs: Sequence[int]) -> dict[int, str]:
        """The chain hash of each entry in `seqs` that the log holds."""
        out: dict[int, str] = {}
        wanted = sorted(set(int(s) for s in seqs))
        for i in range(0, len(wanted), 500):
            chunk = wanted[i : i + 500]
            sql = f"SELECT seq, hash FROM entries WHERE seq IN ({','.join('?' * len(chunk))})"  # noqa: S608
            for seq, h in self._rows(sql, chunk):  # type: ignore[misc]
                out[int(seq)] = bytes(h).hex()
        return out

    def checkpoints_after(self, seq: int) -> list[tuple[int, Checkpoint]]:
        """Signed checkpoints in entries after `seq`: (the checkpoint entry's seq, checkpoint)."""
        sql = "SELECT seq, data FROM entries WHERE kind = ? AND seq > ? ORDER BY seq"
        out = []
        for s, data in self._rows(sql, (CHECKPOINT_KIND, int(seq))):  # type: ignore[misc]
            out.append((int(s), Checkpoint.from_dict(json.loads(data))))
        return out

    def checkpoint(self, *, force: bool = False) -> Checkpoint | None:
        """Append a signed checkpoint now if entries are unsigned and one is due (or `force`)."""
        if self._signer is None:
            return None
        with self._lock:
            self._check_file()
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                seq, prev = self._tail()
                cp_seq, cp_time = self._last_checkpoint_info()
                if seq == 0 or cp_seq == seq:
                    conn.execute("ROLLBACK")
                    return None
                t = float(self._clock())
                if (
                    not force
                    and t - cp_time < self.checkpoint_seconds
                    and seq - cp_seq < self.checkpoint_every
                ):
                    conn.execute("ROLLBACK")
                    return None
                rows: list[Row] = []
                self._checkpoint_row(seq, prev, rows)
                conn.executemany("INSERT INTO entries VALUES (?,?,?,?,?,?,?,?)", rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return Checkpoint.from_dict(json.loads(rows[0][5]))

    def _tail(self) -> tuple[int, bytes]:
        row = self._conn.execute(
            "SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        return (0, GENESIS) if row is None else (int(row[0]), bytes(row[1]))

    def _last_checkpoint_info(self) -> tuple[int, float]:
        # A genesis is signed too: the cadence counts from it like from a checkpoint.
        row = self._conn.execute(
            "SELECT seq, time FROM entries WHERE kind IN (?, ?) ORDER BY seq DESC LIMIT 1",
            (CHECKPOINT_KIND, GENESIS_KIND),
        ).fetchone()
        if row is not None:
            return int(row[0]), float(row[1])
        first = self._conn.execute("SELECT time FROM entries ORDER BY seq LIMIT 1").fetchone()
        return 0, float(first[0]) if first else self._clock()

    def _stale_tail(self, seq: int, t: float, cp_seq: int, pending: list[Row]) -> bool:
        if self._signer is None or seq <= cp_seq:
            return False
        first = next((r[1] for r in pending if r[0] == cp_seq + 1), None)
        if first is None:
            row = self._conn.execute(
                "SELECT time FROM entries WHERE seq = ?", (cp_seq + 1,)
            ).fetchone()
            if row is None:
                return False
            first = float(row[0])
        return t - first >= self.checkpoint_seconds

    def _checkpoint_due(self, seq: int, t: float, cp_seq: int, cp_time: float) -> bool:
        if self._signer is None:
            return False
        return seq - cp_seq >= self.checkpoint_every or t - cp_time >= self.checkpoint_seconds

    def _checkpoint_row(self, seq: int, prev: bytes, rows: list[Row]) -> tuple[int, bytes]:
        assert self._signer is not None
        every, seconds = self.checkpoint_every, float(self.checkpoint_seconds)
        unsigned = Checkpoint(self.node, seq, prev.hex(), self._signer.key_id, "", every, seconds)
        sig = self._signer.sign(unsigned.payload()).hex()
        cp = Checkpoint(self.node, seq, prev.hex(), self._signer.key_id, sig, every, seconds)
        data = canonical_json(cp.to_dict()).decode()
        t = float(self._clock())
        seq += 1
        digest = entry_hash(prev, seq, t, self.node, "trainguard-agent", CHECKPOINT_KIND, data)
        rows.append((seq, t, self.node, "trainguard-agent", CHECKPOINT_KIND, data, prev, digest))
        return seq, digest

    # ---- reading -------------------------------------------------------------------------

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> Iterator[Row]:
        # A private read connection so a long iteration never blocks writers in this process.
        conn = sqlite3.connect(
            f"file:{self.path}?mode=ro",
            uri=True,
            timeout=_BUSY_TIMEOUT_MS / 1000,
            check_same_thread=False,  # a half-read generator may be finalised on another thread
        )
        try:
            conn.execute("BEGIN")  # one consistent snapshot for the whole read
            yield from conn.execute(sql, params)
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:  # pages damaged after the header was read
            raise _db_error(self.path, exc) from exc
        finally:
            conn.close()

    def entries(
        self,
        since: float | None = None,
        kind: str | None = None,
        *,
        after_seq: int = 0,
        limit: int | None = None,
    ) -> Iterator[AuditEntry]:
        """Entries in seq order; `since` is a time (seconds since the epoch), `kind` exact or a
        prefix ending in ``.`` / ``*`` (``policy.*``)."""
        where = ["seq > ?"]
        params: list[Any] = [after_seq]
        if since is not None:
            where.append("time >= ?")
            params.append(since)
        if kind:
            if kind.endswith(("*", ".")):
                where.append("kind LIKE ?")
                params.append(kind.rstrip("*").replace("%", r"\%").replace("_", r"\_") + "%")
                where[-1] += " ESCAPE '\\'"
            else:
                where.append("kind = ?")
                params.append(kind)
        sql = f"SELECT * FROM entries WHERE {' AND '.join(where)} ORDER BY seq"  # noqa: S608
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        for seq, t, node, actor, k, data, prev, h in self._rows(sql, params):
            yield AuditEntry(
                seq, t, node, actor, k, json.loads(data), bytes(prev).hex(), bytes(h).hex()
            )

    def latest(self, kind: str, limit: int = 50) -> list[AuditEntry]:
        """The newest `limit` entries of exactly `kind`, newest first."""
        sql = "SELECT * FROM entries WHERE kind = ? ORDER BY seq DESC LIMIT ?"
        return [
            AuditEntry(seq, t, node, actor, k, json.loads(data), bytes(p).hex(), bytes(h).hex())
            for seq, t, node, actor, k, data, p, h in self._rows(sql, (kind, int(limit)))
        ]

    def raw_rows(self, first_seq: int = 1, last_seq: int | None = None) -> Iterator[Row]:
        sql = "SELECT * FROM entries WHERE seq >= ? AND seq <= ? ORDER BY seq"
        yield from self._rows(sql, (first_seq, last_seq if last_seq is not None else 2**62))

    def last_seq(self) -> int:
        with self._lock:
            return self._tail()[0]

    def latest_checkpoint(self) -> Checkpoint | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT data FROM entries WHERE kind = ? ORDER BY seq DESC LIMIT 1",
                (CHECKPOINT_KIND,),
            ).fetchone()
        return None if row is None else Checkpoint.from_dict(json.loads(row[0]))

    def verify(
        self,
        verify_key: VerifyKey | None,
        *,
        trusted_checkpoint: Checkpoint | None = None,
        require_genesis: bool = False,
        cadence: Cadence | None = None,
    ) -> VerifyReport:
        """Check the whole chain and every checkpoint signature; raise `AuditTampered` naming
        the first bad seq. With `trusted_checkpoint` (saved earlier), also detect a rollback;
        `require_genesis` and `cadence` as in `verify_entries`."""
        if trusted_checkpoint is not None and verify_key is not None:
            try:
                trusted_checkpoint.verify(verify_key)
            except BadSignature as exc:
                raise AuditTampered(
                    trusted_checkpoint.seq, "saved checkpoint is not signed by the node key"
                ) from exc
        rows = self.raw_rows()
        return verify_entries(
            rows,
            verify_key,
            trusted_checkpoint=trusted_checkpoint,
            anchor=GENESIS,
            require_genesis=require_genesis,
            cadence=cadence,
        )

    def export_segment(self, first_seq: int = 1, last_seq: int | None = None) -> dict[str, Any]:
        """A log segment plus the latest checkpoint inside it (the evidence the report pulls)."""
        entries = [
            {
                "seq": s,
                "time": t,
                "node": n,
                "actor": a,
                "kind": k,
                "data": d,
                "prev_hash": bytes(p).hex(),
                "hash": bytes(h).hex(),
            }
            for s, t, n, a, k, d, p, h in self.raw_rows(first_seq, last_seq)
        ]
        cps = [e for e in entries if e["kind"] == CHECKPOINT_KIND]
        return {
            "format": FORMAT_VERSION,
            "node": self.node,
            "entries": entries,
            "checkpoint": json.loads(str(cps[-1]["data"])) if cps else None,
        }
