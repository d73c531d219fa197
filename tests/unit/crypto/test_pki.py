"""Cluster PKI: strict X.509, identities, revocation and TLS 1.3 mTLS over real loopback sockets."""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
from trainguard.crypto.pki import (
    ClusterCA,
    Identity,
    IdentityKind,
    PkiError,
    client_context,
    needs_renewal,
    peer_identity,
    server_context,
)


def _write(dirpath: Path, name: str, pair: tuple[bytes, bytes]) -> tuple[Path, Path]:
    crt, key = dirpath / f"{name}.crt", dirpath / f"{name}.key"
    crt.write_bytes(pair[0])
    key.write_bytes(pair[1])
    key.chmod(0o600)
    return crt, key


@pytest.fixture
def ca(tmp_path: Path) -> ClusterCA:
    return ClusterCA.create(tmp_path / "pki", "c1")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
@pytest.mark.parametrize("kind", ["node", "user"])
def test_certificates_pass_openssl_x509_strict(ca: ClusterCA, tmp_path: Path, kind: str) -> None:
    crt, _ = _write(tmp_path, "leaf", ca.issue("alice", kind))
    out = subprocess.run(
        ["openssl", "verify", "-x509_strict", "-CAfile", str(ca.ca_path), str(crt)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr


def test_identity_uri_roundtrip_and_rejects_garbage() -> None:
    ident = Identity("c1", IdentityKind.NODE, "gpu-07")
    assert ident.uri == "spiffe://c1/node/gpu-07"
    assert Identity.parse(ident.uri) == ident
    for bad in ["https://c1/node/x", "spiffe://c1/admin/x", "spiffe://c1/node/", "spiffe://c1"]:
        with pytest.raises(PkiError):
            Identity.parse(bad)


def test_renewal_due_at_two_thirds_of_lifetime(ca: ClusterCA) -> None:
    cert, _ = ca.issue("n1", "node")
    t0 = dt.datetime.now(dt.UTC).timestamp()
    assert not needs_renewal(cert, clock=lambda: t0 + 3600)
    assert needs_renewal(cert, clock=lambda: t0 + 17 * 3600)


def test_list_and_revoke_marks_every_issued_cert(ca: ClusterCA) -> None:
    ca.issue("n1", "node")
    ca.issue("n1", "node")  # renewal: the older serial must be revoked too
    ca.issue("bob", "user")
    assert [(c.kind, c.name) for c in ca.certificates()] == [("node", "n1"), ("user", "bob")]
    revoked = ca.revoke("n1")
    assert len(revoked) == 2 and all(c.revoked for c in revoked)
    assert len(ca.revoked_serials()) == 2
    with pytest.raises(Exception, match="no certificate"):
        ca.revoke("nobody")


class _Server:
    """A one-connection-at-a-time TLS echo server on 127.0.0.1 recording peer identities."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.identities: list[Identity] = []
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(5)
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    self.identities.append(peer_identity(tls, cluster="c1"))
                    tls.sendall(tls.recv(16))
            except (ssl.SSLError, OSError, PkiError) as exc:
                self.errors.append(str(exc))

    def close(self) -> None:
        self.sock.close()


def _connect(port: int, ctx: ssl.SSLContext) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw) as tls:
            assert tls.version() == "TLSv1.3"
            tls.sendall(b"ping")
            return tls.recv(16)


@pytest.fixture
def server(ca: ClusterCA, tmp_path: Path):
    crt, key = _write(tmp_path, "node", ca.issue("n1", "node"))
    srv = _Server(server_context(crt, key, ca.ca_path, ca.crl_path))
    yield srv
    srv.close()


def test_mtls_handshake_with_valid_client_cert(
    ca: ClusterCA, server: _Server, tmp_path: Path
) -> None:
    crt, key = _write(tmp_path, "alice", ca.issue("alice", "user"))
    assert _connect(server.port, client_context(crt, key, ca.ca_path)) == b"ping"
    assert server.identities == [Identity("c1", IdentityKind.USER, "alice")]


def test_mtls_refuses_client_without_cert(ca: ClusterCA, server: _Server) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(ca.ca_path))
    with pytest.raises((ssl.SSLError, OSError)):
        _connect(server.port, ctx)
    assert server.identities == []


def test_mtls_refuses_other_cluster_ca(server: _Server, tmp_path: Path, ca: ClusterCA) -> None:
    other = ClusterCA.create(tmp_path / "other", "c2")
    crt, key = _write(tmp_path, "mallory", other.issue("mallory", "user"))
    ctx = client_context(crt, key, ca.ca_path)  # trusts the right CA, presents the wrong one
    with pytest.raises((ssl.SSLError, OSError)):
        _connect(server.port, ctx)
    assert server.identities == []


def test_mtls_refuses_expired_client_cert(ca: ClusterCA, server: _Server, tmp_path: Path) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    crt, key = _write(tmp_path, "old", ca.issue("old", "user", not_before=past))
    with pytest.raises((ssl.SSLError, OSError)):
        _connect(server.port, client_context(crt, key, ca.ca_path))
    assert server.identities == []


def test_mtls_refuses_revoked_client_cert(ca: ClusterCA, tmp_path: Path) -> None:
    node_crt, node_key = _write(tmp_path, "node", ca.issue("n1", "node"))
    crt, key = _write(tmp_path, "eve", ca.issue("eve", "user"))
    ca.revoke("eve")
    srv = _Server(server_context(node_crt, node_key, ca.ca_path, ca.crl_path))
    try:
        with pytest.raises((ssl.SSLError, OSError)):
            _connect(srv.port, client_context(crt, key, ca.ca_path))
        assert srv.identities == []
    finally:
        srv.close()


def test_tls12_client_is_refused(ca: ClusterCA, server: _Server, tmp_path: Path) -> None:
    crt, key = _write(tmp_path, "alice", ca.issue("alice", "user"))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.load_cert_chain(crt, key)
    ctx.load_verify_locations(cafile=str(ca.ca_path))
    with pytest.raises((ssl.SSLError, OSError)):
        _connect(server.port, ctx)
