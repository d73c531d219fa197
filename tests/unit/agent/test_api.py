"""The agent API over a real unix socket and real TLS 1.3 mTLS: ops, authorization, bad input."""

from __future__ import annotations

import asyncio
import json
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import make_home
from trainguard.agent.api.auth import ApiAuthorizer
from trainguard.agent.api.client import AgentClient, AgentUnavailable
from trainguard.agent.api.server import AgentServer
from trainguard.agent.config import AgentConfig
from trainguard.core.errors import AccessDenied
from trainguard.core.home import Home
from trainguard.crypto.signing import SigningKey
from trainguard.evidence.audit_log import AuditLog, verify_segment
from trainguard.evidence.response.engine import IncidentEngine


class Served:
    """An AgentServer on its own event loop thread (as in the daemon)."""

    def __init__(
        self, home: Home, authorizer: ApiAuthorizer, cfg: AgentConfig | None = None
    ) -> None:
        self.home = home
        self.signer = SigningKey.load(home.node_signing_key)
        self.log = AuditLog.open(home.audit_db, "node-1", self.signer, checkpoint_every=100)
        self.engine = IncidentEngine(home, self.log, node="node-1")
        self.cfg = cfg or AgentConfig(max_request_bytes=4096)
        self.server = AgentServer(
            self.log, self.engine, self.cfg, authorizer, status=lambda: {"node": "node-1"}
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self.server.start_unix(home.agent_socket))

    def call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        self.call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.engine.close()
        self.log.close()


@pytest.fixture
def short_home() -> Iterator[Home]:
    # AF_UNIX paths are limited to ~100 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="tg") as d:
        yield make_home(Path(d) / "h")


@pytest.fixture
def served(short_home: Home) -> Iterator[Served]:
    s = Served(short_home, ApiAuthorizer(node="node-1", cluster="c1"))
    yield s
    s.close()


def _raw(path: Path, payload: bytes) -> dict:  # type: ignore[type-arg]
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(payload)
        return json.loads(s.makefile("rb").readline())


def test_socket_is_0600_and_ops_work(served: Served) -> None:
    assert served.home.agent_socket.stat().st_mode & 0o777 == 0o600
    with AgentClient(served.home) as c:
        assert c.status()["node"] == "node-1"
        seq = c.append("train.started", "alice", {"job": "j1"})
        c.record("train.finished", "alice", {"job": "j1"})
        inc = c.submit_incident("gpu-misuse", "high", {"pid": 77})
        assert inc["status"] == "new" and inc["evidence"]["pid"] == 77
        assert c.recent_incidents(5)[0]["id"] == inc["id"]
        seg = c.export(1)
    entries = list(served.log.entries())
    assert entries[seq - 1].kind == "train.started"
    # the actor is who the socket says called (root), never the request's "alice"
    assert entries[seq - 1].actor == "uid:0(root)"
    assert entries[seq - 1].data == {"job": "j1", "submitted_by": "uid:0", "claimed_actor": "alice"}
    assert verify_segment(seg, served.signer.public_key()).entries == len(seg["entries"])


def test_export_is_paged_and_complete(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    import trainguard.agent.api.server as api

    monkeypatch.setattr(api, "_MAX_EXPORT", 7)
    served.log.append_many([("x", "a", {"i": i}) for i in range(30)])
    with AgentClient(served.home) as c:
        seg = c.export(1)
        part = c.export(5, 12)
    last = served.log.last_seq()
    assert last >= 30  # the 30 appended, plus whatever the log writes itself (checkpoints)
    assert [e["seq"] for e in seg["entries"]] == list(range(1, last + 1))
    assert [e["seq"] for e in part["entries"]] == list(range(5, 13))
    assert verify_segment(seg, served.signer.public_key()).entries == last


def test_malformed_oversized_and_unknown_requests_get_errors(served: Served) -> None:
    path = served.home.agent_socket
    assert _raw(path, b"not json\n")["code"] == "bad-request"
    assert _raw(path, b"[1,2]\n")["code"] == "bad-request"
    assert _raw(path, b'{"op":"format-disk"}\n')["code"] == "bad-request"
    assert _raw(path, b'{"op":"event","kind":"x","actor":"a","data":[]}\n')["code"] == "bad-request"
    assert _raw(path, b'{"op":"incident","kind":"nope","severity":"high"}\n')["ok"] is False
    assert _raw(path, b'{"op":"x","pad":"' + b"A" * 10000 + b'"}\n')["code"] == "too-large"
    assert _raw(path, b"\xff\xfe\n")["code"] == "bad-request"
    with AgentClient(served.home) as c:  # still serving
        assert c.status()["api"]["errors"] >= 6


def test_unknown_uid_is_denied_and_audited(short_home: Home) -> None:
    auth = ApiAuthorizer(node="node-1", cluster="c1")
    auth.admin_uids = {4242}  # not us: the test's root uid is just another local account
    s = Served(short_home, auth)
    try:
        with AgentClient(short_home) as c, pytest.raises(AccessDenied):
            c.append("train.x", "a", {})
        assert [e.kind for e in s.log.entries() if not e.kind.startswith("audit.")] == [
            "api.denied"
        ]
    finally:
        s.close()


def test_client_without_agent_says_so(short_home: Home) -> None:
    with pytest.raises(AgentUnavailable):
        AgentClient(short_home).status()
    assert not AgentClient(short_home).ping()


def test_second_agent_on_same_socket_is_refused(served: Served) -> None:
    from trainguard.core.errors import AgentError

    other = AgentServer(
        served.log, served.engine, AgentConfig(), ApiAuthorizer(node="n", cluster="c"), status=dict
    )
    with pytest.raises(AgentError, match="already serving"):
        served.call(other.start_unix(served.home.agent_socket))


# ---- mTLS ----------------------------------------------------------------------------------


def _issue(ca, pki: Path, name: str, kind: str) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    cert, key = ca.issue(name, kind)
    (pki / f"{kind}-{name}.crt").write_bytes(cert)
    (pki / f"{kind}-{name}.key").write_bytes(key)
    (pki / f"{kind}-{name}.key").chmod(0o600)
    return pki / f"{kind}-{name}.crt", pki / f"{kind}-{name}.key"


def test_mtls_identities_and_rejected_handshakes(tmp_path: Path, short_home: Home) -> None:
    from trainguard.crypto.pki import ClusterCA, server_context

    pki = tmp_path / "pki"
    pki.mkdir(mode=0o700)
    ca = ClusterCA.create(pki, "c1")
    srv_cert, srv_key = _issue(ca, pki, "node-1", "node")
    peer_cert, peer_key = _issue(ca, pki, "node-2", "node")
    admin_cert, admin_key = _issue(ca, pki, "alice", "user")
    eve_cert, eve_key = _issue(ca, pki, "eve", "user")
    other_dir = tmp_path / "other"
    other_dir.mkdir(mode=0o700)
    other = ClusterCA.create(other_dir, "c1")
    rogue_cert, rogue_key = _issue(other, other_dir, "node-3", "node")

    auth = ApiAuthorizer(node="node-1", cluster="c1", admin_names=["alice"])
    s = Served(short_home, auth)
    try:
        port = s.call(
            s.server.start_tcp("127.0.0.1", 0, server_context(srv_cert, srv_key, ca.ca_path))
        )
        url = f"tls://127.0.0.1:{port}"
        with AgentClient.remote(url, peer_cert, peer_key, ca.ca_path) as node2:
            node2.record("train.telemetry", "node-2", {"n": 1})
            with pytest.raises(AccessDenied):
                node2.export(1)
        with AgentClient.remote(url, admin_cert, admin_key, ca.ca_path) as alice:
            kinds = [e["kind"] for e in alice.export(1)["entries"]]
            assert "train.telemetry" in kinds
        with (
            AgentClient.remote(url, eve_cert, eve_key, ca.ca_path) as eve,
            pytest.raises(AccessDenied),
        ):
            eve.status()
        with pytest.raises(AgentUnavailable):
            AgentClient.remote(url, rogue_cert, rogue_key, ca.ca_path).status()
        s.call(asyncio.sleep(0.2))  # let the writer commit the rejection
        kinds = [e.kind for e in s.log.entries()]
        assert "api.tls-rejected" in kinds
        submitted = next(e for e in s.log.entries(kind="train.telemetry"))
        assert submitted.actor == submitted.data["submitted_by"] == "spiffe://c1/node/node-2"
    finally:
        s.close()


@pytest.mark.slow
def test_load_50_clients_x_200_events_nothing_lost(served: Served) -> None:
    errors: list[BaseException] = []
    acked: list[list[int]] = [[] for _ in range(50)]

    def client(i: int) -> None:
        try:
            with AgentClient(served.home) as c:
                for j in range(200):
                    acked[i].append(c.append("train.load", f"client-{i}", {"i": i, "j": j}))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors
    seqs = [s for a in acked for s in a]
    assert len(seqs) == len(set(seqs)) == 10_000
    by_seq = {e.seq: e for e in served.log.entries(kind="train.load")}
    assert set(by_seq) == set(seqs)
    assert {(e.data["i"], e.data["j"]) for e in by_seq.values()} == {
        (i, j) for i in range(50) for j in range(200)
    }
    report = served.log.verify(served.signer.public_key())
    assert report.checkpoints >= 90
