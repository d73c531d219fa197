"""The TCP listener's TLS material, with a revocation list that follows `pki revoke` live.

`ServerTls.context()` is asked once per connection. It stats ``pki/crl.pem`` (a cheap check of
inode, size and mtime); when the file changed, it hashes it, verifies the CRL's signature with
the cluster CA, and builds a fresh TLS 1.3 context with leaf CRL checking, so the very next
handshake sees a certificate revoked while the agent runs. `revoked()` checks the peer's serial
against the same parsed CRL once more after the handshake (`ApiAuthorizer.tls_principal`), so
one stale context can never let a revoked certificate through. `reload()` (SIGHUP) forces both.

A CRL that disappears, fails to parse or verify, or is older than the one in force (a lower
CRL number: a rolled-back copy) never undoes a revocation: the last good one stays in force and
the problem is logged and reported through `on_change`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from trainguard.crypto.pki import server_context

__all__ = ["ServerTls"]

log = logging.getLogger(__name__)


class ServerTls:
    """Per-connection TLS contexts for the agent's mTLS listener."""

    def __init__(
        self,
        cert: Path,
        key: Path,
        ca: Path,
        crl: Path,
        *,
        on_change: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self._cert, self._key, self._ca, self._crl = cert, key, ca, crl
        self._on_change = on_change or (lambda kind, data: None)
        self._lock = threading.Lock()
        self._stat: tuple[int, int, int] | None = None
        self._sha256: str | None = None
        self._revoked: frozenset[int] = frozenset()
        self._number = -1
        self._ctx = server_context(cert, key, ca, None)
        self.reload(force=True)

    @property
    def revoked_serials(self) -> frozenset[int]:
        return self._revoked

    def context(self) -> ssl.SSLContext:
        """The context for the next handshake (rebuilt if the CRL file changed)."""
        if self._fingerprint() != self._stat:
            self.reload()
        return self._ctx

    def revoked(self, ssl_object: ssl.SSLObject) -> bool:
        """True when the peer's certificate is on the current CRL."""
        der = ssl_object.getpeercert(binary_form=True)
        if not der:
            return False
        return x509.load_der_x509_certificate(der).serial_number in self._revoked

    def _fingerprint(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._crl)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def reload(self, *, force: bool = False) -> bool:
        """Re-read the CRL; True when the revocation set or context changed."""
        with self._lock:
            fp = self._fingerprint()
            if fp is None:
                if self._sha256 is not None:
                    self._problem("the CRL file is gone; the last one stays in force")
                self._stat = None
                return False
            try:
                raw = self._crl.read_bytes()
            except OSError as exc:
                self._problem(f"cannot read the CRL: {exc.strerror}")
                return False
            digest = hashlib.sha256(raw).hexdigest()
            self._stat = fp
            if digest == self._sha256 and not force:
                return False
            try:
                number, revoked = self._parse(raw)
                if number < self._number:
                    raise ValueError(f"CRL number {number} is older than {self._number}")
                ctx = server_context(self._cert, self._key, self._ca, self._crl)
            except (ValueError, ssl.SSLError, OSError) as exc:
                self._problem(f"CRL refused ({exc}); the last good one stays in force")
                return False
            changed = digest != self._sha256
            self._revoked, self._ctx, self._sha256 = revoked, ctx, digest
            self._number = number
        if changed:
            log.info("CRL loaded: %d revoked certificates", len(revoked))
            self._on_change("api.crl-loaded", {"revoked": len(revoked), "sha256": digest})
        return changed

    def _parse(self, raw: bytes) -> tuple[int, frozenset[int]]:
        """(CRL number, revoked serials) of a CRL signed by the cluster CA."""
        crl = x509.load_pem_x509_crl(raw)
        ca = x509.load_pem_x509_certificate(self._ca.read_bytes())
        key = ca.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(key):
            raise ValueError("its signature does not verify with the cluster CA")
        try:
            number = int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
        except x509.ExtensionNotFound:
            number = 0
        return number, frozenset(r.serial_number for r in crl)

    def _problem(self, message: str) -> None:
        log.error("%s (%s)", message, self._crl)
        self._on_change("api.crl-refused", {"path": str(self._crl), "error": message})
