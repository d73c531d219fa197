"""The worker's client of the key service (`trainguard.agent.api.keys`): data keys, unwrapping
and manifest signatures over a unix socket. The worker holds a data key only while it seals or
reads one checkpoint; it never holds a KEK or a signing key.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
from pathlib import Path
from typing import Any

from trainguard.crypto.keyring import WrappedDek
from trainguard.crypto.sealed.stream import DataKey
from trainguard.trainer.errors import TrainerError

__all__ = ["KeyClient", "KeyServiceUnavailable"]

_MAX_REPLY = 1 << 20


class KeyServiceUnavailable(TrainerError):
    """The key service (agent or launcher key process) did not answer or refused."""

    default_tip = "checkpoints need the node agent or the launcher's key process; relaunch the job"


class KeyClient:
    """One connection, one request at a time (thread-safe); reconnects after an error."""

    def __init__(self, path: Path, *, timeout: float = 60.0) -> None:
        self.path = path
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._file: Any = None
        self._lock = threading.Lock()

    def call(self, op: str, **params: Any) -> dict[str, Any]:
        line = json.dumps({"op": op, **params}, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            try:
                if self._sock is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    sock.settimeout(self._timeout)
                    sock.connect(str(self.path))
                    self._sock, self._file = sock, sock.makefile("rb")
                self._sock.sendall(line)
                reply = self._file.readline(_MAX_REPLY)
            except OSError as exc:
                self._close()
                raise KeyServiceUnavailable(f"cannot reach the key service at {self.path}") from exc
        try:
            msg = json.loads(reply)
        except ValueError as exc:
            self.close()
            raise KeyServiceUnavailable("the key service sent a malformed reply") from exc
        if not isinstance(msg, dict) or not msg.get("ok"):
            error = msg.get("error", "no reply") if isinstance(msg, dict) else "no reply"
            raise KeyServiceUnavailable(f"the key service refused {op}: {error}")
        return dict(msg["result"])

    def data_key(self) -> DataKey:
        r = self.call("checkpoint-key")
        return DataKey(base64.b64decode(r["dek"]),
                       WrappedDek(str(r["kek_id"]), int(r["kek_version"]), base64.b64decode(r["wrapped"])))

    def unwrap_dek(self, wrapped: WrappedDek, *, what: str = "data") -> bytes:
        """`DekUnwrapper` for `SealedReader`: the service unwraps, the KEK stays there."""
        from trainguard.crypto.errors import DecryptionError

        try:
            r = self.call("checkpoint-unwrap", kek_id=wrapped.kek_id, kek_version=wrapped.version,
                          wrapped=base64.b64encode(wrapped.blob).decode())
        except KeyServiceUnavailable as exc:
            raise DecryptionError(what) from exc
        return base64.b64decode(r["dek"])

    def sign(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return self.call("checkpoint-sign", manifest=manifest)

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._sock is not None:
            self._sock.close()
        self._sock = self._file = None

    def close(self) -> None:
        with self._lock:
            self._close()

    def __repr__(self) -> str:
        return f"KeyClient({self.path})"
