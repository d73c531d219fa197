"""Webhook delivery: an endpoint that refuses for a while, then recovers, receives every incident
exactly once, signed, in order; nothing is lost across an agent restart."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import socket
import threading
from collections.abc import Iterator

import pytest
from trainguard.core.home import Home
from trainguard.crypto.signing import SigningKey
from trainguard.evidence.audit_log import AuditLog
from trainguard.evidence.response.config import HooksConfig
from trainguard.evidence.response.engine import IncidentEngine
from trainguard.evidence.response.queue import DeliveryQueue, WebhookSender

SECRET = b"s3cret-webhook-key"


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


class Endpoint:
    """A real HTTP server on 127.0.0.1 that answers 503 while `down` and 200 after."""

    def __init__(self, port: int) -> None:
        self.down = True
        self.accepted: list[str] = []
        self.bad_signatures = 0
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                # Standard Webhooks: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">
                signed = f"{self.headers['webhook-id']}.{self.headers['webhook-timestamp']}."
                mac = hmac.new(SECRET, signed.encode() + body, hashlib.sha256).digest()
                if self.headers.get("webhook-signature") != "v1," + base64.b64encode(mac).decode():
                    endpoint.bad_signatures += 1
                if endpoint.down:
                    self.send_response(503)
                else:
                    endpoint.accepted.append(self.headers["webhook-id"])
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def port() -> Iterator[int]:
    yield _free_port()


def test_outage_then_recovery_delivers_each_incident_exactly_once(
    home: Home, signer: SigningKey, port: int
) -> None:
    clock = Clock()
    url = f"http://127.0.0.1:{port}/hook"
    hooks = HooksConfig(
        actions={"*": ["webhook"]},
        webhook_url=url,
        retry_base_seconds=2,
        retry_max_seconds=300,
        webhook_timeout_seconds=2,
    )
    log = AuditLog.open(home.audit_db, "node-1", signer, clock=clock)
    engine = IncidentEngine(home, log, node="node-1", hooks=hooks, clock=clock, secret=SECRET)
    ids = []
    # Phase 1: nothing listens on the port (connection refused), for an hour of fake time.
    for i in range(5):
        ids.append(engine.report("exfiltration", "high", {"bytes": i}).id)
        clock.t += 1
    for _ in range(20):
        clock.t += 300
        engine.deliver_webhooks()
    assert engine.queue.counts() == {"pending": 5, "delivered": 0}
    # Phase 2: the endpoint is up but answers 503. The agent restarts meanwhile (new queue object).
    endpoint = Endpoint(port)
    try:
        engine.close()
        engine = IncidentEngine(home, log, node="node-1", hooks=hooks, clock=clock, secret=SECRET)
        for _ in range(3):
            clock.t += 300
            engine.deliver_webhooks()
        assert endpoint.accepted == []
        # Phase 3: it recovers. Keep draining as the daemon would.
        endpoint.down = False
        for _ in range(5):
            clock.t += 300
            engine.deliver_webhooks()
        assert sorted(endpoint.accepted) == sorted(ids)  # every one, exactly once
        assert endpoint.bad_signatures == 0
        assert engine.queue.counts() == {"pending": 0, "delivered": 5}
        delivered = [e.data["key"] for e in log.entries(kind="webhook.delivered")]
        assert sorted(delivered) == sorted(ids)
    finally:
        endpoint.close()
        engine.close()


def test_backoff_grows_and_is_capped(home: Home) -> None:
    clock = Clock()
    calls: list[float] = []

    def refuse(url: str, body: bytes, headers: object, timeout: float) -> int:
        calls.append(clock.t)
        raise ConnectionRefusedError("refused")

    q = DeliveryQueue(home.queue_db, clock=clock)
    q.enqueue("k", "http://127.0.0.1:9/", b"{}")
    sender = WebhookSender(q, None, transport=refuse, clock=clock, base_seconds=2, max_seconds=30)
    for _ in range(200):
        sender.drain()
        clock.t += 1
    gaps = [b - a for a, b in zip(calls, calls[1:], strict=False)]
    assert gaps[:4] == [2, 4, 8, 16]
    assert max(gaps) == 30
    assert q.counts()["pending"] == 1
