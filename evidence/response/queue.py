"""The durable webhook queue: every incident POST is stored before it is sent, and retried with
exponential backoff until the endpoint accepts it, so an outage of any length loses nothing.

Each delivery has an idempotency key (the incident id); enqueueing the same key twice is a no-op,
and the receiver sees the key as ``webhook-id``, so a retry after a lost reply is recognisable:
delivery is at least once, and exactly once for a receiver that keeps the ids it has accepted.
Backoff: ``retry_base_seconds * 2**attempts``, capped at ``retry_max_seconds``; nothing is ever
dropped (the queue keeps pending deliveries across restarts).

Deliveries are signed in the Standard Webhooks format (https://www.standardwebhooks.com):
``webhook-id`` (the idempotency key), ``webhook-timestamp`` (integer Unix seconds of this
attempt, so a retry after a long outage still passes a receiver's freshness check) and
``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``. The secret is the
content of `webhook_secret_file`: ``whsec_<base64>`` (the Standard Webhooks form; the key is the
decoded bytes) or any other string (used as the key bytes as they are). A receiver recomputes
the signature, compares it in constant time, and rejects timestamps more than 5 minutes away
from its clock and ids it has already accepted: a captured delivery cannot be replayed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from trainguard.core.errors import UsageError

__all__ = [
    "ID_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "DeliveryQueue",
    "Transport",
    "WebhookSender",
    "sign_webhook",
    "urllib_transport",
    "webhook_key",
]

log = logging.getLogger(__name__)

# Standard Webhooks headers
ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
_SECRET_PREFIX = b"whsec_"

# (url, body, headers, timeout) -> HTTP status; raises OSError when the endpoint is unreachable.
Transport = Callable[[str, bytes, Mapping[str, str], float], int]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    url TEXT NOT NULL,
    body BLOB NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    last_error TEXT NOT NULL DEFAULT '',
    delivered_at REAL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(state, next_attempt);
"""


def webhook_key(secret: bytes) -> bytes:
    """The HMAC key of a webhook secret: the base64-decoded part of ``whsec_<base64>``, or the
    secret's bytes as they are.

    Raises:
        UsageError: the secret says ``whsec_`` but the rest is not base64, or it is empty.
    """
    if not secret.startswith(_SECRET_PREFIX):
        return secret
    try:
        key = base64.b64decode(secret[len(_SECRET_PREFIX) :], validate=True)
    except binascii.Error:
        key = b""
    if not key:
        # Never fall back to unsigned (or to signing with the literal text): fail closed.
        raise UsageError(
            "the webhook secret starts with whsec_ but the rest is not base64",
            tip="write whsec_ followed by the base64 of the key into webhook_secret_file, "
            "e.g. `echo whsec_$(head -c 32 /dev/urandom | base64)`",
        )
    return key


def sign_webhook(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def urllib_transport(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
    """POST with the standard library; returns the HTTP status."""
    req = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - http(s) only, validated in config
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except urllib.error.URLError as exc:
        raise ConnectionError(str(exc.reason)) from exc


@dataclass(frozen=True)
class Delivery:
    id: int
    key: str
    url: str
    body: bytes
    attempts: int


class DeliveryQueue:
    """SQLite-backed queue (WAL, synchronous=FULL) at `home.queue_db`."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.exists():
            path.touch(mode=0o600)
        self._conn = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False, timeout=30
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)
        self._clock = clock
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def enqueue(self, key: str, url: str, body: bytes) -> bool:
        """Store a delivery; False when `key` is already queued or delivered."""
        now = self._clock()
        with self._lock:
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO deliveries(key, url, body, created, next_attempt) "
                "VALUES (?, ?, ?, ?, ?)",
                (key, url, body, now, now),
            )
        return cur.rowcount == 1

    def due(self, limit: int = 100) -> list[Delivery]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, key, url, body, attempts FROM deliveries "
                "WHERE state = 'pending' AND next_attempt <= ? ORDER BY id LIMIT ?",
                (self._clock(), limit),
            ).fetchall()
        return [Delivery(int(r[0]), r[1], r[2], bytes(r[3]), int(r[4])) for r in rows]

    def mark_delivered(self, delivery_id: int) -> None:
        with self._lock:
            self._conn.execute(
                "UPDATE deliveries SET state='delivered', delivered_at=?, attempts=attempts+1 "
                "WHERE id=?",
                (self._clock(), delivery_id),
            )

    def mark_failed(self, delivery_id: int, error: str, next_attempt: float) -> None:
        with self._lock:
            self._conn.execute(
                "UPDATE deliveries SET attempts=attempts+1, last_error=?, next_attempt=? WHERE id=?",
                (error[:500], next_attempt, delivery_id),
            )

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT state, COUNT(*) FROM deliveries GROUP BY state"
            ).fetchall()
        out = {"pending": 0, "delivered": 0}
        out.update({str(s): int(n) for s, n in rows})
        return out

    def prune(self, delivered_before: float) -> int:
        """Forget deliveries delivered before `delivered_before`; pending ones are never touched.
        Their keys may be queued again afterwards, so only callers whose keys never come back
        (the exporters' sequence numbers) prune."""
        with self._lock:
            cur = self._conn.execute(
                "DELETE FROM deliveries WHERE state='delivered' AND delivered_at < ?",
                (delivered_before,),
            )
        return int(cur.rowcount)

    def next_due(self) -> float | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT MIN(next_attempt) FROM deliveries WHERE state='pending'"
            ).fetchone()
        return None if row is None or row[0] is None else float(row[0])


class WebhookSender:
    """Sends due deliveries; failed ones wait base * 2**attempts seconds (capped) and retry."""

    def __init__(
        self,
        queue: DeliveryQueue,
        secret: bytes | None,
        *,
        transport: Transport = urllib_transport,
        clock: Callable[[], float] = time.time,
        base_seconds: float = 2.0,
        max_seconds: float = 300.0,
        timeout: float = 5.0,
    ) -> None:
        self.queue = queue
        self._key = webhook_key(secret) if secret else None
        self._transport = transport
        self._clock = clock
        self._base = base_seconds
        self._max = max_seconds
        self._timeout = timeout
        self._draining = threading.Lock()  # one drain at a time: a due delivery is sent once

    def backoff(self, attempts: int) -> float:
        return float(min(self._max, self._base * (2 ** min(attempts, 30))))

    def headers(self, key: str, body: bytes) -> dict[str, str]:
        timestamp = int(self._clock())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "trainguard-agent",
            ID_HEADER: key,
            TIMESTAMP_HEADER: str(timestamp),
        }
        if self._key:
            headers[SIGNATURE_HEADER] = sign_webhook(self._key, key, timestamp, body)
        return headers

    def drain(self, limit: int = 100) -> tuple[list[str], int]:
        """Try every due delivery once; returns (keys delivered, number failed). Concurrent
        callers (the agent's delivery task, an incident answered inline) take turns."""
        with self._draining:
            return self._drain(limit)

    def _drain(self, limit: int) -> tuple[list[str], int]:
        delivered: list[str] = []
        failed = 0
        for d in self.queue.due(limit):
            try:
                status = self._transport(d.url, d.body, self.headers(d.key, d.body), self._timeout)
                error = "" if 200 <= status < 300 else f"HTTP {status}"
            except OSError as exc:  # refused, reset, timeout: all mean "try again later"
                error = f"{type(exc).__name__}: {exc}"
            if not error:
                self.queue.mark_delivered(d.id)
                delivered.append(d.key)
                continue
            wait = self.backoff(d.attempts)
            self.queue.mark_failed(d.id, error, self._clock() + wait)
            log.warning("webhook delivery %s failed (%s); retry in %.0f s", d.key, error, wait)
            failed += 1
        return delivered, failed
