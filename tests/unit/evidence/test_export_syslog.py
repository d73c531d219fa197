"""Syslog forwarding: RFC 5424 messages a parser reads back (UDP and TCP octet counting), and a
receiver that is down, comes back, goes down again and returns misses nothing and gets nothing
twice, across an agent restart in between."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from trainguard.core.home import Home
from trainguard.crypto.signing import SigningKey
from trainguard.evidence.audit_log import AuditLog
from trainguard.evidence.export import ExportConfig, ExportForwarder
from trainguard.evidence.response.queue import DeliveryQueue

RFC5424 = re.compile(
    rb"^<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<procid>\S+) "
    rb"(?P<msgid>\S+) (?P<sd>-|(?:\[[^\]]*\])+) \xef\xbb\xbf(?P<msg>.*)$",
    re.DOTALL,
)


def parse(message: bytes) -> dict[str, object]:
    m = RFC5424.match(message)
    assert m, message[:120]
    sd = re.fullmatch(rb'\[meta sequenceId="(\d+)"\]', m["sd"])
    assert sd, m["sd"]
    return {
        "facility": int(m["pri"]) // 8,
        "severity": int(m["pri"]) % 8,
        "time": dt.datetime.fromisoformat(m["ts"].decode().replace("Z", "+00:00")),
        "host": m["host"].decode(),
        "app": m["app"].decode(),
        "kind": m["msgid"].decode(),
        "seq": int(sd[1]),
        "record": json.loads(m["msg"]),
    }


class Clock:
    def __init__(self) -> None:
        self.t = 1_767_225_600.0

    def __call__(self) -> float:
        return self.t


class TcpReceiver:
    """A syslog receiver on 127.0.0.1:`port` reading RFC 6587 octet-counted frames."""

    def __init__(self, port: int = 0) -> None:
        self.messages: list[bytes] = []
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen()
        self.port = self.listener.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        buf = b""
        while True:
            try:
                chunk = conn.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b" " in buf:
                length, _, rest = buf.partition(b" ")
                if len(rest) < int(length):
                    break
                self.messages.append(rest[: int(length)])
                buf = rest[int(length):]

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept (Linux)
        self.listener.close()
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()
        time.sleep(0.05)  # let the FIN reach the sender's socket


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def log(home: Home, signer: SigningKey) -> Iterator[AuditLog]:
    with AuditLog.open(home.audit_db, "node-1", signer) as audit:
        yield audit


def _forwarder(home: Home, log: AuditLog, clock: Clock, target: str, fmt: str = "jsonl") -> ExportForwarder:
    cfg = ExportConfig(syslog=target, syslog_format=fmt, syslog_facility="local3",
                       retry_base_seconds=2, retry_max_seconds=60, syslog_timeout_seconds=2)
    fwd = ExportForwarder.from_config(home, cfg, log, clock=clock)
    assert fwd is not None
    return fwd


def _wait_for(pred, timeout: float = 5.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_udp_messages_are_rfc5424(home: Home, log: AuditLog) -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(5)
    fwd = _forwarder(home, log, Clock(), f"udp://127.0.0.1:{server.getsockname()[1]}")
    try:
        log.append("incident", "agent", {"id": "inc-1", "kind": "gpu-misuse",
                                         "severity": "critical", "node": "node-1"})
        log.append("access-denied", "mallory", {"action": "a", "resource": "r"})
        log.append("posture.check", "agent", {"id": "x"})
        fwd.cycle()
        got = []
        for _ in range(log.last_seq()):
            got.append(parse(server.recv(65536)))
    finally:
        fwd.close()
        server.close()
    assert [g["seq"] for g in got] == list(range(1, log.last_seq() + 1))
    by_kind = {g["kind"]: g for g in got}
    assert by_kind["incident"]["severity"] == 2  # crit
    assert by_kind["access-denied"]["severity"] == 5  # notice
    assert by_kind["posture.check"]["severity"] == 6  # info
    assert {g["facility"] for g in got} == {19}  # local3
    assert {g["app"] for g in got} == {"trainguard"}
    for g in got:
        assert g["record"]["seq"] == g["seq"]
        assert g["record"]["time"].endswith("Z")
        assert g["time"].tzinfo is not None


def test_ocsf_over_syslog(home: Home, log: AuditLog) -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(5)
    fwd = _forwarder(home, log, Clock(), f"udp://127.0.0.1:{server.getsockname()[1]}", "ocsf")
    try:
        log.append("posture.check", "agent", {"id": "x"})  # no OCSF class: not sent
        seq = log.append("login-failed", "mallory", {"reason": "bad code"})
        fwd.cycle()
        msg = parse(server.recv(65536))
    finally:
        fwd.close()
        server.close()
    assert msg["seq"] == seq and msg["record"]["class_uid"] == 3002


def test_tcp_outage_loses_nothing_and_repeats_nothing(home: Home, log: AuditLog) -> None:
    clock = Clock()
    port = _free_port()
    fwd = _forwarder(home, log, clock, f"tcp://127.0.0.1:{port}")
    # Phase 1: nobody listens. Entries keep coming; every attempt is refused.
    for i in range(5):
        log.append("incident", "agent", {"id": f"inc-{i}", "kind": "exfiltration",
                                         "severity": "high", "node": "node-1"})
        clock.t += 10
        assert fwd.cycle() == 0
    queue = fwd.destinations[0].queue
    assert queue.counts()["pending"] == log.last_seq()
    # The agent restarts during the outage: the queue and the cursor persist.
    fwd.close()
    fwd = _forwarder(home, log, clock, f"tcp://127.0.0.1:{port}")
    # Phase 2: the receiver comes up. Delivery resumes after the backoff.
    receiver = TcpReceiver(port)
    try:
        clock.t += 120
        fwd.cycle()
        _wait_for(lambda: len(receiver.messages) == log.last_seq())
        first_batch = log.last_seq()
        # Phase 3: it goes down again (a restart of the SIEM's collector) while entries arrive.
        receiver.stop()
        for i in range(3):
            log.append("login-failed", "mallory", {"reason": f"try {i}"})
            clock.t += 10
            fwd.cycle()
        received_before = list(receiver.messages)
        assert len(received_before) == first_batch  # nothing went into the dead connection
        # Phase 4: back again.
        receiver = TcpReceiver(port)
        clock.t += 120
        fwd.cycle()
        _wait_for(lambda: len(receiver.messages) == log.last_seq() - first_batch)
    finally:
        receiver.stop()
        fwd.close()
    seqs = [parse(m)["seq"] for m in received_before + receiver.messages]
    assert seqs == list(range(1, log.last_seq() + 1))  # every entry, once, in order
    stored = DeliveryQueue(home.state_dir / "export" / "syslog.queue.db")
    assert stored.counts() == {"pending": 0, "delivered": log.last_seq()}
    stored.close()


def test_unix_socket(home: Home, log: AuditLog, tmp_path: Path) -> None:
    path = tmp_path / "log.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(5)
    fwd = _forwarder(home, log, Clock(), f"unix://{path}")
    try:
        fwd.cycle()
        assert parse(server.recv(65536))["seq"] == 1
    finally:
        fwd.close()
        server.close()
