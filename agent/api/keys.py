"""Checkpoint keys as a service (Vault-transit style): training workers never hold a KEK or a
signing key.

Ops (the agent's wire format, `trainguard.agent.api.client`; one JSON object per line):

* ``checkpoint-key`` {} -> {"dek", "kek_id", "kek_version", "wrapped"}: a fresh 32-byte data
  key and its form wrapped under the current KEK (base64). The caller seals one checkpoint with
  it and forgets it.
* ``checkpoint-unwrap`` {"kek_id", "kek_version", "wrapped"} -> {"dek"}: the data key of a
  sealed checkpoint, for a caller that verified the checkpoint's signature first.
* ``checkpoint-sign`` {"manifest"} -> {"algorithm", "key_id", "signature", "certificate"}: a
  signature over ``DOMAIN ‖ canonical_json(manifest)``. Only the manifest of one checkpoint file
  (``step-NNNNNNNN.tgseal``) or of one sharded DCP step (``step-NNNNNNNN.dcp``: its
  ``__R_N.distcp`` shards and ``.metadata``, `trainguard.trainer.dcp`) is signed, and the domain prefix keeps these signatures from ever
  verifying as a policy, a lock or an artifact manifest: the op is not a general signing
  oracle. With a cluster node certificate (``pki/node.crt`` + ``pki/node.key``), the node's
  certificate key signs (ECDSA P-256) and the certificate travels with the signature, so every
  node of the cluster can verify it against the cluster CA and its CRL; without one, the node's
  Ed25519 key signs (single node).

Who may call: the agent's own authorizer (`OPS` maps each op to an action; the caller is
identified by SO_PEERCRED on the unix socket, never by a request field). Without a running
agent (a laptop, the demo, tests) the trainer's launcher starts this module as a small process
of its own (``python -m trainguard.agent.api.keys --home H --socket S``): the same ops over a
0600 unix socket in the job's 0700 run folder, callers limited to the launcher's uid, and the
process exits when the launcher closes its stdin.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import re
import socket
import struct
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from trainguard.core.errors import TrainguardError
from trainguard.core.home import Home

__all__ = ["DOMAIN", "OPS", "KeyOps", "KeyService", "main", "serve"]

log = logging.getLogger(__name__)

DOMAIN = b"trainguard/checkpoint-manifest/v1\x00"
OPS: dict[str, str] = {
    "checkpoint-key": "checkpoint:key",
    "checkpoint-unwrap": "checkpoint:key",
    "checkpoint-sign": "checkpoint:sign",
}
_CHECKPOINT_NAME = re.compile(r"^step-\d{8}\.tgseal$")
_DCP_STEP = re.compile(r"^step-\d{8}\.dcp$")  # trainguard.trainer.dcp: one folder per step
_DCP_FILE = re.compile(r"^(__\d{1,6}_\d{1,6}\.distcp|\.metadata)$")
_MAX_LINE = 1 << 20


class KeyServiceError(TrainguardError):
    """A key-service request was malformed or refused."""


_DIGESTS = ("sha256", "tgseal-tags-v1")  # = trainguard.crypto.manifest's file digests


def _is_file_checkpoint(manifest: dict[str, Any]) -> bool:
    files = manifest.get("files")
    return (manifest.get("kind") == "file"
            and bool(_CHECKPOINT_NAME.match(str(manifest.get("name", ""))))
            and isinstance(files, list) and len(files) == 1
            and isinstance(files[0], dict) and files[0].get("path") == manifest["name"])


def _is_dcp_step(manifest: dict[str, Any]) -> bool:
    """A sharded step folder: DCP's shard files and its `.metadata`, nothing else."""
    files = manifest.get("files")
    return (manifest.get("kind") == "directory"
            and bool(_DCP_STEP.match(str(manifest.get("name", ""))))
            and isinstance(files, list) and 1 < len(files) <= 1 << 16
            and all(isinstance(f, dict) and set(f) - {"digest"} == {"path", "size", "sha256"}
                    and f.get("digest", "sha256") in _DIGESTS
                    and _DCP_FILE.match(str(f["path"])) for f in files)
            and any(f["path"] == ".metadata" for f in files))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: Any, what: str) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except ValueError as exc:
        raise KeyServiceError(f"{what} is not base64") from exc


class KeyService:
    """The operations; the keyring and signing key are read when first needed."""

    def __init__(self, home: Home) -> None:
        self._home = home
        self._keyring: Any = None
        self._signer: Any = None
        self._lock = threading.Lock()

    def _ring(self) -> Any:
        with self._lock:
            if self._keyring is None:
                from trainguard.crypto.keyring import open_keyring

                self._keyring = open_keyring(self._home)  # honours the systemd credential
            return self._keyring

    def data_key(self) -> dict[str, Any]:
        dek = os.urandom(32)
        wrapped = self._ring().wrap_dek(dek)
        return {"dek": _b64(dek), "kek_id": wrapped.kek_id, "kek_version": wrapped.version,
                "wrapped": _b64(wrapped.blob)}

    def unwrap(self, req: dict[str, Any]) -> dict[str, Any]:
        from trainguard.crypto.keyring import WrappedDek

        version = req.get("kek_version")
        if not isinstance(version, int) or not isinstance(req.get("kek_id"), str):
            raise KeyServiceError("kek_id and kek_version are required")
        wrapped = WrappedDek(str(req["kek_id"]), version, _unb64(req.get("wrapped"), "wrapped"))
        return {"dek": _b64(self._ring().unwrap_dek(wrapped, what="checkpoint data key"))}

    def sign(self, req: dict[str, Any]) -> dict[str, Any]:
        from trainguard.crypto.signing import canonical_json

        manifest = req.get("manifest")
        if not isinstance(manifest, dict) or not (_is_file_checkpoint(manifest)
                                                  or _is_dcp_step(manifest)):
            raise KeyServiceError("only the manifest of one checkpoint file or one sharded (DCP) "
                                  "checkpoint step is signed")
        signer = self._get_signer()
        return {**signer.describe(), "signature": _b64(signer.sign(DOMAIN + canonical_json(manifest)))}

    def _get_signer(self) -> Any:
        with self._lock:
            if self._signer is None:
                pki = self._home.pki_dir
                if (pki / "node.crt").exists() and (pki / "node.key").exists():
                    self._signer = _CertSigner(pki / "node.crt", pki / "node.key")
                else:
                    from trainguard.crypto.signing import SigningKey

                    self._signer = _NodeKeySigner(SigningKey.load(self._home.node_signing_key))
            return self._signer

    def call(self, op: str, req: dict[str, Any]) -> dict[str, Any]:
        if op == "checkpoint-key":
            return self.data_key()
        if op == "checkpoint-unwrap":
            return self.unwrap(req)
        if op == "checkpoint-sign":
            return self.sign(req)
        raise KeyServiceError(f"unknown op {op[:40]!r}")

    def __repr__(self) -> str:
        return f"KeyService(home={self._home.root})"


class _NodeKeySigner:
    def __init__(self, key: Any) -> None:
        self._key = key

    def describe(self) -> dict[str, Any]:
        return {"algorithm": "ed25519", "key_id": self._key.key_id, "certificate": None}

    def sign(self, data: bytes) -> bytes:
        return bytes(self._key.sign(data))


class _CertSigner:
    """The node's cluster certificate key (ECDSA P-256); the certificate goes with it."""

    def __init__(self, cert: Path, key: Path) -> None:
        from trainguard.core.fs import read_private

        self._cert_pem = cert.read_text()
        loaded = serialization.load_pem_private_key(read_private(key), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise KeyServiceError(f"{key} is not an ECDSA key")
        self._key = loaded

    def describe(self) -> dict[str, Any]:
        return {"algorithm": "ecdsa-p256-sha256", "key_id": None, "certificate": self._cert_pem}

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))


# ---- the agent's dispatch ---------------------------------------------------------------------

Handler = Callable[[dict[str, Any], Any], Awaitable[Any]]


class KeyOps:
    """The key ops as an `ApiExtension` of the agent's server (the daemon injects it)."""

    def __init__(self, home: Home) -> None:
        self.service = KeyService(home)

    def ops(self) -> dict[str, tuple[str, Handler]]:
        def make(op: str) -> Handler:
            async def handle(req: dict[str, Any], principal: Any) -> Any:
                return await asyncio.to_thread(self.service.call, op, req)

            return handle

        return {op: (action, make(op)) for op, action in OPS.items()}


# ---- the launcher's own key process -----------------------------------------------------------


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def _serve_conn(conn: socket.socket, service: KeyService, uids: set[int]) -> None:
    with conn, conn.makefile("rwb") as f:
        try:
            if _peer_uid(conn) not in uids:  # identity from the kernel, never the request
                f.write(b'{"ok":false,"code":"denied","error":"access denied"}\n')
                return
            while line := f.readline(_MAX_LINE + 1):
                f.write(json.dumps(_answer(service, line), separators=(",", ":")).encode() + b"\n")
                f.flush()
        except OSError:
            return


def _answer(service: KeyService, line: bytes) -> dict[str, Any]:
    try:
        req = json.loads(line)
        if not isinstance(req, dict) or req.get("op") not in OPS:
            return {"ok": False, "code": "bad-request", "error": "unknown op"}
        return {"ok": True, "result": service.call(str(req["op"]), req)}
    except (ValueError, UnicodeDecodeError):
        return {"ok": False, "code": "bad-request", "error": "not a JSON object"}
    except TrainguardError as exc:
        return {"ok": False, "code": "failed", "error": exc.message}


def serve(home: Home, path: Path, *, until: Callable[[], bool]) -> None:
    """Serve the key ops on a 0600 unix socket at `path` until `until()` is true."""
    service = KeyService(home)
    uids = {0, os.geteuid()}
    old = os.umask(0o177)
    staging = path.with_name(f".{path.name}.{os.getpid()}")  # bound and listening before it
    try:                                                     # appears at `path` (no refused
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # connect in between)
        staging.unlink(missing_ok=True)
        srv.bind(str(staging))
    finally:
        os.umask(old)
    os.chmod(staging, 0o600)
    srv.listen(64)
    os.rename(staging, path)
    srv.settimeout(0.5)
    try:
        while not until():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            conn.settimeout(None)
            threading.Thread(target=_serve_conn, args=(conn, service, uids), daemon=True).start()
    finally:
        srv.close()
        path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainguard.agent.api.keys")
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--socket", type=Path, required=True)
    args = parser.parse_args(argv)
    done = threading.Event()

    def watch_stdin() -> None:  # the launcher holds the other end; EOF = the launcher is gone
        sys.stdin.buffer.read()
        done.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    # an entry point: $CREDENTIALS_DIRECTORY (inherited from the launcher) may hold the KEK
    serve(Home.resolve(args.home, os.environ), args.socket, until=done.is_set)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
