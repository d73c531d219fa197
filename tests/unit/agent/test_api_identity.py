"""One node may not act on another (issue 21 §4): who a caller is comes from the transport,
each identity kind submits only its allowed event and incident kinds, the actor is the caller,
numbers are finite, and a revoked certificate is refused at the next handshake."""

from __future__ import annotations

import asyncio
import json
import math
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import make_home
from trainguard.agent.api.auth import (
    EVENT_KINDS,
    OPERATOR_KINDS,
    RESERVED_KINDS,
    ApiAuthorizer,
    ApiPrincipal,
    CallerKind,
)
from trainguard.agent.api.client import AgentClient, AgentUnavailable
from trainguard.agent.api.server import AgentServer
from trainguard.agent.api.tls import ServerTls
from trainguard.agent.config import AgentConfig
from trainguard.core.errors import AccessDenied
from trainguard.core.home import Home
from trainguard.crypto.signing import SigningKey
from trainguard.evidence.audit_log import AuditLog
from trainguard.evidence.response.engine import IncidentEngine


class Served:
    """An AgentServer on its own event-loop thread, as the daemon runs it."""

    def __init__(self, home: Home, authorizer: ApiAuthorizer) -> None:
        self.home = home
        self.signer = SigningKey.load(home.node_signing_key)
        self.log = AuditLog.open(home.audit_db, "node-1", self.signer, checkpoint_every=100)
        self.engine = IncidentEngine(home, self.log, node="node-1")
        self.server = AgentServer(
            self.log,
            self.engine,
            AgentConfig(max_request_bytes=65536),
            authorizer,
            status=lambda: {"node": "node-1", "last_checkpoint": self.log.latest_checkpoint()},
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self.server.start_unix(home.agent_socket))

    def call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def dispatch(self, req: dict[str, Any] | bytes, p: ApiPrincipal) -> dict[str, Any]:
        line = req if isinstance(req, bytes) else json.dumps(req).encode()
        return dict(self.call(self.server._dispatch(line, p)))

    def close(self) -> None:
        self.call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.engine.close()
        self.log.close()


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with tempfile.TemporaryDirectory(prefix="tg") as d:
        auth = ApiAuthorizer(node="node-1", cluster="c1", admin_names=["alice"])
        s = Served(make_home(Path(d) / "h"), auth)
        yield s
        s.close()


PRINCIPALS: dict[CallerKind, ApiPrincipal] = {
    CallerKind.AGENT: ApiPrincipal.local(0, os.getpid(), CallerKind.AGENT),
    CallerKind.LOCAL_ADMIN: ApiPrincipal.local(0, 2, CallerKind.LOCAL_ADMIN),
    CallerKind.LOCAL_TRAINER: ApiPrincipal.local(1000, 3, CallerKind.LOCAL_TRAINER),
    CallerKind.LOCAL_OTHER: ApiPrincipal.local(4242, 4, CallerKind.LOCAL_OTHER),
    CallerKind.NODE: ApiPrincipal(
        "spiffe://c1/node/n2", "tls", kind="node", ident="n2", caller=CallerKind.NODE
    ),
    # an admin user: op-level checks pass, so only the event-kind rules can refuse
    CallerKind.USER: ApiPrincipal(
        "spiffe://c1/user/alice", "tls", kind="user", ident="alice", caller=CallerKind.USER
    ),
}
ADMINS = {CallerKind.AGENT, CallerKind.LOCAL_ADMIN}

_SUFFIX = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,15}", fullmatch=True)


def _instance(pattern: str, suffix: str) -> str:
    return pattern.replace("*", suffix)


def _denied_entries(s: Served, actor: str) -> list[dict[str, Any]]:
    return [e.data for e in s.log.entries(kind="api.denied") if e.actor == actor]


# ---- reserved kinds and the actor ----------------------------------------------------------


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    pattern=st.sampled_from(RESERVED_KINDS + OPERATOR_KINDS),
    suffix=_SUFFIX,
    caller=st.sampled_from(list(CallerKind)),
    batch=st.booleans(),
)
def test_property_reserved_kinds_are_refused_and_audited_for_every_identity_kind(
    served: Served, pattern: str, suffix: str, caller: CallerKind, batch: bool
) -> None:
    """Kinds the agent writes itself are refused from every identity kind; security-decision
    kinds from everyone but the node's own administrators (root / the agent's uid)."""
    kind = _instance(pattern, suffix)
    if pattern in OPERATOR_KINDS and caller in ADMINS:
        return  # the node's own CLI records logins and policy changes (out of scope: root)
    p = PRINCIPALS[caller]
    before = len(_denied_entries(served, p.actor))
    stored_before = len(list(served.log.entries(kind=kind)))
    event = {"kind": kind, "actor": "mallory", "data": {"seq": 1}}
    req = {"op": "events", "events": [event]} if batch else {"op": "event", **event}
    reply = served.dispatch(req, p)
    assert reply == {"ok": False, "code": "denied", "error": "access denied"}
    assert len(list(served.log.entries(kind=kind))) == stored_before
    assert len(_denied_entries(served, p.actor)) == before + 1


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(kind=st.from_regex(r"[a-z][a-z0-9._-]{0,20}", fullmatch=True))
def test_property_a_node_may_submit_only_trainer_kinds(served: Served, kind: str) -> None:
    p = PRINCIPALS[CallerKind.NODE]
    reply = served.dispatch({"op": "event", "kind": kind, "data": {}}, p)
    expect = kind.startswith("train.") and EVENT_KINDS[CallerKind.NODE] == ("train.*",)
    assert reply["ok"] is expect, (kind, reply)


def test_forged_checkpoint_from_a_node_cert_cannot_break_audit_verify_or_status(
    served: Served,
) -> None:
    """Regression: a node certificate submitted ``audit.checkpoint`` and ``login`` entries with
    any actor; the target's `audit verify` and `agent status` failed from then on."""
    node = PRINCIPALS[CallerKind.NODE]
    forged = {"seq": 1, "hash": "00" * 32, "sig": "garbage"}
    for kind in ("audit.checkpoint", "audit.genesis", "login", "incident", "api.denied"):
        reply = served.dispatch(
            {"op": "event", "kind": kind, "actor": "root", "data": forged}, node
        )
        assert reply["code"] == "denied", kind
    served.log.checkpoint(force=True)
    served.log.verify(served.signer.public_key())  # raises if the chain were broken
    assert served.dispatch({"op": "status"}, PRINCIPALS[CallerKind.LOCAL_ADMIN])["ok"]
    assert not [e for e in served.log.entries() if e.data.get("claimed_actor") == "root"]


def test_the_actor_is_the_authenticated_identity_never_the_request_field(
    served: Served,
) -> None:
    for caller, want in (
        (CallerKind.NODE, "spiffe://c1/node/n2"),
        (CallerKind.LOCAL_TRAINER, "uid:1000"),
        (CallerKind.AGENT, "trainguard-agent"),
    ):
        kind = f"train.actor-{caller.value}"
        reply = served.dispatch(
            {"op": "event", "kind": kind, "actor": "root", "data": {"claimed_actor": "x"}},
            PRINCIPALS[caller],
        )
        assert reply["ok"], reply
        entry = next(iter(served.log.entries(kind=kind)))
        assert entry.actor.startswith(want) and entry.data["claimed_actor"] == "root"


def test_incident_kinds_per_identity(served: Served) -> None:
    node, trainer = PRINCIPALS[CallerKind.NODE], PRINCIPALS[CallerKind.LOCAL_TRAINER]
    for p in (node, trainer):
        ok = served.dispatch(
            {
                "op": "incident",
                "kind": "byzantine-worker",
                "severity": "high",
                "evidence": {"rank": 3, "who": p.caller.value},
            },
            p,
        )
        assert ok["ok"] and ok["result"]["evidence"]["reported_by"] == p.name
        for kind in ("posture-failure", "audit-tampered", "gpu-misuse", "policy-tampered"):
            refused = served.dispatch(
                {"op": "incident", "kind": kind, "severity": "high", "evidence": {}}, p
            )
            assert refused["code"] == "denied", (p.caller, kind)
    recorded = [e for e in served.log.entries(kind="incident") if e.actor == node.name]
    assert recorded and all(e.data["provenance"] == "remote" for e in recorded)


# ---- non-finite numbers --------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b'{"op":"event","kind":"train.x","data":{"loss":NaN}}',
        b'{"op":"event","kind":"train.x","data":{"a":[1,{"b":Infinity}]}}',
        b'{"op":"event","kind":"train.x","data":{"a":-Infinity}}',
        b'{"op":"event","kind":"train.x","data":{"a":1e999}}',
        b'{"op":"events","events":[{"kind":"train.x","data":{"a":-1e400}}]}',
        b'{"op":"incident","kind":"byzantine-worker","severity":"high","evidence":{"s":NaN}}',
    ],
)
def test_nan_and_infinity_are_refused_with_a_clear_code(served: Served, payload: bytes) -> None:
    """Regression: event data with NaN/Infinity was stored and broke strict JSON consumers."""
    before = served.log.last_seq()
    reply = served.dispatch(payload, PRINCIPALS[CallerKind.LOCAL_ADMIN])
    assert reply["code"] == "non-finite-number" and "finite" in reply["error"]
    assert served.log.last_seq() == before


def test_deep_nesting_is_a_bad_request_not_an_internal_error(served: Served) -> None:
    deep = b'{"op":"event","kind":"train.x","data":' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert served.dispatch(deep, PRINCIPALS[CallerKind.LOCAL_ADMIN])["code"] == "bad-request"
    nested: Any = 1
    for _ in range(40):
        nested = {"a": nested}
    reply = served.dispatch(
        {"op": "event", "kind": "train.x", "data": nested}, PRINCIPALS[CallerKind.LOCAL_ADMIN]
    )
    assert reply["code"] == "bad-request"


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.dictionaries(st.text(max_size=6), _JSON, max_size=5))
def test_property_everything_stored_is_strict_json(served: Served, data: dict[str, Any]) -> None:
    """Any data, finite or not: either refused with `non-finite-number`, or stored so that a
    strict JSON consumer (allow_nan=False) reads it back."""
    line = json.dumps({"op": "event", "kind": "train.prop", "data": data}).encode()  # NaN allowed
    reply = served.dispatch(line, PRINCIPALS[CallerKind.LOCAL_ADMIN])

    def finite(v: Any) -> bool:
        if isinstance(v, float):
            return math.isfinite(v)
        if isinstance(v, dict):
            return all(finite(x) for x in v.values())
        if isinstance(v, list):
            return all(finite(x) for x in v)
        return True

    if finite(data):
        assert reply["ok"], reply
        stored = served.log.entries(kind="train.prop")
        last = list(stored)[-1]
        json.dumps(last.data, allow_nan=False)
    else:
        assert reply["code"] == "non-finite-number"


# ---- revocation ----------------------------------------------------------------------------


def _issue(ca, pki: Path, name: str, kind: str) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    cert, key = ca.issue(name, kind)
    (pki / f"{kind}-{name}.crt").write_bytes(cert)
    (pki / f"{kind}-{name}.key").write_bytes(key)
    (pki / f"{kind}-{name}.key").chmod(0o600)
    return pki / f"{kind}-{name}.crt", pki / f"{kind}-{name}.key"


def test_revoked_certificate_is_refused_at_the_next_handshake_without_restart(
    tmp_path: Path,
) -> None:
    """Regression: a certificate revoked with `pki revoke` stayed accepted, because the CRL
    was read once at start."""
    from trainguard.crypto.pki import ClusterCA

    pki = tmp_path / "pki"
    pki.mkdir(mode=0o700)
    ca = ClusterCA.create(pki, "c1")
    srv_cert, srv_key = _issue(ca, pki, "node-1", "node")
    n2_cert, n2_key = _issue(ca, pki, "n2", "node")
    n3_cert, n3_key = _issue(ca, pki, "n3", "node")
    changes: list[str] = []
    tls = ServerTls(
        srv_cert, srv_key, ca.ca_path, ca.crl_path, on_change=lambda k, d: changes.append(k)
    )
    with tempfile.TemporaryDirectory(prefix="tg") as d:
        auth = ApiAuthorizer(node="node-1", cluster="c1", revoked=tls.revoked)
        s = Served(make_home(Path(d) / "h"), auth)
        try:
            port = s.call(s.server.start_tcp("127.0.0.1", 0, tls.context))
            url = f"tls://127.0.0.1:{port}"

            def submit(cert: Path, key: Path) -> None:
                with AgentClient.remote(url, cert, key, ca.ca_path) as c:
                    c.record("train.telemetry", "x", {"n": 1})

            submit(n2_cert, n2_key)
            ClusterCA.open(pki).revoke("n2", "node")  # what `trainguard pki revoke n2` does
            with pytest.raises((AgentUnavailable, AccessDenied)):
                submit(n2_cert, n2_key)
            submit(n3_cert, n3_key)  # others still get in
            # a garbage CRL never undoes the revocation
            ca.crl_path.write_bytes(b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")
            with pytest.raises((AgentUnavailable, AccessDenied)):
                submit(n2_cert, n2_key)
            assert "api.crl-refused" in changes and changes.count("api.crl-loaded") == 2
            s.call(asyncio.sleep(0.2))
            assert any(e.kind == "api.tls-rejected" for e in s.log.entries())
        finally:
            s.close()


def test_sighup_reload_applies_a_crl_even_when_mtime_and_size_are_unchanged(
    tmp_path: Path,
) -> None:
    from trainguard.crypto.pki import ClusterCA

    pki = tmp_path / "pki"
    pki.mkdir(mode=0o700)
    ca = ClusterCA.create(pki, "c1")
    srv_cert, srv_key = _issue(ca, pki, "node-1", "node")
    _issue(ca, pki, "n2", "node")
    tls = ServerTls(srv_cert, srv_key, ca.ca_path, ca.crl_path)
    assert not tls.revoked_serials
    st = ca.crl_path.stat()
    ClusterCA.open(pki).revoke("n2", "node")
    os.utime(ca.crl_path, ns=(st.st_atime_ns, st.st_mtime_ns))  # a copy that kept the old mtime
    assert tls.reload(force=True)  # what SIGHUP does
    assert len(tls.revoked_serials) == 1


def test_a_rolled_back_crl_never_undoes_a_revocation(tmp_path: Path) -> None:
    import time

    from trainguard.crypto.pki import ClusterCA

    pki = tmp_path / "pki"
    pki.mkdir(mode=0o700)
    ca = ClusterCA.create(pki, "c1")
    srv_cert, srv_key = _issue(ca, pki, "node-1", "node")
    _issue(ca, pki, "n2", "node")
    old = ca.crl_path.read_bytes()  # signed by the CA, but from before the revocation
    changes: list[str] = []
    tls = ServerTls(
        srv_cert, srv_key, ca.ca_path, ca.crl_path, on_change=lambda k, d: changes.append(k)
    )
    ClusterCA.open(pki, clock=lambda: time.time() + 100).revoke("n2", "node")
    tls.context()
    assert len(tls.revoked_serials) == 1
    ca.crl_path.write_bytes(old)
    tls.context()
    assert len(tls.revoked_serials) == 1 and changes[-1] == "api.crl-refused"
    ca.crl_path.unlink()  # a deleted CRL does not undo it either
    tls.context()
    assert len(tls.revoked_serials) == 1


def test_server_set_fields_cannot_be_forged_and_a_mixed_batch_is_refused_whole(
    served: Served,
) -> None:
    node = PRINCIPALS[CallerKind.NODE]
    reply = served.dispatch(
        {"op": "event", "kind": "train.forge", "data": {"submitted_by": "uid:0", "x": 1}}, node
    )
    assert reply["ok"]
    entry = next(iter(served.log.entries(kind="train.forge")))
    assert entry.data["submitted_by"] == node.name and "claimed_actor" not in entry.data
    batch = [
        {"kind": "train.ok-part", "data": {}},
        {"kind": "audit.checkpoint", "data": {}},
    ]
    assert served.dispatch({"op": "events", "events": batch}, node)["code"] == "denied"
    assert not list(served.log.entries(kind="train.ok-part"))
    for bad in ("Audit.checkpoint", "audit.checkpoint ", "аudit.checkpoint", "train.x\n"):
        reply = served.dispatch({"op": "event", "kind": bad, "data": {}}, node)
        assert reply["code"] == "bad-request", bad


def test_a_flooding_node_is_rate_limited_without_flooding_the_log(served: Served) -> None:
    from trainguard.agent.api.server import RemoteQuota

    now = [0.0]
    served.server.quota = RemoteQuota(rate=1.0, burst=5.0, clock=lambda: now[0])
    node, admin = PRINCIPALS[CallerKind.NODE], PRINCIPALS[CallerKind.LOCAL_ADMIN]
    try:
        before = served.log.last_seq()
        codes = [
            served.dispatch({"op": "event", "kind": "audit.checkpoint", "data": {}}, node)["code"]
            for _ in range(50)
        ]
        assert codes[:5] == ["denied"] * 5 and set(codes[5:]) == {"rate-limited"}
        big = [{"kind": "train.x", "data": {}}] * 10
        now[0] += 3.0  # 3 tokens back: a batch of 10 events is over budget
        assert served.dispatch({"op": "events", "events": big}, node)["code"] == "rate-limited"
        assert served.dispatch({"op": "status"}, admin)["ok"]  # the node's own are not limited
        other = PRINCIPALS[CallerKind.LOCAL_OTHER]  # any local user on the shared socket is
        codes = [served.dispatch({"op": "status"}, other)["code"] for _ in range(8)]
        assert codes[:5] == ["denied"] * 5 and set(codes[5:]) == {"rate-limited"}
        served.call(asyncio.sleep(0.2))
        new = [e.kind for e in served.log.entries() if e.seq > before]
        assert new.count("api.denied") == 10 and new.count("api.rate-limited") == 2
    finally:
        served.server.quota = RemoteQuota()
