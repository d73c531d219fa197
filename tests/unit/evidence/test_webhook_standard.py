"""Webhooks in the Standard Webhooks format, checked by a receiver written here from the spec
(it never calls trainguard's signer): deliveries verify, a replayed or stale delivery is
rejected, a retry after a long outage is fresh, and a tampered body fails."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import threading
from collections.abc import Callable, Iterator

import pytest
from trainguard.core.errors import UsageError
from trainguard.core.home import Home
from trainguard.evidence.response.queue import DeliveryQueue, WebhookSender, urllib_transport

KEY = bytes(range(32))
SECRET = b"whsec_" + base64.b64encode(KEY)
TOLERANCE = 300  # seconds: what the README tells receivers to enforce


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


class Receiver:
    """A Standard Webhooks receiver: recompute the HMAC over "{id}.{timestamp}.{body}" with the
    base64-decoded whsec_ key, compare in constant time against every v1 signature offered,
    reject timestamps more than 5 minutes off and ids already accepted."""

    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now
        self.seen: set[str] = set()
        self.accepted: list[tuple[dict[str, str], bytes]] = []
        self.verdicts: list[str] = []
        self.down = False
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status, verdict = receiver.check(dict(self.headers.items()), body)
                receiver.verdicts.append(verdict)
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def check(self, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        if self.down:
            return 503, "down"
        h = {k.lower(): v for k, v in headers.items()}
        msg_id, stamp, sigs = h.get("webhook-id"), h.get("webhook-timestamp"), h.get("webhook-signature")
        if not msg_id or not stamp or not sigs or not stamp.isdigit():
            return 400, "missing headers"
        if abs(self.now() - int(stamp)) > TOLERANCE:
            return 401, "stale timestamp"
        key = base64.b64decode(SECRET.removeprefix(b"whsec_"))
        expected = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
        offered = [s.split(",", 1) for s in sigs.split(" ")]
        if not any(v == "v1" and hmac.compare_digest(base64.b64decode(sig), expected)
                   for v, sig in offered):
            return 401, "bad signature"
        if msg_id in self.seen:
            return 409, "replayed id"
        self.seen.add(msg_id)
        self.accepted.append((h, body))
        return 200, "ok"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def receiver(clock: Clock) -> Iterator[Receiver]:
    r = Receiver(clock)
    yield r
    r.close()


def _sender(home: Home, clock: Clock, secret: bytes | None = SECRET) -> WebhookSender:
    return WebhookSender(DeliveryQueue(home.queue_db, clock=clock), secret, clock=clock,
                         base_seconds=2, max_seconds=60, timeout=2)


def _post(url: str, headers: dict[str, str], body: bytes) -> int:
    return urllib_transport(url, body, headers, 2.0)


def test_delivery_verifies_and_a_replay_is_rejected(
    home: Home, clock: Clock, receiver: Receiver
) -> None:
    sender = _sender(home, clock)
    sender.queue.enqueue("inc-1", receiver.url, b'{"id":"inc-1","kind":"gpu-misuse"}')
    assert sender.drain() == (["inc-1"], 0)
    assert receiver.verdicts == ["ok"]
    headers, body = receiver.accepted[0]
    assert headers["webhook-id"] == "inc-1"  # the idempotency key
    assert headers["webhook-timestamp"] == str(int(clock.t))
    assert headers["webhook-signature"].startswith("v1,")
    replay = {k: headers[k] for k in ("webhook-id", "webhook-timestamp", "webhook-signature")}
    # Replayed at once: the id was already accepted.
    assert _post(receiver.url, replay, body) == 409
    # Replayed later (a captured request, or a receiver that forgot its ids): too old.
    receiver.seen.clear()
    clock.t += TOLERANCE + 1
    assert _post(receiver.url, replay, body) == 401
    assert receiver.verdicts[-1] == "stale timestamp"
    # Re-stamping it is no use without the key.
    assert _post(receiver.url, {**replay, "webhook-timestamp": str(int(clock.t))}, body) == 401
    assert receiver.verdicts[-1] == "bad signature"


def test_tampered_body_is_rejected(home: Home, clock: Clock, receiver: Receiver) -> None:
    sender = _sender(home, clock)
    headers = sender.headers("inc-2", b'{"severity":"critical"}')
    assert _post(receiver.url, headers, b'{"severity":"low"}') == 401
    assert _post(receiver.url, headers, b'{"severity":"critical"}') == 200


def test_a_retry_after_a_long_outage_carries_a_fresh_timestamp(
    home: Home, clock: Clock, receiver: Receiver
) -> None:
    sender = _sender(home, clock)
    sender.queue.enqueue("inc-3", receiver.url, b"{}")
    receiver.down = True
    for _ in range(30):  # two hours of refusals
        clock.t += 240
        sender.drain()
    receiver.down = False
    clock.t += 60
    assert sender.drain() == (["inc-3"], 0)
    headers, _ = receiver.accepted[0]
    assert int(headers["webhook-timestamp"]) == int(clock.t)


def test_a_plain_secret_is_the_key_itself(home: Home, clock: Clock) -> None:
    sender = _sender(home, clock, secret=b"plain-shared-secret")
    h = sender.headers("id-1", b"body")
    want = hmac.new(b"plain-shared-secret", f"id-1.{h['webhook-timestamp']}.body".encode(),
                    hashlib.sha256).digest()
    assert h["webhook-signature"] == "v1," + base64.b64encode(want).decode()


def test_unsigned_without_a_secret_and_a_broken_whsec_is_refused(home: Home, clock: Clock) -> None:
    assert "webhook-signature" not in _sender(home, clock, secret=None).headers("i", b"{}")
    with pytest.raises(UsageError, match="not base64") as info:
        _sender(home, clock, secret=b"whsec_not base64!")
    assert "not base64!" not in str(info.value)  # the secret never appears in the error


def test_the_readme_receiver_accepts_a_delivery_and_rejects_its_replay(home: Home) -> None:
    """The verification code the README gives receivers works as documented."""
    import re
    import time as real_time
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    section = readme[readme.index("**Webhooks.**"):]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code, "the README's Webhooks paragraph has no Python example"
    scope: dict[str, object] = {}
    exec(compile(code[1], "README.md", "exec"), scope)  # noqa: S102 - our own documentation
    verify = scope["verify"]
    sender = _sender(home, real_time.time)  # type: ignore[arg-type]
    body = b'{"id":"inc-9"}'
    headers = sender.headers("inc-9", body)
    seen: set[str] = set()
    verify(headers, body, SECRET.decode(), seen)  # type: ignore[operator]
    with pytest.raises(KeyError):
        verify(headers, body, SECRET.decode(), seen)  # type: ignore[operator]
    with pytest.raises(ValueError, match="bad signature"):
        verify(headers, body + b" ", SECRET.decode(), set())  # type: ignore[operator]
    old = _sender(home, lambda: real_time.time() - 301).headers("inc-9", body)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stale"):
        verify(old, body, SECRET.decode(), set())  # type: ignore[operator]
